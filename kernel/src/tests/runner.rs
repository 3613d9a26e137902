//! The runner's self-test: cases that fail or hang on purpose, run only when the filter names `runner_selftest` (xtask's self-test checks each costs only itself).
use crate::livepatch::{self, Function, Object, Patch};
use crate::trace::{self, Filter, FtraceOps, FtraceRegs, OpsFlags};
use alloc::string::String;
use alloc::vec;
use core::hint::black_box;
use macros::{ktest, livepatchable, notrace};

#[notrace]
extern "C" fn nothing(_: u64, _: u64, _: &FtraceOps, _: &mut FtraceRegs) {}
static LEFT_BEHIND: FtraceOps = FtraceOps::new("runner-selftest-left-behind", nothing, OpsFlags::RECURSION_SAFE);

#[livepatchable]
fn selftest_original(value: u64) -> u64 {
    black_box(value + 1)
}

#[inline(never)]
fn selftest_replacement(value: u64) -> u64 {
    black_box(value + 2)
}

#[ktest]
fn runner_selftest_fails_leaving_registrations() {
    trace::register(&LEFT_BEHIND, Filter::Glob("*tests::ftrace::golden_leaf")).unwrap();
    let function = Function {
        old_name: String::from("kernel::tests::runner::selftest_original"),
        old_position: None,
        new_address: selftest_replacement as *const () as u64,
        allow_inlined: false,
    };
    livepatch::add(Patch {
        name: String::from("runner-selftest"),
        objects: vec![Object { module: None, functions: vec![function], ..Default::default() }],
        ..Default::default()
    })
    .unwrap();
    livepatch::enable("runner-selftest").unwrap();
    crate::time::set_jitter(0x5e1f);
    assert_eq!(selftest_original(black_box(1)), 3);
    panic!("failing on purpose with an ftrace ops, a live patch and tick jitter in place");
}

#[ktest]
fn runner_selftest_finds_nothing_left_registered() {
    assert!(!trace::registered().contains(&LEFT_BEHIND.name), "{:?}", trace::registered());
    assert!(livepatch::list().iter().all(|patch| patch.name != "runner-selftest"));
    assert_eq!(selftest_original(black_box(1)), 2, "the original runs again");
}

#[ktest]
fn runner_selftest_hangs() {
    // Preemption off: only the watchdog in the timer tick can end this.
    let _preempt = crate::thread::preempt_disable();
    loop {
        core::hint::spin_loop();
    }
}

/// Panics on purpose, on whichever CPU runs it.
#[notrace]
fn panic_on_this_cpu(_: u64) {
    panic!("failing on purpose on CPU {}", crate::arch::percpu::smp_processor_id());
}

/// A panic in an IPI handler on another CPU ends the machine with one
/// report: it must not end the thread it interrupted nor this one. xtask
/// counts the reports.
#[ktest]
fn runner_selftest_a_secondary_cpu_panics() {
    use crate::arch::percpu::{online_cpus, smp_processor_id};
    use crate::arch::registers::timebase;
    let target = online_cpus().without(smp_processor_id()).iter().next().expect("at least two CPUs online");
    {
        let _preempt = crate::thread::preempt_disable();
        crate::arch::smp::smp_call_function(portable::cpuset::CpuSet::only(target), panic_on_this_cpu, 0, false);
    }
    // The machine stops meanwhile; this thread only waits, ceded, for a second.
    let deadline = timebase() + crate::time::milliseconds_to_timebase(1000);
    crate::arch::smp::wait_until(|| timebase() >= deadline);
    panic!("the machine still runs a second after CPU {target} panicked");
}

#[ktest]
fn runner_selftest_runs_after_the_hang() {
    assert!(trace::registered().is_empty(), "{:?}", trace::registered());
}
