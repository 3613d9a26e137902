//! Kernel threads: creation, yield, sleep, join, exit, and preemptive round-robin scheduling.
mod info;
mod scheduler;
mod stack;

pub use info::{
    LIVEPATCH_STACK_OFFSET, STACK_END_MAGIC, ThreadInfo, ThreadState, current_thread_info, initialise_emergency,
};
pub use scheduler::{
    LiveStack, Place, State, add_idle, current_id, init, kill_current, live_stacks, patch_candidates, remove_idle,
    running_on, set_affinity, set_patch_states, sleep_interruptible, sleep_milliseconds, snapshot, spawn, synchronize,
    timer_tick, wake_interruptible, with_switched_out,
};
// Used by the in-kernel tests.
#[cfg(feature = "ktest")]
pub use scheduler::{sleep_interruptible_switched_out_by_a_tick, with_scheduler_locked};
pub use stack::stack_bounds;
#[cfg_attr(not(feature = "ktest"), allow(unused_imports))]
pub use {
    info::{EMERGENCY_THREAD_ID, MAGIC_OFFSET},
    scheduler::{AffinityError, ExitStatus, JoinHandle, current_is_idle, exit, spawn_on, yield_now},
};

use crate::arch::thread_info::compiler_barrier;
use macros::notrace;

/// Makes the current thread non-preemptible until the guard is dropped; nests.
///
/// The count is a plain field: only its own thread writes it, and the timer
/// interrupt reads it on the same CPU between two instructions, so no atomic
/// operation or hardware barrier is needed (Linux's `preempt_count_inc` is a
/// plain add too). What is needed is a compiler barrier on each side
/// (Linux's `barrier()` in `preempt_disable` and `preempt_enable`): the
/// count and the section's own memory accesses are unrelated locations, so
/// without one the compiler may move a section's loads before the increment
/// or its stores after the decrement, out of the section (it does: in a
/// loop of short sections adding to a private static, the load left the
/// loop and the store went before the increment;
/// `tests::threads::a_preemption_disabled_section_keeps_its_memory_accesses`).
pub struct PreemptGuard(());

/// Disables preemption of the current thread.
#[notrace]
pub fn preempt_disable() -> PreemptGuard {
    // Safety: the current thread's own thread_info; only it writes its count.
    unsafe { (*current_thread_info()).preempt_count += 1 };
    // Nothing of the section moves before the increment (see PreemptGuard).
    compiler_barrier();
    PreemptGuard(())
}

impl Drop for PreemptGuard {
    fn drop(&mut self) {
        // Nothing of the section moves after the decrement (see PreemptGuard).
        compiler_barrier();
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
