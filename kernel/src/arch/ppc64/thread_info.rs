//! `thread_info`: the block at the base of every thread stack, found from r1 by masking.
//!
//! Its layout is the architecture's (Linux: asm/thread_info.h), because the
//! assembly reaches its fields: the exception entry and `livepatch_handler`
//! read and move `livepatch_sp`. `thread/` re-exports it and owns what goes
//! in it (`thread::initialise`).
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
    /// The function-graph tracer's return stack, 0 if none.
    pub graph_stack: u64,
    /// r1 of the thread while it is switched out (`switch_context` stores it here).
    pub saved_stack_pointer: u64,
    /// Scheduling state (the scheduler's `ThreadState` as a number), for the debugger.
    pub state: u64,
    /// The thread's name for the debugger, whole: the address and length of
    /// its UTF-8 bytes (a static string, or the scheduler's own copy, which
    /// lives as long as the thread); 0 and 0 until it is named.
    pub name_address: u64,
    pub name_length: u64,
    /// The CPU the thread runs on, or ran on last (the scheduler writes it at
    /// each switch in), for the debugger.
    pub cpu: u64,
    /// The thread's livepatch state during a transition
    /// (`livepatch::transition`: 0 undefined outside one, 1 unpatched, 2
    /// patched): whether the livepatch handler gives it the transitioning
    /// patch's functions or the ones below. Written by the thread itself at
    /// a safe point, or by the transition while the thread is switched out
    /// (under the scheduler lock); read by the handler on this thread's calls.
    pub patch_state: u64,
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
    thread_info_of(super::registers::stack_pointer())
}

/// The THREAD_SIZE block that contains `stack_pointer`: (base, top).
#[notrace]
#[inline(always)]
pub fn stack_bounds(stack_pointer: u64) -> (u64, u64) {
    let base = stack_pointer & !(THREAD_SIZE as u64 - 1);
    (base, base + THREAD_SIZE as u64)
}

/// Keeps the compiler from moving memory accesses across it, emitting no
/// instruction (Linux's `barrier()`), around the
/// preempt count's changes (`thread::preempt_disable`, `arch::smp`'s `NoPreemption`): an empty `asm!` that may, as far as the
/// compiler knows, read and write any memory. Not `compiler_fence`: on this
/// target LLVM lowers that to a `sync`, a full hardware barrier a one-CPU
/// section does not need.
#[notrace]
#[inline(always)]
pub fn compiler_barrier() {
    // Safety: an empty instruction sequence; it changes nothing.
    unsafe { core::arch::asm!("", options(nostack, preserves_flags)) };
}
