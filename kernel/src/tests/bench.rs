//! Benchmarks: guest instructions per operation, read from the timebase under QEMU -icount.
//!
//! Under `-icount shift=0` one instruction takes 1 ns of guest time and the
//! timebase runs at 512 MHz, so instructions = timebase ticks * 1000 / 512.
//! Every measured stretch runs with interrupts masked, and checks that no
//! timer interrupt was taken in it, so a figure holds only what it names (no
//! exception entry, no deferred-preemption retry). A difference of two loops is
//! taken on their totals, then divided and rounded once.
//! Each figure is printed as `bench: NAME VALUE UNIT NOTE` for xtask; figures
//! for Linux in the notes are reference figures measured elsewhere (Linux 6.12
//! on the same QEMU, see docs/ftrace.md), not measured by this boot.
use crate::arch::interrupts;
use crate::arch::registers::timebase;
use crate::trace::{self, Filter, FtraceOps, FtraceRegs, OpsFlags};
use crate::{println, thread};
use core::hint::black_box;
use macros::notrace;

const ITERATIONS: u64 = 10_000;

/// Guest instructions in `ticks` of the timebase.
pub fn instructions(ticks: u64) -> u64 {
    ticks * 1_000_000_000 / crate::time::frequency()
}

/// Timebase ticks of one run of `body`, with interrupts masked; panics if a
/// timer interrupt was taken meanwhile (it would be counted in the figure).
pub fn measured(body: impl FnOnce()) -> u64 {
    let _masked = interrupts::disable();
    let ticks_before = crate::time::ticks_here();
    let start = timebase();
    body();
    let elapsed = timebase() - start;
    assert_eq!(crate::time::ticks_here(), ticks_before, "a timer interrupt was taken in a measured stretch");
    elapsed
}

/// Timebase ticks of `ITERATIONS` runs of `body`, all of them.
fn loop_ticks(body: fn()) -> u64 {
    measured(|| {
        for _ in 0..ITERATIONS {
            body();
        }
    })
}

/// Instructions per run of the loop with `total_ticks`, minus the loop with
/// `baseline_ticks`: subtracted on the totals, then divided once, to a tenth
/// (rounded to nearest).
pub fn per_call_difference(total_ticks: u64, baseline_ticks: u64) -> Tenths {
    let difference = instructions(total_ticks.saturating_sub(baseline_ticks));
    Tenths((difference * 10 + ITERATIONS / 2) / ITERATIONS)
}

/// A figure in tenths, printed with one decimal (`113.7`).
#[derive(Clone, Copy)]
pub struct Tenths(pub u64);

impl core::fmt::Display for Tenths {
    fn fmt(&self, formatter: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(formatter, "{}.{}", self.0 / 10, self.0 % 10)
    }
}

/// Guest instructions of one run of `body`.
fn once(body: &mut dyn FnMut()) -> u64 {
    instructions(measured(body))
}

/// A function with an ftrace site.
#[inline(never)]
fn traced_function(value: u64) -> u64 {
    black_box(value.wrapping_mul(3))
}

/// The same function without a site.
#[notrace]
#[inline(never)]
fn untraced_function(value: u64) -> u64 {
    black_box(value.wrapping_mul(3))
}

fn call_traced() {
    black_box(traced_function(black_box(7)));
}

fn call_untraced() {
    black_box(untraced_function(black_box(7)));
}

#[notrace]
extern "C" fn do_nothing(_: u64, _: u64, _: &FtraceOps, _: &mut FtraceRegs) {}
static LIGHT: FtraceOps = FtraceOps::new("bench-light", do_nothing, OpsFlags::RECURSION_SAFE);
static FULL: FtraceOps = FtraceOps::new("bench-full", do_nothing, OpsFlags::RECURSION_SAFE.union(OpsFlags::SAVE_REGS));
pub(super) static EVERYWHERE: FtraceOps = FtraceOps::new("bench-everywhere", do_nothing, OpsFlags::RECURSION_SAFE);

const TRACED: &str = "kernel::tests::bench::traced_function";

fn report(name: &str, value: impl core::fmt::Display, unit: &str, note: &str) {
    println!("bench: {name} {value} {unit} {note}");
}

/// Instructions per traced call with one do-nothing handler, minus
/// `untraced` (the ticks of the loop calling the function without a site).
pub(super) fn traced_light(untraced: u64) -> Tenths {
    trace::register(&LIGHT, Filter::Names(&[TRACED])).expect("bench function is traceable");
    let light = loop_ticks(call_traced);
    trace::unregister(&LIGHT).expect("registered");
    per_call_difference(light, untraced)
}

