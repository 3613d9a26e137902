//! Tests of the other CPUs: bring-up, r13 on every CPU, IPIs, `smp_call_function`, and the text patching's cross-CPU step.
//!
//! `cargo xtask test` boots the test kernel with two CPUs (`qemu::DEFAULT_CPUS`).
use crate::arch::percpu::{BOOT_CPU, area, online_cpus, smp_processor_id};
use crate::arch::registers::timebase;
use crate::arch::smp::{smp_call_function, wait_until};
use crate::arch::text::{self, log::Step};
use crate::{thread, time};
use alloc::vec::Vec;
use boot::{CPU_AREAS, MAX_CPUS, PerCpu};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use macros::{ktest, notrace};
use portable::cpuset::CpuSet;
use portable::devicetree::DeviceTree;

/// What the posted functions below record, per CPU.
static RUNS: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
static R13: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

#[notrace]
fn count_run(_: u64) {
    RUNS[smp_processor_id()].fetch_add(1, Ordering::Relaxed);
}

/// Counts a run after a busy delay of `milliseconds` (on the CPU that runs
/// it: no other CPU is waited for), so that a caller that did not wait sees
/// no run yet.
#[notrace]
fn count_run_slowly(milliseconds: u64) {
    let until = timebase() + time::milliseconds_to_timebase(milliseconds);
    while timebase() < until {
        core::hint::spin_loop();
    }
    count_run(0);
}

#[notrace]
fn record_r13(_: u64) {
    let r13 = crate::arch::registers::per_cpu() as *const PerCpu as u64;
    R13[smp_processor_id()].store(r13, Ordering::Relaxed);
}

fn reset_runs() {
    RUNS.iter().for_each(|runs| runs.store(0, Ordering::Relaxed));
}

/// Every CPU but this one that is online.
fn others() -> CpuSet {
    online_cpus().without(smp_processor_id())
}

/// The first online CPU other than the boot CPU.
fn secondary() -> usize {
    others().iter().next().expect("the test kernel runs with at least two CPUs online")
}

/// Waits (ceded) until `condition` holds or `milliseconds` have passed; returns whether it held.
fn wait_for(milliseconds: u64, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = timebase() + time::milliseconds_to_timebase(milliseconds);
    wait_until(|| condition() || timebase() >= deadline);
    condition()
}

#[ktest]
fn every_cpu_in_the_tree_comes_online_with_its_own_area_on_r13() {
    let tree = DeviceTree::parse(crate::devicetree::blob()).expect("the kernel's tree parses");
    let servers: Vec<u32> = tree.cpu_threads().map(|thread| thread.server).take(MAX_CPUS).collect();
    assert!(servers.len() >= 2, "the test kernel runs with at least two CPUs, the tree has {}", servers.len());
    assert_eq!(online_cpus(), CpuSet::first(servers.len()), "every CPU of the tree is online");
    for (cpu, &server) in servers.iter().enumerate() {
        assert_eq!(area(cpu).cpu_id, cpu as u64, "CPU {cpu}'s number in its area");
        assert_eq!(area(cpu).interrupt_server, u64::from(server), "CPU {cpu}'s interrupt server");
    }
    assert_eq!(smp_processor_id(), BOOT_CPU, "threads run on the boot CPU");
    let _preempt = thread::preempt_disable();
    R13.iter().for_each(|r13| r13.store(0, Ordering::Relaxed));
    record_r13(0);
    smp_call_function(CpuSet::first(MAX_CPUS), record_r13, 0, true);
    for (cpu, r13) in R13.iter().enumerate().take(servers.len()) {
        // Safety: only the address of the area is taken.
        let expected = unsafe { &raw const (*CPU_AREAS.0.get())[cpu] } as u64;
        assert_eq!(r13.load(Ordering::Relaxed), expected, "r13 on CPU {cpu} is its own area");
    }
}

#[ktest]
fn ipi_round_trip_runs_the_call_and_wakes_the_caller_by_ipi() {
    let target = secondary();
    let _preempt = thread::preempt_disable();
    reset_runs();
    let (target_ipis, target_calls) = (&area(target).statistics.ipis, &area(target).statistics.calls);
    let own_ipis = &area(BOOT_CPU).statistics.ipis;
    let before = (target_ipis.load(Ordering::Relaxed), target_calls.load(Ordering::Relaxed));
    let own_before = own_ipis.load(Ordering::Relaxed);
    smp_call_function(CpuSet::only(target), count_run, 0, true);
    assert_eq!(RUNS[target].load(Ordering::Relaxed), 1, "the call ran on CPU {target} before the wait ended");
    assert!(target_ipis.load(Ordering::Relaxed) > before.0, "CPU {target} took an IPI");
    assert_eq!(target_calls.load(Ordering::Relaxed), before.1 + 1, "CPU {target} ran one call");
    // The completion's IPI back may still be on its way if the wait saw the
    // call completed before it ceded; it stays pending until taken.
    assert!(wait_for(1000, || own_ipis.load(Ordering::Relaxed) > own_before), "CPU {target} woke the caller by IPI");
}

