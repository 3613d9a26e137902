//! Kernel threads: creation, yield, sleep, join, exit, and preemptive round-robin scheduling.
mod info;
mod scheduler;
mod stack;

pub use info::{
    LIVEPATCH_STACK_OFFSET, MAGIC_OFFSET, STACK_END_MAGIC, ThreadInfo, current_thread_info, magic_intact,
    thread_info_of,
};
pub use scheduler::{
    ExitStatus, JoinHandle, State, ThreadSummary, current_id, exit, init, kill_current, sleep_milliseconds,
    snapshot, spawn, timer_tick, yield_now,
};
pub use stack::stack_bounds;

use crate::arch::ppc64::registers::stack_pointer;
use macros::notrace;

/// Makes the current thread non-preemptible until the guard is dropped; nests.
pub struct PreemptGuard(());

/// Disables preemption of the current thread.
#[notrace]
pub fn preempt_disable() -> PreemptGuard {
    // Safety: the current thread's own thread_info; only it writes its count.
    unsafe { (*current_thread_info()).preempt_count += 1 };
    PreemptGuard(())
}

impl Drop for PreemptGuard {
    fn drop(&mut self) {
        // Safety: as in preempt_disable.
        unsafe { (*current_thread_info()).preempt_count -= 1 };
    }
}

/// The current thread's preempt count.
#[notrace]
pub fn preempt_count() -> u64 {
    // Safety: reads the current thread's own thread_info.
    unsafe { (*current_thread_info()).preempt_count }
}

/// Bytes of the current stack in use, from the top down to r1.
#[notrace]
pub fn current_stack_usage() -> u64 {
    let (_, high) = stack_bounds(stack_pointer());
    high - stack_pointer()
}
