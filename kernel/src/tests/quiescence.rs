//! Tests that changes wait for the other CPUs: `unregister` for a handler running elsewhere, a stub op's change for the stubs in flight.
use super::settle;
use crate::arch::percpu::{BOOT_CPU, online_cpus};
use crate::arch::registers::timebase;
use crate::arch::text::{self, log::Step};
use crate::thread::{self, ExitStatus};
use crate::time;
use crate::trace::{self, Filter, FtraceOps, FtraceRegs, OpsFlags};
use core::hint::black_box;
use core::sync::atomic::{AtomicU64, Ordering};
use macros::{ktest, notrace};

/// The first online CPU other than the boot CPU.
fn secondary() -> usize {
    online_cpus().without(BOOT_CPU).iter().next().expect("the test kernel runs with at least two CPUs online")
}

static IN_HANDLER: AtomicU64 = AtomicU64::new(0);
static LEFT_HANDLER_AT: AtomicU64 = AtomicU64::new(0);

/// Stays 30 ms in the handler, then says when it left.
#[notrace]
extern "C" fn slow_handler(_: u64, _: u64, _: &FtraceOps, _: &mut FtraceRegs) {
    IN_HANDLER.store(1, Ordering::SeqCst);
    let until = timebase() + time::milliseconds_to_timebase(30);
    while timebase() < until {
        core::hint::spin_loop();
    }
    LEFT_HANDLER_AT.store(timebase(), Ordering::SeqCst);
}

static SLOW_ELSEWHERE: FtraceOps = FtraceOps::new("test-slow-elsewhere", slow_handler, OpsFlags::RECURSION_SAFE);

#[inline(never)]
fn quiescence_target(value: u64) -> u64 {
    black_box(value) + 1
}

/// `unregister` returns only once a handler that another CPU is running has
/// returned: after it, the ops may be freed or reused.
#[ktest]
fn unregister_waits_for_a_handler_running_on_another_cpu() {
    IN_HANDLER.store(0, Ordering::SeqCst);
    LEFT_HANDLER_AT.store(0, Ordering::SeqCst);
    trace::register(&SLOW_ELSEWHERE, Filter::Addresses(&[quiescence_target as *const () as u64])).unwrap();
    let caller = thread::spawn_on(secondary(), "traced-elsewhere", || {
        assert_eq!(quiescence_target(black_box(1)), 2);
    })
    .expect("room for a thread");
    while IN_HANDLER.load(Ordering::SeqCst) == 0 {
        thread::yield_now();
    }
    trace::unregister(&SLOW_ELSEWHERE).unwrap();
    let returned = timebase();
    assert_eq!(caller.join(), ExitStatus::Returned);
    let left = LEFT_HANDLER_AT.load(Ordering::SeqCst);
    assert!(left != 0 && returned >= left, "unregister returned at {returned}, the handler left at {left}");
}

#[notrace]
extern "C" fn quiet_handler(_: u64, _: u64, _: &FtraceOps, _: &mut FtraceRegs) {}
static DIRECT: FtraceOps = FtraceOps::new("test-direct-op", quiet_handler, OpsFlags::RECURSION_SAFE);

/// A lone RECURSION_SAFE ops is called straight from `ftrace_call` with its
/// op in r5: its op is stored, then a grace period passes, and only then is
/// the branch to its handler written (a stub interrupted between its load of
/// the op and the branch would otherwise pass the old op).
#[ktest]
fn a_stub_op_is_stored_a_grace_period_before_the_branch_that_uses_it() {
    assert!(trace::registered().is_empty(), "{:?}", trace::registered());
    let call = &raw const crate::arch::ftrace::ftrace_call as u64;
    text::log::start();
    let registered = trace::register(&DIRECT, Filter::Addresses(&[quiescence_target as *const () as u64]));
    let steps = text::log::stop_with_addresses();
    let op = crate::arch::ftrace::FUNCTION_TRACE_OP.load(Ordering::SeqCst);
    trace::unregister(&DIRECT).unwrap();
    assert_eq!(op, &DIRECT as *const FtraceOps as usize, "the stubs pass the lone ops its own op");
    registered.unwrap();
    let stored = steps.iter().position(|&(step, ..)| step == Step::OpStored);
    let grace = steps.iter().position(|&(step, ..)| step == Step::GracePeriod);
    let branch = steps.iter().position(|&(step, _, address)| step == Step::Written && address == call);
    assert!(
        matches!((stored, grace, branch), (Some(stored), Some(grace), Some(branch)) if stored < grace && grace < branch),
        "the op stored, then a grace period, then ftrace_call's write: {steps:?}"
    );
    assert_eq!(quiescence_target(1), 2);
}

/// A module that a thread on another CPU ran (the greeting patch) unloads
/// once that thread has ended, while that CPU idles: its idle thread, which
/// the scan reads from the registers the stop parked it in, holds nothing
/// of the module.
#[ktest]
fn a_module_run_on_another_cpu_unloads_while_that_cpu_idles() {
    let image = crate::module::embedded::find("greeting").expect("the test kernel embeds greeting");
    settle::load(image).expect("greeting loads");
    let caller = thread::spawn_on(secondary(), "greeted", || {
        for _ in 0..10 {
            black_box(crate::shell::greeting());
        }
    })
    .expect("room for a thread");
    assert_eq!(caller.join(), ExitStatus::Returned);
    thread::sleep_milliseconds(5);
    // The disable transition may be left to the worker (`livepatch.transition_wait=0`):
    // waited for; a thread found inside (`Busy`) is not.
    let unloaded = settle::unload("greeting");
    assert!(unloaded.is_ok(), "{unloaded:?}");
}

static SPINNING: AtomicU64 = AtomicU64::new(0);
static RELEASE: AtomicU64 = AtomicU64::new(0);

/// Spins, a leaf, until released: a thread running here has its NIP in this
/// function and the return into its caller only in LR.
#[inline(never)]
fn spin_in_stand_in_module() {
    SPINNING.store(1, Ordering::SeqCst);
    while RELEASE.load(Ordering::SeqCst) == 0 {
        core::hint::spin_loop();
    }
}

/// The unload scan sees a thread running on another CPU inside "module"
/// code (a kernel function standing in for one): the machine is stopped, and
/// the thread is found by the NIP its CPU was parked at.
#[ktest]
fn the_unload_scan_finds_a_thread_running_module_code_on_another_cpu() {
    let function = spin_in_stand_in_module as *const () as u64;
    let size = crate::symbols::table().and_then(|table| table.lookup(function)).expect("in the symbol table").0.size;
    let code = function..function + u64::from(size);
    SPINNING.store(0, Ordering::SeqCst);
    RELEASE.store(0, Ordering::SeqCst);
    let other = secondary();
    let spinner = thread::spawn_on(other, "inside-elsewhere", spin_in_stand_in_module).expect("room for a thread");
    while SPINNING.load(Ordering::SeqCst) == 0 {
        thread::yield_now();
    }
    let holder = crate::module::busy::inside(code.clone());
    RELEASE.store(1, Ordering::SeqCst);
    let spinner_id = spinner.id;
    assert_eq!(spinner.join(), ExitStatus::Returned);
    let holder = holder.expect("the spinning thread is inside");
    assert_eq!((holder.thread, holder.cpu), (spinner_id, Some(other)), "{holder:?}");
    assert!(code.contains(&holder.address), "{:#x} is in the spinner's function {code:x?}", holder.address);
    // Once it has ended, nothing is inside.
    assert_eq!(crate::module::busy::inside(code), None);
}