#[ktest]
fn call_function_with_wait_runs_once_on_every_other_cpu() {
    let _preempt = thread::preempt_disable();
    reset_runs();
    smp_call_function(CpuSet::first(MAX_CPUS), count_run_slowly, 5, true);
    for (cpu, runs) in RUNS.iter().enumerate() {
        let expected = u64::from(others().contains(cpu));
        assert_eq!(runs.load(Ordering::Relaxed), expected, "runs on CPU {cpu} when the wait returned");
    }
    // Calls posted without waiting run in order; the next call waits for each.
    for _ in 0..3 {
        smp_call_function(CpuSet::first(MAX_CPUS), count_run, 0, false);
    }
    smp_call_function(CpuSet::first(MAX_CPUS), count_run, 0, true);
    for (cpu, runs) in RUNS.iter().enumerate() {
        let expected = if others().contains(cpu) { 5 } else { 0 };
        assert_eq!(runs.load(Ordering::Relaxed), expected, "runs on CPU {cpu} after 3 calls and 1 waited");
    }
}

#[ktest]
fn a_call_function_wakes_a_ceded_cpu() {
    let target = secondary();
    let statistics = &area(target).statistics;
    assert!(wait_for(1000, || statistics.ceded.load(Ordering::Relaxed) != 0), "CPU {target} cedes when idle");
    let _preempt = thread::preempt_disable();
    reset_runs();
    let ipis = statistics.ipis.load(Ordering::Relaxed);
    smp_call_function(CpuSet::only(target), count_run, 0, true);
    assert_eq!(RUNS[target].load(Ordering::Relaxed), 1, "the call ran");
    // Its decrementer (every 10 ms) would wake it too, and its idle loop
    // would run the call: only the IPI count tells that the IPI woke it.
    assert_eq!(statistics.ipis.load(Ordering::Relaxed), ipis + 1, "woken by the IPI");
}

/// A second such function, for the batch.
#[notrace]
#[inline(never)]
fn patched_in_place_too(value: u64) -> u64 {
    core::hint::black_box(value) + 2
}

/// A batch of text changes (`text::modify_all`, and so a bulk enable of
/// sites) writes and flushes every word, then has the other CPUs
/// synchronise once, before it returns.
#[ktest]
fn a_batch_of_text_changes_has_every_online_cpu_synchronize_once_after_the_last_word() {
    let addresses =
        [patched_in_place as *const () as u64, patched_in_place_too as *const () as u64].map(text::local_entry);
    let changes = addresses.map(|address| (address, text::read(address), text::read(address)));
    let _preempt = thread::preempt_disable();
    text::log::start();
    let result = text::modify_all(&changes);
    let steps = text::log::stop();
    result.expect("the words are the ones read");
    assert_eq!((patched_in_place(1), patched_in_place_too(1)), (2, 3));
    let me = smp_processor_id();
    let mut expected = alloc::vec![(Step::Written, me), (Step::Flushed, me), (Step::Written, me), (Step::Flushed, me)];
    expected.extend(others().iter().map(|cpu| (Step::Synchronized, cpu)));
    expected.push((Step::Returned, me));
    let mut sorted = steps.clone();
    let middle = 4..sorted.len().saturating_sub(1).max(4);
    sorted[middle].sort_by_key(|&(_, cpu)| cpu);
    assert_eq!(sorted, expected, "steps in order: {steps:?}");
}

/// A function whose first instruction the patching test rewrites with itself.
#[notrace]
#[inline(never)]
fn patched_in_place(value: u64) -> u64 {
    core::hint::black_box(value) + 1
}

#[ktest]
fn text_patching_has_every_online_cpu_synchronize_before_it_returns() {
    let address = text::local_entry(patched_in_place as *const () as u64);
    let word = text::read(address);
    let _preempt = thread::preempt_disable();
    text::log::start();
    let result = text::modify_code(address, word, word);
    let steps = text::log::stop();
    result.expect("the word is the one read");
    assert_eq!(patched_in_place(1), 2);
    let me = smp_processor_id();
    let mut expected = alloc::vec![(Step::Written, me), (Step::Flushed, me)];
    expected.extend(others().iter().map(|cpu| (Step::Synchronized, cpu)));
    expected.push((Step::Returned, me));
    let mut sorted = steps.clone();
    // The other CPUs synchronise in any order between the flush and the return.
    let middle = 2..sorted.len().saturating_sub(1).max(2);
    sorted[middle].sort_by_key(|&(_, cpu)| cpu);
    assert_eq!(sorted, expected, "steps in order: {steps:?}");
}

/// Set by `report_and_end` once its report has begun.
static REPORT_BEGUN: AtomicBool = AtomicBool::new(false);

/// Begins a report (as an Oops or a panic does) and ends it, as a posted call.
#[notrace]
fn report_and_end(_: u64) {
    crate::console::begin_report();
    REPORT_BEGUN.store(true, Ordering::Release);
    crate::console::end_report();
}

