//! Kernel threads: creation, yield, sleep, join, exit, and preemptive round-robin scheduling.
mod info;
mod scheduler;
mod stack;

pub use info::{
    LIVEPATCH_STACK_OFFSET, STACK_END_MAGIC, ThreadInfo, ThreadState, current_thread_info, initialise_emergency,
    initialise_secondary_idle,
};
pub use scheduler::{
    State, current_id, init, kill_current, live_stacks, sleep_milliseconds, snapshot, spawn, synchronize, timer_tick,
};
// Used by the in-kernel tests.
#[cfg(feature = "ktest")]
pub use scheduler::with_scheduler_locked;
pub use stack::stack_bounds;
#[cfg_attr(not(feature = "ktest"), allow(unused_imports))]
pub use {
    info::{EMERGENCY_THREAD_ID, MAGIC_OFFSET},
    scheduler::{ExitStatus, exit, yield_now},
};

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
