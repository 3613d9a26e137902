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

/// A thread waiting in the ready queue: its number, and the one CPU it may
/// run on if it is pinned (kept here so that the choice reads no other table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Queued {
    pub id: u64,
    pub affinity: Option<usize>,
}

impl Queued {
    /// A thread that may run on any CPU.
    pub const fn anywhere(id: u64) -> Queued {
        Queued { id, affinity: None }
    }

    /// Whether it may run on `cpu`.
    #[inline(always)]
    pub fn runs_on(self, cpu: usize) -> bool {
        match self.affinity {
            Some(pinned) => pinned == cpu,
            None => true,
        }
    }
}

/// Picks the thread to run after `current` on CPU `cpu`, taking it off `ready`.
///
/// - The first thread of `ready` that may run on `cpu` (its affinity allows
///   it) runs next; threads pinned to other CPUs keep their places. A
///   still-runnable `current` goes to the tail (behind everyone).
/// - With nothing ready here, a runnable `current` keeps the CPU (`None`: no
///   switch) if it may stay here; one that blocked, slept or died, or that
///   was moved to another CPU (its affinity excludes `cpu`), gives it to
///   `idle`, and a moved one waits at the tail for its new CPU.
///
/// `ready` never holds `current` nor a thread running on another CPU (the
/// kernel's `schedule` keeps a sleeper that is still running out of it), so
/// `next` is never `current`: a switch from a thread to itself would resume
/// it from a stale frame.
pub fn pick_next(
    ready: &mut VecDeque<Queued>,
    current: Queued,
    current_runnable: bool,
    idle: u64,
    cpu: usize,
) -> Option<Switch> {
    let requeue_current = current_runnable && current.id != idle;
    let next = match ready.front() {
        // The common case, one test: the head may run here.
        Some(head) if head.runs_on(cpu) => ready.pop_front().expect("the head exists").id,
        _ => match ready.iter().position(|queued| queued.runs_on(cpu)) {
            Some(index) => ready.remove(index).expect("the position is in the queue").id,
            None if current_runnable && current.runs_on(cpu) => return None,
            None => idle,
        },
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

    const CPU: usize = 0;

    fn queue(ids: &[u64]) -> VecDeque<Queued> {
        ids.iter().copied().map(Queued::anywhere).collect()
    }

    fn here(id: u64) -> Queued {
        Queued::anywhere(id)
    }

    fn elsewhere(id: u64) -> Queued {
        Queued { id, affinity: Some(CPU + 1) }
    }

    #[test]
    fn the_head_runs_next_and_a_runnable_current_goes_to_the_tail() {
        let mut ready = queue(&[2, 3]);
        assert_eq!(pick_next(&mut ready, here(1), true, IDLE, CPU), Some(Switch { next: 2, requeue_current: true }));
        assert_eq!(ready, queue(&[3, 1]));
    }

    #[test]
    fn a_blocked_current_is_not_requeued() {
        let mut ready = queue(&[2, 3]);
        assert_eq!(pick_next(&mut ready, here(1), false, IDLE, CPU), Some(Switch { next: 2, requeue_current: false }));
        assert_eq!(ready, queue(&[3]));
    }

    #[test]
    fn a_runnable_current_keeps_the_cpu_when_nothing_is_ready() {
        let mut ready = queue(&[]);
        assert_eq!(pick_next(&mut ready, here(1), true, IDLE, CPU), None);
        assert!(ready.is_empty());
    }

    #[test]
    fn idle_runs_when_the_current_blocks_and_nothing_is_ready() {
        let mut ready = queue(&[]);
        assert_eq!(
            pick_next(&mut ready, here(1), false, IDLE, CPU),
            Some(Switch { next: IDLE, requeue_current: false })
        );
        assert!(ready.is_empty());
    }

    #[test]
    fn idle_never_enters_the_ready_queue() {
        let mut ready = queue(&[4]);
        assert_eq!(
            pick_next(&mut ready, here(IDLE), true, IDLE, CPU),
            Some(Switch { next: 4, requeue_current: false })
        );
        assert!(ready.is_empty());
        // Idle with nothing ready keeps running.
        assert_eq!(pick_next(&mut ready, here(IDLE), true, IDLE, CPU), None);
    }

    #[test]
    fn threads_take_turns_in_order() {
        let (mut ready, mut current, mut order) = (queue(&[2, 3]), 1, vec![]);
        for _ in 0..6 {
            current = pick_next(&mut ready, here(current), true, IDLE, CPU).expect("someone is ready").next;
            order.push(current);
        }
        assert_eq!(order, [2, 3, 1, 2, 3, 1]);
    }

    #[test]
    fn threads_pinned_elsewhere_keep_their_places() {
        // 2 and 3 are pinned to another CPU: 4 runs here, 2 and 3 stay in order.
        let mut ready: VecDeque<Queued> = [elsewhere(2), elsewhere(3), here(4)].into_iter().collect();
        assert_eq!(pick_next(&mut ready, here(1), true, IDLE, CPU), Some(Switch { next: 4, requeue_current: true }));
        assert_eq!(ready, [elsewhere(2), elsewhere(3), here(1)].into_iter().collect::<VecDeque<_>>());
    }

    #[test]
    fn a_current_with_only_threads_for_other_cpus_queued_keeps_the_cpu() {
        let mut ready: VecDeque<Queued> = [elsewhere(2)].into_iter().collect();
        assert_eq!(pick_next(&mut ready, here(1), true, IDLE, CPU), None);
        assert_eq!(ready.len(), 1);
    }

    #[test]
    fn a_current_moved_to_another_cpu_leaves_for_idle_and_waits_in_the_queue() {
        let mut ready = queue(&[]);
        assert_eq!(
            pick_next(&mut ready, elsewhere(1), true, IDLE, CPU),
            Some(Switch { next: IDLE, requeue_current: true })
        );
        assert_eq!(ready, [elsewhere(1)].into_iter().collect::<VecDeque<_>>());
    }
}
