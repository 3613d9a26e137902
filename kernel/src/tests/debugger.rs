//! Cases the debugger phase watches (tests/gdb/): nested livepatched calls (generic and direct), switches of ftrace_call's target.
use super::livepatch::{enable, retire};
use crate::arch::livepatch::{livepatch_handler, livepatch_handler_end, livepatch_handler_windows};
use crate::arch::text;
use crate::livepatch;
use crate::trace::{self, Filter, FtraceOps, FtraceRegs, OpsFlags};
use core::hint::black_box;
use core::sync::atomic::{AtomicUsize, Ordering};
use macros::{ktest, livepatchable, notrace};
use portable::instruction;

#[livepatchable]
fn debugger_outer_original(value: u64) -> u64 {
    black_box(value + 1)
}

#[livepatchable]
fn debugger_inner_original(value: u64) -> u64 {
    black_box(value + 2)
}

/// A1: calls the outer patched function.
#[inline(never)]
fn debugger_outer_caller(value: u64) -> u64 {
    debugger_outer_original(black_box(value)) + 1
}

/// C1: replaces the outer function and calls A2 from inside, so A1's frame
/// is on the livepatch stack while A2's patched call passes livepatch_handler.
#[inline(never)]
fn debugger_outer_replacement(value: u64) -> u64 {
    debugger_inner_caller(black_box(value)) * 10
}

/// A2: calls the inner patched function.
#[inline(never)]
fn debugger_inner_caller(value: u64) -> u64 {
    debugger_inner_original(black_box(value)) + 1
}

/// C2.
#[inline(never)]
fn debugger_inner_replacement(value: u64) -> u64 {
    black_box(value + 100)
}

/// Sets direct calls on or off (returning the setting before) and patches
/// the outer and inner functions.
fn patch_the_nest(direct: bool) -> bool {
    let before = livepatch::direct::enabled();
    livepatch::direct::set_enabled(direct).unwrap();
    enable(
        "debugger-nested",
        &[
            ("kernel::tests::debugger::debugger_outer_original", None, debugger_outer_replacement as *const () as u64),
            ("kernel::tests::debugger::debugger_inner_original", None, debugger_inner_replacement as *const () as u64),
        ],
    )
    .unwrap();
    before
}

/// How many of the two replacements a trampoline of the direct pool calls.
fn nest_trampolines() -> usize {
    let summary = livepatch::direct::summary();
    [debugger_outer_replacement as *const () as u64, debugger_inner_replacement as *const () as u64]
        .iter()
        .filter(|replacement| summary.iter().any(|(_, called, _)| called == *replacement))
        .count()
}

/// Removes the patch and restores the direct-call setting.
fn unpatch_the_nest(before: bool) {
    retire("debugger-nested");
    livepatch::direct::set_enabled(before).unwrap();
}

/// tests/gdb/livepatch-windows.gdb stops in the inner call's livepatch_handler
/// before its frame is pushed, in C2, and after the frame is popped, and
/// checks that `bt` names A2 as the caller each time (not A1, whose frame is
/// the newest on the livepatch stack outside the middle stretch). Direct
/// calls are off, so both calls go through ftrace_caller and livepatch_handler.
#[ktest]
fn nested_livepatched_calls_for_the_debugger() {
    let before = patch_the_nest(false);
    let trampolines = nest_trampolines();
    let result = debugger_outer_caller(black_box(1));
    unpatch_the_nest(before);
    assert_eq!(trampolines, 0, "direct calls are off: no trampoline calls a replacement");
    assert_eq!(result, ((1 + 100) + 1) * 10 + 1);
}

/// tests/gdb/trampoline-windows.gdb: the same nest with direct calls on, so
/// both calls go through trampolines; it steps through the inner one
/// instruction by instruction and checks the chain of callers at each.
#[ktest]
fn nested_direct_calls_for_the_debugger() {
    let before = patch_the_nest(true);
    let trampolines = nest_trampolines();
    let result = debugger_outer_caller(black_box(1));
    unpatch_the_nest(before);
    assert_eq!(trampolines, 2, "both patched functions are called through a trampoline");
    assert_eq!(result, ((1 + 100) + 1) * 10 + 1);
}

