//! Benchmarks: guest instructions per operation, read from the timebase under QEMU -icount.
//!
//! Under `-icount shift=0` one instruction takes 1 ns of guest time and the
//! timebase runs at 512 MHz, so instructions = timebase ticks * 1000 / 512.
//! Each figure is printed as `bench: NAME VALUE UNIT NOTE` for xtask.
use crate::arch::ppc64::registers::timebase;
use crate::trace::{self, Filter, FtraceOps, FtraceRegs, OpsFlags};
use crate::{println, thread};
use core::hint::black_box;
use macros::notrace;

const ITERATIONS: u64 = 10_000;

pub fn instructions(ticks: u64) -> u64 {
    ticks * 1_000_000_000 / crate::time::frequency()
}

/// Guest instructions for `ITERATIONS` runs of `body`, per run.
fn per_call(body: fn()) -> u64 {
    let start = timebase();
    for _ in 0..ITERATIONS {
        body();
    }
    instructions(timebase() - start) / ITERATIONS
}

/// Guest instructions of one run of `body`.
fn once(body: impl FnOnce()) -> u64 {
    let start = timebase();
    body();
    instructions(timebase() - start)
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
static FULL: FtraceOps =
    FtraceOps::new("bench-full", do_nothing, OpsFlags::RECURSION_SAFE.union(OpsFlags::SAVE_REGS));
static EVERYWHERE: FtraceOps = FtraceOps::new("bench-everywhere", do_nothing, OpsFlags::RECURSION_SAFE);

const TRACED: &str = "kernel::tests::bench::traced_function";

fn report(name: &str, value: u64, unit: &str, note: &str) {
    println!("bench: {name} {value} {unit} {note}");
}

/// Runs every benchmark.
pub fn run_all() {
    let _preempt = thread::preempt_disable();
    let untraced = per_call(call_untraced);
    let off = per_call(call_traced);
    report("plain_call", untraced, "instructions", "call of a function without an ftrace site, loop included");
    report("site_off", off.saturating_sub(untraced), "instructions", "site present but off, minus no site (target <= 2)");

    trace::register(&LIGHT, Filter::Names(&[TRACED])).expect("bench function is traceable");
    let light = per_call(call_traced);
    trace::unregister(&LIGHT).expect("registered");
    report("traced_light", light - untraced, "instructions", "one do-nothing handler, no SAVE_REGS (target <= 60, Linux ~195)");

    trace::register(&FULL, Filter::Names(&[TRACED])).expect("bench function is traceable");
    let full = per_call(call_traced);
    trace::unregister(&FULL).expect("registered");
    report("traced_save_regs", full - untraced, "instructions", "one do-nothing handler with full pt_regs (target <= 120)");

    trace::function::start(TRACED).expect("bench function is traceable");
    let recorded = per_call(call_traced);
    trace::function::stop().expect("tracer on");
    report("function_tracer", recorded - untraced, "instructions", "call recorded by the function tracer (target <= 150, Linux ~760)");

    trace::graph::start(TRACED).expect("bench function is traceable");
    let graphed = per_call(call_traced);
    trace::graph::stop().expect("tracer on");
    report("function_graph", graphed - untraced, "instructions", "entry and return recorded (target <= 350, Linux ~1880)");

    let enable = once(|| {
        trace::register(&LIGHT, Filter::Names(&[TRACED])).expect("traceable");
    });
    trace::unregister(&LIGHT).expect("registered");
    report("enable_one", enable, "instructions", "register a handler on one function by name, whole operation (target <= 20000, Linux ~4.1M)");

    let mut sites = 0;
    let enable_all = once(|| {
        sites = trace::register(&EVERYWHERE, Filter::Glob("*")).expect("sites exist");
    });
    trace::unregister(&EVERYWHERE).expect("registered");
    report("enable_all_per_site", enable_all / sites as u64, "instructions", "register on every site, per site (target <= 300, Linux ~2400)");
    report("sites", sites as u64, "sites", "traceable functions in the kernel");

    let (patched_call, enable_one_patch, enable_hundred) = super::bench_livepatch::measure(per_call, instructions);
    report("livepatched_call", patched_call, "instructions", "patched call minus a direct call of the replacement (target <= 80)");
    report("livepatch_enable_one", enable_one_patch, "instructions", "enable a one-function patch, whole operation (target <= 30000)");
    report("livepatch_enable_hundred", enable_hundred, "instructions", "enable a 100-function patch, per function (target <= 1000)");

    drop(_preempt);
    report("thread_switch", measure_thread_switch(), "instructions", "one yield from a thread to another");
}

fn measure_thread_switch() -> u64 {
    let partner = thread::spawn("bench-partner", || {
        for _ in 0..ITERATIONS {
            thread::yield_now();
        }
    })
    .expect("room for the partner thread");
    let start = timebase();
    for _ in 0..ITERATIONS {
        thread::yield_now();
    }
    let ticks = timebase() - start;
    partner.join();
    instructions(ticks) / (2 * ITERATIONS)
}
