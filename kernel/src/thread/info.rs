//! `thread_info`: the block at the base of every thread stack, found from r1 by masking.
//!
//! ```text
//!  base + THREAD_SIZE  +----------------------+
//!                      | normal stack         |  grows down from the top
//!                      |          |           |
//!                      |          v           |
//!                      |          ^           |
//!                      |          |           |
//!                      | livepatch stack      |  grows up; livepatch_sp = its top
//!  start of lp stack   +----------------------+
//!                      | STACK_END_MAGIC      |  overwritten only by an overflow
//!                      +----------------------+
//!                      | ThreadInfo           |
//!  base                +----------------------+
//! ```
use boot::THREAD_SIZE;
use core::mem::{offset_of, size_of};
use macros::notrace;

/// Marks the end of the normal stack (Linux's value).
pub const STACK_END_MAGIC: u64 = 0x57ac_6e9d;

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

/// Per-thread state at the stack base. Assembly reaches fields with `offset_of!`.
#[repr(C)]
pub struct ThreadInfo {
    /// Top of the livepatch stack: the address where the next frame goes.
    pub livepatch_sp: u64,
    /// Preemption is allowed only at 0.
    pub preempt_count: u64,
    /// Kernel thread number.
    pub thread_id: u64,
    /// Bit set while an ftrace handler runs in this thread (recursion guard).
    pub trace_recursion: u64,
    /// Entries in use on the function-graph return stack.
    pub graph_depth: u64,
    /// The function-graph return stack (`trace::graph::ReturnStack`), 0 if none.
    pub graph_stack: u64,
    /// r1 of the thread while it is switched out (`switch_context` stores it here).
    pub saved_stack_pointer: u64,
    /// Scheduling state, a `ThreadState` as a number, for the debugger.
    pub state: u64,
    /// The thread's name, NUL-padded, for the debugger.
    pub name: [u8; 24],
}

/// Offset of the magic word from the stack base.
pub const MAGIC_OFFSET: usize = size_of::<ThreadInfo>();
/// Offset of the first livepatch stack byte from the stack base.
pub const LIVEPATCH_STACK_OFFSET: usize = MAGIC_OFFSET + size_of::<u64>();

const _: () = assert!(offset_of!(ThreadInfo, livepatch_sp) == 0);
const _: () = assert!(LIVEPATCH_STACK_OFFSET.is_multiple_of(16) || LIVEPATCH_STACK_OFFSET.is_multiple_of(8));

/// The `thread_info` of the stack containing `stack_pointer` (Linux's CURRENT_THREAD_INFO).
#[notrace]
#[inline(always)]
pub fn thread_info_of(stack_pointer: u64) -> *mut ThreadInfo {
    (stack_pointer & !(THREAD_SIZE as u64 - 1)) as *mut ThreadInfo
}

/// The running thread's `thread_info`.
#[notrace]
#[inline(always)]
pub fn current_thread_info() -> *mut ThreadInfo {
    thread_info_of(crate::arch::registers::stack_pointer())
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
            name: [0; 24],
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
    unsafe {
        initialise(base, EMERGENCY_THREAD_ID);
        let info = &mut *(base as *mut ThreadInfo);
        info.state = ThreadState::Running as u64;
        info.name[..9].copy_from_slice(b"emergency");
    }
}

/// Whether the magic word above the `thread_info` at `base` is intact.
#[notrace]
pub fn magic_intact(base: u64) -> bool {
    // Safety: `base` is a thread stack base; the word is inside the stack.
    unsafe { ((base + MAGIC_OFFSET as u64) as *const u64).read_volatile() == STACK_END_MAGIC }
}