/// `traced_light` and `livepatched_call` on the calling CPU, preemption off
/// (`bench-smp` runs them on each of two CPUs to compare).
pub(super) fn call_costs() -> (Tenths, Tenths) {
    let _preempt = thread::preempt_disable();
    let light = traced_light(loop_ticks(call_untraced));
    let (patched_call, _, _) = super::bench_livepatch::measure(loop_ticks, per_call_difference, once);
    (light, patched_call)
}

/// Runs every benchmark.
pub fn run_all() {
    let _preempt = thread::preempt_disable();
    let untraced = loop_ticks(call_untraced);
    let off = loop_ticks(call_traced);
    report(
        "plain_call",
        per_call_difference(untraced, 0),
        "instructions",
        "call of a function without an ftrace site, loop included",
    );
    report(
        "site_off",
        per_call_difference(off, untraced),
        "instructions",
        "site present but off, minus no site (target <= 2)",
    );

    report(
        "traced_light",
        traced_light(untraced),
        "instructions",
        "one do-nothing handler, no SAVE_REGS (target <= 60; Linux reference, measured elsewhere: ~195)",
    );

    trace::register(&FULL, Filter::Names(&[TRACED])).expect("bench function is traceable");
    let full = loop_ticks(call_traced);
    trace::unregister(&FULL).expect("registered");
    report(
        "traced_save_regs",
        per_call_difference(full, untraced),
        "instructions",
        "one do-nothing handler with full pt_regs (target <= 120)",
    );

    trace::function::start(TRACED).expect("bench function is traceable");
    let recorded = loop_ticks(call_traced);
    trace::function::stop().expect("tracer on");
    report(
        "function_tracer",
        per_call_difference(recorded, untraced),
        "instructions",
        "call recorded by the function tracer (target <= 150; Linux reference, measured elsewhere: ~760)",
    );

    trace::graph::start(TRACED).expect("bench function is traceable");
    let graphed = loop_ticks(call_traced);
    trace::graph::stop().expect("tracer on");
    report(
        "function_graph",
        per_call_difference(graphed, untraced),
        "instructions",
        "entry and return recorded (target <= 350; Linux reference, measured elsewhere: ~1880)",
    );

    let enable = once(&mut || {
        trace::register(&LIGHT, Filter::Names(&[TRACED])).expect("traceable");
    });
    trace::unregister(&LIGHT).expect("registered");
    report(
        "enable_one",
        enable,
        "instructions",
        "register a handler on one function by name, whole operation (target <= 20000; Linux reference, measured elsewhere: ~4.1M)",
    );

    let mut sites = 0;
    let enable_all = once(&mut || {
        sites = trace::register(&EVERYWHERE, Filter::Glob("*")).expect("sites exist");
    });
    trace::unregister(&EVERYWHERE).expect("registered");
    report(
        "enable_all_per_site",
        enable_all / sites as u64,
        "instructions",
        "register on every site, per site (target <= 300; Linux reference, measured elsewhere: ~2400)",
    );
    report("sites", sites as u64, "sites", "traceable functions in the kernel");

    let (patched_call, enable_one_patch, enable_hundred) =
        super::bench_livepatch::measure(loop_ticks, per_call_difference, once);
    report(
        "livepatched_call",
        patched_call,
        "instructions",
        "patched call minus a direct call of the replacement: direct call through a trampoline (target <= 30; Linux reference, measured elsewhere: 274)",
    );
    let light = traced_light(untraced);
    let (generic, traced, switch) = super::bench_livepatch::direct_costs(loop_ticks, per_call_difference, once);
    report(
        "livepatched_call_generic",
        generic,
        "instructions",
        "the same call with direct calls off: ftrace_caller, the handler's table, livepatch_handler (was the only path: 94)",
    );
    report(
        "livepatched_call_traced",
        traced,
        "instructions",
        &alloc::format!(
            "the same call while a do-nothing ops also traces the function (target: no worse than 94 + traced_light {light})"
        ),
    );
    report(
        "direct_switch",
        switch,
        "instructions",
        "switch one patched function's site from direct to generic or back (direct::set_enabled, per switch)",
    );
    report(
        "livepatch_enable_one",
        enable_one_patch,
        "instructions",
        "enable a one-function patch, whole operation (target <= 30000; Linux reference, measured elsewhere: ~3.7M)",
    );
    report(
        "livepatch_enable_hundred",
        enable_hundred,
        "instructions",
        "enable a 100-function patch, per function, transition included (target <= 1500: each function adds a symbol lookup for the code its transition checks)",
    );

    drop(_preempt);
    let (during, after) = super::bench_livepatch::call_in_transition(loop_ticks, per_call_difference);
    report(
        "livepatched_call_in_transition",
        during,
        "instructions",
        "patched call from a thread already switched while the patch is in transition, minus a direct call",
    );
    report(
        "livepatched_call_after_transition",
        after,
        "instructions",
        "the same call (two functions in the table) once the transition completed: the marks cost nothing then",
    );
    let alone = super::bench_livepatch::transition_latency(0, false);
    let idle = super::bench_livepatch::transition_latency(8, false);
    let busy = super::bench_livepatch::transition_latency(8, true);
    report(
        "transition_latency_idle8",
        idle,
        "instructions",
        "enable a one-function patch until its transition completes, 8 more threads asleep",
    );
    report(
        "transition_latency_busy8",
        busy,
        "instructions",
        "the same with 8 threads calling the patched function in a loop with a safe point (they must run to switch)",
    );
    report(
        "transition_check_per_thread",
        idle.saturating_sub(alone) / 8,
        "instructions",
        "per asleep thread: its reliable stack walk and check, from the two figures above",
    );
    report("thread_switch", measure_thread_switch(), "instructions", "one yield from a thread to another");
    let (walk, frames) = measure_reliable_walk();
    report(
        "reliable_walk",
        walk,
        "instructions",
        &alloc::format!(
            "reliable stack walk of a thread switched out {frames} frames deep (the per-thread stack check of a consistency model), result list included"
        ),
    );
}

