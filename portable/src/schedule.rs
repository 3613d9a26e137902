//! The scheduler's choice of the next thread: round robin over the ready queue, idle when none is ready.

use alloc::collections::VecDeque;

/// A switch the scheduler makes: to `next`, with the current thread put at
/// the tail of the ready queue first when `requeue_current` (it is still
/// runnable and is not the idle thread, which never waits in the queue).
#[derive(Debug, PartialEq, Eq)]
pub struct Switch {
    pub next: u64,
    pub requeue_current: bool,
}

/// Picks the thread to run after `current` on one CPU, taking it off `ready`.
///
/// - The first thread of `ready` that may run on this CPU (`runs_here`: its
///   affinity allows it) runs next; threads pinned to other CPUs keep their
///   places. A still-runnable `current` goes to the tail (behind everyone).
/// - With nothing ready here, a runnable `current` keeps the CPU (`None`: no
///   switch) if it may stay here; one that blocked, slept or died, or that
///   was moved to another CPU (`runs_here(current)` is false), gives it to
///   `idle`, and a moved one waits at the tail for its new CPU.
///
/// `ready` never holds `current` nor a thread running on another CPU (the
/// kernel's `schedule` keeps a sleeper that is still running out of it), so
/// `next` is never `current`: a switch from a thread to itself would resume
/// it from a stale frame.
pub fn pick_next(
    ready: &mut VecDeque<u64>,
    current: u64,
    current_runnable: bool,
    idle: u64,
    runs_here: impl Fn(u64) -> bool,
) -> Option<Switch> {
    let requeue_current = current_runnable && current != idle;
    let next = match ready.iter().position(|&id| runs_here(id)) {
        Some(index) => ready.remove(index).expect("the position is in the queue"),
        None if current_runnable && runs_here(current) => return None,
        None => idle,
    };
    if requeue_current {
        ready.push_back(current);
    }
    Some(Switch { next, requeue_current })
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: u64 = 99;

    fn anywhere(_: u64) -> bool {
        true
    }

    fn queue(ids: &[u64]) -> VecDeque<u64> {
        ids.iter().copied().collect()
    }

    #[test]
    fn the_head_runs_next_and_a_runnable_current_goes_to_the_tail() {
        let mut ready = queue(&[2, 3]);
        assert_eq!(pick_next(&mut ready, 1, true, IDLE, anywhere), Some(Switch { next: 2, requeue_current: true }));
        assert_eq!(ready, queue(&[3, 1]));
    }

    #[test]
    fn a_blocked_current_is_not_requeued() {
        let mut ready = queue(&[2, 3]);
        assert_eq!(pick_next(&mut ready, 1, false, IDLE, anywhere), Some(Switch { next: 2, requeue_current: false }));
        assert_eq!(ready, queue(&[3]));
    }

    #[test]
    fn a_runnable_current_keeps_the_cpu_when_nothing_is_ready() {
        let mut ready = queue(&[]);
        assert_eq!(pick_next(&mut ready, 1, true, IDLE, anywhere), None);
        assert!(ready.is_empty());
    }

    #[test]
    fn idle_runs_when_the_current_blocks_and_nothing_is_ready() {
        let mut ready = queue(&[]);
        assert_eq!(
            pick_next(&mut ready, 1, false, IDLE, anywhere),
            Some(Switch { next: IDLE, requeue_current: false })
        );
        assert!(ready.is_empty());
    }

    #[test]
    fn idle_never_enters_the_ready_queue() {
        let mut ready = queue(&[4]);
        assert_eq!(pick_next(&mut ready, IDLE, true, IDLE, anywhere), Some(Switch { next: 4, requeue_current: false }));
        assert!(ready.is_empty());
        // Idle with nothing ready keeps running.
        assert_eq!(pick_next(&mut ready, IDLE, true, IDLE, anywhere), None);
    }

    #[test]
    fn threads_take_turns_in_order() {
        let (mut ready, mut current, mut order) = (queue(&[2, 3]), 1, vec![]);
        for _ in 0..6 {
            current = pick_next(&mut ready, current, true, IDLE, anywhere).expect("someone is ready").next;
            order.push(current);
        }
        assert_eq!(order, [2, 3, 1, 2, 3, 1]);
    }

    #[test]
    fn threads_pinned_elsewhere_keep_their_places() {
        // 2 and 3 are pinned to another CPU: 4 runs here, 2 and 3 stay in order.
        let mut ready = queue(&[2, 3, 4]);
        let here = |id: u64| id != 2 && id != 3;
        assert_eq!(pick_next(&mut ready, 1, true, IDLE, here), Some(Switch { next: 4, requeue_current: true }));
        assert_eq!(ready, queue(&[2, 3, 1]));
    }

    #[test]
    fn a_current_with_only_threads_for_other_cpus_queued_keeps_the_cpu() {
        let mut ready = queue(&[2]);
        assert_eq!(pick_next(&mut ready, 1, true, IDLE, |id| id != 2), None);
        assert_eq!(ready, queue(&[2]));
    }

    #[test]
    fn a_current_moved_to_another_cpu_leaves_for_idle_and_waits_in_the_queue() {
        let mut ready = queue(&[]);
        assert_eq!(
            pick_next(&mut ready, 1, true, IDLE, |id| id != 1),
            Some(Switch { next: IDLE, requeue_current: true })
        );
        assert_eq!(ready, queue(&[1]));
    }
}