/// A report on another CPU waits while this CPU holds the console lock (it
/// is writing, not dead), and while this CPU writes a report of its own; it
/// goes on as soon as each is let go.
#[ktest]
fn a_report_on_another_cpu_waits_for_the_console_holder_and_the_report_before_it() {
    let target = secondary();
    let _preempt = thread::preempt_disable();
    REPORT_BEGUN.store(false, Ordering::Relaxed);
    {
        let _interrupts = crate::arch::interrupts::disable();
        let console = crate::console::lock();
        smp_call_function(CpuSet::only(target), report_and_end, 0, false);
        let early = wait_for(200, || REPORT_BEGUN.load(Ordering::Acquire));
        let owner = crate::console::owner();
        drop(console);
        assert!(!early, "CPU {target}'s report went on while CPU {BOOT_CPU} held the console");
        assert_eq!(owner, Some(BOOT_CPU), "the console lock stayed CPU {BOOT_CPU}'s");
    }
    assert!(wait_for(1000, || REPORT_BEGUN.load(Ordering::Acquire)), "the report went on once the console was free");
    REPORT_BEGUN.store(false, Ordering::Relaxed);
    crate::console::begin_report();
    smp_call_function(CpuSet::only(target), report_and_end, 0, false);
    let early = wait_for(200, || REPORT_BEGUN.load(Ordering::Acquire));
    crate::console::end_report();
    assert!(!early, "CPU {target}'s report began during CPU {BOOT_CPU}'s");
    assert!(wait_for(1000, || REPORT_BEGUN.load(Ordering::Acquire)), "the report went on once the first ended");
}

/// The waits of `smp_call_function` cede (H_CEDE turns interrupts on), yet a
/// caller with interrupts off finds them off on return, and one with them on
/// finds them on.
#[ktest]
fn call_function_returns_with_interrupts_as_they_were() {
    use crate::arch::registers::{Msr, msr};
    let _preempt = thread::preempt_disable();
    reset_runs();
    {
        let _interrupts = crate::arch::interrupts::disable();
        smp_call_function(others(), count_run_slowly, 5, true);
        assert!(!msr().contains(Msr::EE), "interrupts came back on in smp_call_function");
    }
    assert!(msr().contains(Msr::EE), "interrupts on again once the caller's guard is dropped");
    smp_call_function(others(), count_run_slowly, 5, true);
    assert!(msr().contains(Msr::EE), "interrupts left off by smp_call_function");
    for cpu in others().iter() {
        assert_eq!(RUNS[cpu].load(Ordering::Relaxed), 2, "both calls ran on CPU {cpu}");
    }
}

/// What an IPI handler runs (the interrupt entry, the call-function and
/// stop_machine paths, posted calls), and a report of a panic, BUG or Oops:
/// every function of these modules. None may have an ftrace site: a text
/// change waits for every CPU's IPI handler (`synchronize_other_cpus`), so a
/// handler that entered ftrace could run the very code being changed, and a
/// report must not recurse into the tracers it reports on.
const SECONDARY_CPU_MODULES: &[&str] = &[
    "kernel::arch::ppc64::smp::",
    "kernel::arch::ppc64::xics::",
    "kernel::arch::ppc64::percpu::",
    "kernel::arch::ppc64::interrupts::",
    "kernel::arch::ppc64::hcall::",
    "kernel::console::",
    "kernel::panic::",
    "kernel::backtrace::",
    "kernel::exception::",
];

#[ktest]
fn nothing_an_ipi_handler_or_a_report_runs_has_an_ftrace_site() {
    let traced: Vec<&str> = crate::trace::site_table()
        .sites()
        .iter()
        .map(|site| site.name)
        .filter(|name| SECONDARY_CPU_MODULES.iter().any(|module| name.contains(module)))
        .collect();
    assert!(traced.is_empty(), "functions with an ftrace site that an IPI handler or a report runs: {traced:?}");
}

#[notrace]
extern "C" fn ignore_call(_: u64, _: u64, _: &crate::trace::FtraceOps, _: &mut crate::trace::FtraceRegs) {}
static BATCH_OPS: crate::trace::FtraceOps =
    crate::trace::FtraceOps::new("smp-batch", ignore_call, crate::trace::OpsFlags::RECURSION_SAFE);

/// Enabling several sites at once (`trace::register`) synchronises the other
/// CPUs once per batch (the sites; the stubs' call), not once per site.
#[ktest]
fn enabling_many_sites_synchronizes_the_other_cpus_once_per_batch() {
    let glob = "*tests::ftrace::traced_*";
    text::log::start();
    let result = crate::trace::register(&BATCH_OPS, crate::trace::Filter::Glob(glob));
    let steps = text::log::stop();
    let unregistered = crate::trace::unregister(&BATCH_OPS);
    let sites = result.expect("the ops registers");
    unregistered.expect("the ops unregisters");
    assert!(sites >= 2, "the filter matches several sites: {sites}");
    let written = steps.iter().filter(|&&(step, _)| step == Step::Written).count();
    let synchronized = steps.iter().filter(|&&(step, _)| step == Step::Synchronized).count();
    assert!(written >= sites, "every site written: {steps:?}");
    assert!(
        synchronized <= 2 * others().iter().count(),
        "{synchronized} synchronisations for {written} words (at most one per other CPU per batch): {steps:?}"
    );
}