/// Calls itself `depth` times, then sleeps: a thread switched out with
/// `depth` frames of this function on its stack.
#[inline(never)]
fn nest_then_sleep(depth: u64) -> u64 {
    if depth == 0 {
        thread::sleep_milliseconds(100);
        return 0;
    }
    black_box(nest_then_sleep(depth - 1)) + 1
}

/// Walks of the stack of a thread asleep 8 calls deep (`arch::stacktrace`),
/// interrupts masked, so the thread stays switched out throughout: guest
/// instructions per walk, and the return addresses the walk found.
fn measure_reliable_walk() -> (Tenths, usize) {
    const WALKS: u64 = 1000;
    let sleeper = thread::spawn_on(crate::arch::percpu::BOOT_CPU, "bench-walked", || {
        nest_then_sleep(8);
    })
    .expect("room for the walked thread");
    let asleep =
        |id: u64| thread::snapshot().iter().any(|summary| summary.id == id && summary.state != thread::State::Ready);
    while !asleep(sleeper.id) {
        thread::yield_now();
    }
    let (base, stack_pointer) = thread::live_stacks(0)
        .into_iter()
        .find_map(|stack| match stack {
            // Safety: a live thread's stack base holds its thread_info.
            thread::LiveStack::SwitchedOut { base, stack_pointer }
                if unsafe { (*(base as *const thread::ThreadInfo)).thread_id } == sleeper.id =>
            {
                Some((base, stack_pointer))
            }
            _ => None,
        })
        .expect("the walked thread is switched out");
    let walk = || crate::arch::stacktrace::walk_reliable(base, stack_pointer, &[], &|_| false);
    let frames = walk().expect("a sleeping thread's stack is reliable").len();
    let ticks = measured(|| {
        for _ in 0..WALKS {
            black_box(walk()).ok();
        }
    });
    sleeper.join();
    (Tenths((instructions(ticks) * 10 + WALKS / 2) / WALKS), frames)
}

/// Two threads yield to each other, both with interrupts masked (a thread
/// keeps its own MSR[EE] across a switch), so no tick lands in the loop.
fn measure_thread_switch() -> Tenths {
    let partner = thread::spawn_on(crate::arch::percpu::BOOT_CPU, "bench-partner", || {
        let _masked = interrupts::disable();
        for _ in 0..ITERATIONS {
            thread::yield_now();
        }
    })
    .expect("room for the partner thread");
    let ticks = measured(|| {
        for _ in 0..ITERATIONS {
            thread::yield_now();
        }
    });
    partner.join();
    Tenths((instructions(ticks) * 10 + ITERATIONS) / (2 * ITERATIONS))
}

#[macros::ktest]
fn bench_figures_subtract_the_totals_before_dividing() {
    // 113.7 and 13.0 instructions per call: 512 timebase ticks are 1000 instructions.
    let (total, baseline) = (1137 * 512, 130 * 512);
    assert_eq!(per_call_difference(total, baseline).0, 1007, "100.7, not 113 - 13 = 100");
    assert_eq!(alloc::format!("{}", per_call_difference(total, baseline)), "100.7");
}

#[macros::ktest]
fn bench_measured_stretches_take_no_timer_interrupt() {
    let interval = crate::time::frequency() / crate::time::TICK_HZ;
    let ticks = crate::time::ticks_here();
    // Two tick intervals inside a measured stretch: the decrementer expires, no interrupt is taken.
    let elapsed = measured(|| {
        let until = timebase() + 2 * interval;
        while timebase() < until {}
    });
    assert!(elapsed >= 2 * interval);
    // Unmasked again, the pending tick is taken.
    let until = timebase() + interval;
    while crate::time::ticks_here() == ticks && timebase() < until {}
    assert!(crate::time::ticks_here() > ticks, "the tick held back by the mask came afterwards");
}
