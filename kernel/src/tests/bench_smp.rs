//! Benchmarks of the cross-CPU paths, booted with several CPUs (`bench-smp`): an IPI round trip and a call on every other CPU.
//!
//! Under `-icount` QEMU runs every vCPU in turn on one host thread with one
//! virtual clock, so a figure counts the instructions of every CPU while the
//! measured stretch lasts: the caller's, and the targets' from their wake-up
//! to their IPI back. Each measured stretch has interrupts masked but for
//! the caller's H_CEDE, which takes the IPI back (and would take a tick: the
//! stretch is checked for one, as in `bench`).
use super::bench::{Tenths, instructions, measured};
use crate::arch::percpu::{online_cpus, smp_processor_id};
use crate::arch::smp::smp_call_function;
use crate::{println, thread};
use boot::MAX_CPUS;
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

/// Runs the SMP benchmarks; names carry the number of CPUs online.
pub fn run_all() {
    let enable_all = enable_all_per_site();
    let _preempt = thread::preempt_disable();
    let online = online_cpus();
    let cpus = online.len();
    let others = online.without(smp_processor_id());
    let Some(first) = others.iter().next() else {
        println!("bench: smp benchmarks need a second CPU online; {cpus} is");
        return;
    };
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