/// The window table the unwinder and `livepatch::entering` read points where
/// it says: the frame is complete just before the call of C, C returns just
/// after the `bctrl`, and the frame is gone at the return to A.
#[ktest]
fn livepatch_handler_windows_point_at_the_call_and_the_return() {
    let start = livepatch_handler as *const () as u64;
    let end = &raw const livepatch_handler_end as u64;
    // Safety: a static the assembler filled in.
    let windows = unsafe { &livepatch_handler_windows };
    let (pushed, popped) = (start + windows.pushed, start + windows.popped);
    assert!(start < pushed && pushed < popped && popped < end, "{start:#x} {pushed:#x} {popped:#x} {end:#x}");
    let calls_c = (pushed..popped).step_by(4).any(|address| text::read(address) == 0x4e80_0421); // bctrl
    assert!(calls_c, "the call of C lies between pushed and popped");
    assert_eq!(text::read(popped), instruction::BLR, "popped is the return to A");
    // The stretch the timer must not preempt (`livepatch::entering`) ends
    // just after the call of C: C's address is in CTR up to the `bctrl` itself.
    let returned = start + windows.returned;
    assert_eq!(text::read(returned - 4), 0x4e80_0421, "returned follows the bctrl");
    assert!(crate::arch::livepatch::entering(returned - 4) && !crate::arch::livepatch::entering(returned));
    assert!(crate::arch::livepatch::entering(start) && !crate::arch::livepatch::entering(start - 4));
}

#[inline(never)]
fn debugger_traced(value: u64) -> u64 {
    black_box(value * 3)
}

/// Calls a handler was given an ops other than its own.
static WRONG_OPS: AtomicUsize = AtomicUsize::new(0);
/// Calls of either handler.
static HANDLED: AtomicUsize = AtomicUsize::new(0);

#[notrace]
extern "C" fn debugger_first_handler(_: u64, _: u64, ops: &FtraceOps, _: &mut FtraceRegs) {
    if !core::ptr::eq(ops, &DEBUGGER_FIRST) {
        WRONG_OPS.fetch_add(1, Ordering::SeqCst);
    }
    HANDLED.fetch_add(1, Ordering::SeqCst);
}

#[notrace]
extern "C" fn debugger_second_handler(_: u64, _: u64, ops: &FtraceOps, _: &mut FtraceRegs) {
    if !core::ptr::eq(ops, &DEBUGGER_SECOND) {
        WRONG_OPS.fetch_add(1, Ordering::SeqCst);
    }
    HANDLED.fetch_add(1, Ordering::SeqCst);
}

static DEBUGGER_FIRST: FtraceOps = FtraceOps::new("debugger-first", debugger_first_handler, OpsFlags::RECURSION_SAFE);
static DEBUGGER_SECOND: FtraceOps =
    FtraceOps::new("debugger-second", debugger_second_handler, OpsFlags::RECURSION_SAFE);

/// Switches `ftrace_call` between the stub, one handler called directly, the
/// list walker and the other handler. tests/gdb/ftrace-call-target.gdb
/// watches the instruction and checks that `FUNCTION_TRACE_OP` already holds
/// the right ops whenever the branch changes (stored first, then patched), so
/// that no traced call can reach a handler with another handler's ops.
/// On its own, this case checks only the end states (each handler saw its
/// calls with its own ops): with one CPU and preemption off around the two
/// stores, no traced call runs between them, so the store order is visible
/// only to the debugger; the gdb phase of `cargo xtask test` is what catches
/// the wrong order.
#[ktest]
fn ftrace_call_target_switches_for_the_debugger() {
    let function = [debugger_traced as *const () as u64];
    WRONG_OPS.store(0, Ordering::SeqCst);
    HANDLED.store(0, Ordering::SeqCst);
    trace::register(&DEBUGGER_FIRST, Filter::Addresses(&function)).unwrap();
    debugger_traced(black_box(1));
    trace::register(&DEBUGGER_SECOND, Filter::Addresses(&function)).unwrap();
    debugger_traced(black_box(2));
    trace::unregister(&DEBUGGER_FIRST).unwrap();
    debugger_traced(black_box(3));
    trace::unregister(&DEBUGGER_SECOND).unwrap();
    debugger_traced(black_box(4));
    assert_eq!(HANDLED.load(Ordering::SeqCst), 1 + 2 + 1, "each registered handler saw each call");
    assert_eq!(WRONG_OPS.load(Ordering::SeqCst), 0, "every handler was given its own ops");
}
