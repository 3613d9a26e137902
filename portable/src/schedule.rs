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

/// Picks the thread to run after `current`, taking it off `ready`.
///
/// - The head of `ready` runs next; a still-runnable `current` goes to the
///   tail (the queue has already lost its head, so it goes behind everyone).
/// - With nothing ready, a runnable `current` keeps the CPU (`None`: no switch),
///   and a current that blocked, slept or died gives it to `idle`.
///
/// `ready` never holds `current` (the kernel's `schedule` keeps a
/// sleeper that is still running out of it), so `next` is never `current`:
/// a switch from a thread to itself would resume it from a stale frame.
pub fn pick_next(ready: &mut VecDeque<u64>, current: u64, current_runnable: bool, idle: u64) -> Option<Switch> {
    let requeue_current = current_runnable && current != idle;
    let next = match ready.pop_front() {
        Some(next) => next,
        None if current_runnable => return None,
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

    fn queue(ids: &[u64]) -> VecDeque<u64> {
        ids.iter().copied().collect()
    }

    #[test]
    fn the_head_runs_next_and_a_runnable_current_goes_to_the_tail() {
        let mut ready = queue(&[2, 3]);
        assert_eq!(pick_next(&mut ready, 1, true, IDLE), Some(Switch { next: 2, requeue_current: true }));
        assert_eq!(ready, queue(&[3, 1]));
    }

    #[test]
    fn a_blocked_current_is_not_requeued() {
        let mut ready = queue(&[2, 3]);
        assert_eq!(pick_next(&mut ready, 1, false, IDLE), Some(Switch { next: 2, requeue_current: false }));
        assert_eq!(ready, queue(&[3]));
    }

    #[test]
    fn a_runnable_current_keeps_the_cpu_when_nothing_is_ready() {
        let mut ready = queue(&[]);
        assert_eq!(pick_next(&mut ready, 1, true, IDLE), None);
        assert!(ready.is_empty());
    }

    #[test]
    fn idle_runs_when_the_current_blocks_and_nothing_is_ready() {
        let mut ready = queue(&[]);
        assert_eq!(pick_next(&mut ready, 1, false, IDLE), Some(Switch { next: IDLE, requeue_current: false }));
        assert!(ready.is_empty());
    }

    #[test]
    fn idle_never_enters_the_ready_queue() {
        let mut ready = queue(&[4]);
        assert_eq!(pick_next(&mut ready, IDLE, true, IDLE), Some(Switch { next: 4, requeue_current: false }));
        assert!(ready.is_empty());
        // Idle with nothing ready keeps running.
        assert_eq!(pick_next(&mut ready, IDLE, true, IDLE), None);
    }

    #[test]
    fn threads_take_turns_in_order() {
        let (mut ready, mut current, mut order) = (queue(&[2, 3]), 1, vec![]);
        for _ in 0..6 {
            current = pick_next(&mut ready, current, true, IDLE).expect("someone is ready").next;
            order.push(current);
        }
        assert_eq!(order, [2, 3, 1, 2, 3, 1]);
    }
}
