//! The grace period of readers that may be preempted: every other thread passes through the scheduler twice.
use super::{State, with_scheduler, yield_now};
use alloc::vec::Vec;

/// Waits for a grace period, RCU style: returns once every other thread
/// that was ready or running when it was called (on any CPU) has passed
/// through the scheduler twice since (each time it is preempted, yields or
/// blocks, whether it switches or keeps its CPU), has blocked, or has ended.
/// Idle threads are not waited for. Twice: a thread running on another CPU
/// may hold a pointer across its next pass and use it after; a switched-out
/// one may have been preempted holding it, and then yield once more before
/// it is done with it.
///
/// A thread switched out by the timer may be anywhere, including between
/// receiving a pointer and using it; after the grace period it has had a
/// time slice to finish with it. What it guarantees exactly: a value
/// published before the call (a module's memory, a table) and no longer
/// reachable for new readers is no longer used by a reader that holds it
/// across at most one preemption or yield. Callers: `module::unload`, before
/// it frees a module's memory.
pub fn synchronize() {
    let waiting: Vec<(u64, u64)> = with_scheduler(|scheduler| {
        let me = scheduler.current_id();
        scheduler
            .threads
            .iter()
            .filter(|&(&id, thread)| {
                id != me && !scheduler.is_idle(id) && matches!(thread.state, State::Ready | State::Running)
            })
            .map(|(&id, thread)| (id, thread.passes))
            .collect()
    });
    loop {
        let pending = with_scheduler(|scheduler| {
            waiting.iter().any(|(id, passes)| {
                scheduler.threads.get(id).is_some_and(|thread| {
                    matches!(thread.state, State::Ready | State::Running) && thread.passes < passes + 2
                })
            })
        });
        if !pending {
            return;
        }
        yield_now();
    }
}
