//! The per-CPU emergency stack: where stack overflows, BUG and Oops reports and thread kills run.
//!
//! A report or a kill needs kilobytes of stack (formatting, the backtrace, the
//! scheduler). Run on the thread's own stack they would eat into its guard, its
//! livepatch frames and its `thread_info` when the thread is already short of
//! room, so they run here instead: the exception entry moves every vector but
//! the decrementer here, and `thread::kill_current` moves here before it does
//! anything. Code on this stack either returns to the exception entry (which
//! resumes the interrupted thread) or ends the thread it runs for; it never
//! switches away and comes back, so one stack per CPU is enough. Interrupts are
//! off throughout.
use super::thread_info::{LIVEPATCH_STACK_OFFSET, ThreadInfo};
use boot::{PerCpu, THREAD_SIZE};
use core::mem::offset_of;
use macros::notrace;

unsafe extern "C" {
    /// Calls `function(argument)` with r1 at the top of this CPU's emergency
    /// stack (assembly below). Never returns.
    fn call_on_emergency_stack(argument: u64, function: extern "C" fn(u64) -> !) -> !;
}

core::arch::global_asm!(
    r#"
    .text
    # call_on_emergency_stack(r3 = argument, r4 = function)
    #
    # On entry: r1 on a thread's stack; interrupts off (the caller makes sure):
    # the emergency stack is one per CPU; r13 = per-CPU area.
    # Calls function(argument) with r1 = the emergency stack top, whose back
    # chain is the caller's r1, so backtraces continue into the thread. Never
    # returns: `function` ends the thread (or the kernel).
    # An interrupt cannot arrive here (MSR[EE] = 0); a program check or other
    # synchronous exception after the `mr 1` finds r1 on the emergency stack
    # and stays on it.
    .globl call_on_emergency_stack
    .type call_on_emergency_stack, @function
call_on_emergency_stack:
    ld      5, {emergency}(13)        # r5 = emergency stack top (a minimal frame below its end)
    std     1, 0(5)                   # that frame's back chain = our r1
    mr      1, 5                      # r1 = the emergency stack
    mr      12, 4                     # r12 = function (global entry convention)
    mtctr   4                         # CTR = function
    bctrl                             # function(argument): never returns
    trap                              # not reached
    .size call_on_emergency_stack, . - call_on_emergency_stack
    "#,
    emergency = const offset_of!(PerCpu, emergency_stack),
);

/// The (base, top) of this CPU's emergency stack; base holds its `thread_info`.
#[notrace]
pub fn bounds() -> (u64, u64) {
    let top = super::registers::per_cpu().emergency_stack;
    let base = top & !(THREAD_SIZE as u64 - 1);
    (base, base + THREAD_SIZE as u64)
}

/// Whether r1 is on this CPU's emergency stack.
#[notrace]
pub fn on_emergency_stack() -> bool {
    let stack_pointer = super::registers::stack_pointer();
    let (base, top) = bounds();
    base != 0 && (base..top).contains(&stack_pointer)
}

/// Empties what per-thread state the emergency stack's `thread_info` holds:
/// its livepatch stack, function_graph depth and tracer recursion bit.
/// Called whenever the stack is entered afresh (not nested): an earlier
/// report that ended its thread half way through a patched, graph-traced or
/// traced call left them set, and nothing on the stack belongs to anyone now.
/// Otherwise every later report would skip non-RECURSION_SAFE handlers and
/// pile livepatch frames on dead ones.
#[notrace]
pub fn reset_thread_info() {
    let (base, _) = bounds();
    if base == 0 {
        return;
    }
    // Safety: this CPU's emergency stack, entered afresh with interrupts off:
    // nothing else uses its thread_info now.
    unsafe {
        let info = base as *mut ThreadInfo;
        (*info).livepatch_sp = base + LIVEPATCH_STACK_OFFSET as u64;
        (*info).graph_depth = 0;
        (*info).trace_recursion = 0;
    }
}

/// Runs `function(argument)` on this CPU's emergency stack, with interrupts
/// off; there already, it just calls it. `function` must end the thread.
#[notrace]
pub fn run(function: extern "C" fn(u64) -> !, argument: u64) -> ! {
    core::mem::forget(super::interrupts::disable());
    if on_emergency_stack() {
        function(argument)
    }
    reset_thread_info();
    // Safety: interrupts are off, so nothing else uses the emergency stack
    // until `function` has ended this thread and switched away for good.
    unsafe { call_on_emergency_stack(argument, function) }
}
