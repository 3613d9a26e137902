//! Benchmarks of the cross-CPU paths, booted with several CPUs (`bench-smp`): an IPI round trip and a call on every other CPU.
//!
//! Under `-icount` QEMU runs every vCPU in turn on one host thread with one
//! virtual clock, so a figure counts the instructions of every CPU while the
//! measured stretch lasts: the caller's, and the targets' from their wake-up
//! to their IPI back. Each measured stretch has interrupts masked but for
//! the caller's H_CEDE, which takes the IPI back (and would take a tick: the
//! stretch is checked for one, as in `bench`).
use super::bench::{Tenths, instructions, measured};
use crate::arch::percpu::{BOOT_CPU, online_cpus};
use crate::arch::smp::smp_call_function;
use crate::{println, thread};
use boot::MAX_CPUS;
use core::sync::atomic::{AtomicU64, Ordering};
use macros::notrace;
use portable::cpuset::CpuSet;

const ITERATIONS: u64 = 1_000;

#[notrace]
fn nothing(_: u64) {}

/// Instructions per iteration, to a tenth, of `ITERATIONS` runs of `body`.
fn per_iteration(body: impl Fn()) -> Tenths {
    let ticks = measured(|| {
        for _ in 0..ITERATIONS {
            body();
        }
    });
    Tenths((instructions(ticks) * 10 + ITERATIONS / 2) / ITERATIONS)
}

/// `bench::call_costs` on CPU `cpu`, in a thread pinned there (the caller
/// waits ceded meanwhile: only `cpu` runs instructions, but for the
/// caller's CPU's ticks).
fn call_costs_on(cpu: usize) -> (Tenths, Tenths) {
    static LIGHT: AtomicU64 = AtomicU64::new(0);
    static PATCHED: AtomicU64 = AtomicU64::new(0);
    LIGHT.store(0, Ordering::SeqCst);
    PATCHED.store(0, Ordering::SeqCst);
    let measurer = thread::spawn_on(cpu, "bench-secondary", || {
        let (light, patched) = super::bench::call_costs();
        LIGHT.store(light.0, Ordering::SeqCst);
        PATCHED.store(patched.0, Ordering::SeqCst);
    })
    .expect("room for the measuring thread");
    // A measurement that failed (a tick in a stretch) must not print a figure.
    assert_eq!(measurer.join(), thread::ExitStatus::Returned, "the measurement on CPU {cpu} ended early");
    (Tenths(LIGHT.load(Ordering::SeqCst)), Tenths(PATCHED.load(Ordering::SeqCst)))
}

/// Runs the SMP benchmarks; names carry the number of CPUs online.
pub fn run_all() {
    // Measured here, on the boot CPU: this thread must not move when it
    // waits (a join, a lock), or a stretch would begin on one CPU and end
    // on another.
    thread::set_affinity(thread::current_id(), Some(BOOT_CPU)).expect("the boot CPU is online");
    let online = online_cpus();
    let cpus = online.len();
    let others = online.without(BOOT_CPU);
    let Some(first) = others.iter().next() else {
        println!("bench: smp benchmarks need a second CPU online; {cpus} is");
        return;
    };
    let enable_all = enable_all_per_site();
    let preempt = thread::preempt_disable();
    let round_trip = per_iteration(|| smp_call_function(CpuSet::only(first), nothing, 0, true));
    println!(
        "bench: ipi_round_trip_smp{cpus} {round_trip} instructions \
         smp_call_function of an empty function on one ceded CPU with wait: IPI there, IPI back, both CPUs counted"
    );
    println!(
        "bench: enable_all_per_site_smp{cpus} {enable_all} instructions \
         register on every site, per site, the other CPUs synchronising once per batch (target <= 300)"
    );
    let all = per_iteration(|| smp_call_function(CpuSet::first(MAX_CPUS), nothing, 0, true));
    println!(
        "bench: call_function_all_smp{cpus} {all} instructions \
         the same on all {} other CPUs, waiting for every one",
        others.len()
    );
    drop(preempt);
    let (light_here, patched_here) = super::bench::call_costs();
    let (light_there, patched_there) = call_costs_on(first);
    println!(
        "bench: traced_light_cpu{first}_smp{cpus} {light_there} instructions \
         traced_light measured on CPU {first} (on CPU {BOOT_CPU} in the same boot: {light_here})"
    );
    println!(
        "bench: livepatched_call_cpu{first}_smp{cpus} {patched_there} instructions \
         livepatched_call measured on CPU {first} (on CPU {BOOT_CPU} in the same boot: {patched_here})"
    );
    let (enable, disable) = super::bench_livepatch::enable_disable_under_load();
    println!(
        "bench: livepatch_enable_hammered_smp{cpus} {enable} instructions \
         enable a one-function patch while every other CPU calls it in a loop, elapsed (all CPUs counted)"
    );
    println!(
        "bench: livepatch_disable_hammered_smp{cpus} {disable} instructions \
         disable it again, the same way"
    );
}

/// Instructions per site of one registration on every site (the whole
/// operation, the other CPUs' synchronisation included).
fn enable_all_per_site() -> u64 {
    use crate::trace::{self, Filter};
    let mut sites = 0;
    let ticks = measured(|| {
        sites = trace::register(&super::bench::EVERYWHERE, Filter::Glob("*")).expect("sites exist");
    });
    trace::unregister(&super::bench::EVERYWHERE).expect("registered");
    instructions(ticks) / sites.max(1) as u64
}
