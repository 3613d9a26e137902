//! What a thread's `thread_info` holds: its initial contents, the scheduling states it records, the magic word check.
//!
//! The block itself (`ThreadInfo`, at the base of every thread stack, and the
//! livepatch stack above it) is laid out by the architecture, whose assembly
//! reaches its fields: `arch::thread_info` draws it.
pub use crate::arch::thread_info::{
    LIVEPATCH_STACK_OFFSET, MAGIC_OFFSET, STACK_END_MAGIC, ThreadInfo, current_thread_info,
};
use macros::notrace;

/// A thread's scheduling state as `thread_info` records it for the debugger.
/// The debug anchor exports `NAMES` in this order, so gdb/kernel.py reads the
/// names from the kernel instead of repeating the numbers.
#[repr(u64)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadState {
    Running = 0,
    Ready = 1,
    Sleeping = 2,
    Joining = 3,
    Dead = 4,
}

impl ThreadState {
    /// The names of the states, indexed by their values.
    pub const NAMES: [&'static str; 5] = ["running", "ready", "sleeping", "joining", "dead"];
}

/// Prepares `thread_info`, the magic word and an empty livepatch stack at `base`.
///
/// # Safety
/// `base` is a THREAD_SIZE-aligned stack owned by a thread that is not running
/// (or the caller's own stack, during boot, before anything uses it).
#[notrace]
pub unsafe fn initialise(base: u64, thread_id: u64) {
    let info = base as *mut ThreadInfo;
    // Safety: the caller owns the stack base.
    unsafe {
        info.write(ThreadInfo {
            livepatch_sp: base + LIVEPATCH_STACK_OFFSET as u64,
            preempt_count: 0,
            thread_id,
            trace_recursion: 0,
            graph_depth: 0,
            graph_stack: 0,
            saved_stack_pointer: 0,
            state: ThreadState::Ready as u64,
            name_address: 0,
            name_length: 0,
            cpu: 0,
            patch_state: crate::livepatch::transition::UNDEFINED,
        });
        ((base + MAGIC_OFFSET as u64) as *mut u64).write(STACK_END_MAGIC);
    }
}

/// `thread_id` in the emergency stack's `thread_info` (the function tracer
/// shows events recorded while a report runs under it).
pub const EMERGENCY_THREAD_ID: u64 = u64::MAX;

/// Prepares the `thread_info` of a CPU's emergency stack, as for a thread, so
/// that a traced or patched function called during a report finds a livepatch
/// stack, the magic word and a recursion bit of its own there (a zeroed one
/// would put livepatch frames at address 0).
///
/// # Safety
/// `base` is the THREAD_SIZE-aligned emergency stack, not in use yet.
#[notrace]
pub unsafe fn initialise_emergency(base: u64) {
    // Safety: the caller owns the stack.
    unsafe { initialise_running(base, EMERGENCY_THREAD_ID, "emergency") };
}

/// Whether the magic word above the `thread_info` at `base` is intact.
#[notrace]
pub fn magic_intact(base: u64) -> bool {
    // Safety: `base` is a thread stack base; the word is inside the stack.
    unsafe { ((base + MAGIC_OFFSET as u64) as *const u64).read_volatile() == STACK_END_MAGIC }
}

/// Prepares the `thread_info` at `base` for a stack that is not one of the
/// scheduler's threads but runs code (an emergency stack): as `initialise`, marked running and named `name` for the debugger.
///
/// # Safety
/// `base` is a THREAD_SIZE-aligned stack that nothing runs on yet.
#[notrace]
unsafe fn initialise_running(base: u64, thread_id: u64, name: &'static str) {
    // Safety: the caller owns the stack.
    unsafe {
        initialise(base, thread_id);
        let info = &mut *(base as *mut ThreadInfo);
        info.state = ThreadState::Running as u64;
        info.name_address = name.as_ptr() as u64;
        info.name_length = name.len() as u64;
    }
}
