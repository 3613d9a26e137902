//! Tests of module unloading under concurrency: the window at `livepatch_handler`'s entry, per-module busy checks, the grace period.
use crate::arch::ppc64::livepatch::livepatch_handler;
use crate::livepatch::{self, Function, Object, Patch};
use crate::module::{self, LoadError};
use crate::thread::{self, ExitStatus};
use crate::trace::{self, Filter, FtraceOps, FtraceRegs, OpsFlags};
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use boot::PerCpu;
use core::hint::black_box;
use core::mem::offset_of;
use core::sync::atomic::{AtomicU64, Ordering};
use macros::{ktest, livepatchable, notrace};

fn embedded(name: &str) -> &'static [u8] {
    module::embedded::find(name).expect("xtask builds the sample modules into the test kernel")
}

/// What `kernel::shell::greeting` returns without a patch, and with the counter module.
const ORIGINAL_GREETING: &str = "hello from the original kernel";
const COUNTER_GREETING: &str = "hello from the counter patch module";

/// Adds and enables a kernel patch replacing `old_name` by `new_address`.
fn enable_kernel_patch(name: &str, old_name: &str, new_address: u64) {
    let functions = vec![Function { old_name: String::from(old_name), old_position: None, new_address }];
    livepatch::add(Patch { name: String::from(name), objects: vec![Object { module: None, functions }] }).expect("adds");
    livepatch::enable(name).expect("enables");
}

/// Disables and removes a kernel patch.
fn retire(name: &str) {
    livepatch::disable(name).expect("enabled");
    livepatch::remove(name).expect("disabled");
}

/// Unloads `name`, retrying while it is busy; returns how often it was busy.
fn unload_when_idle(name: &str) -> u64 {
    let mut busy = 0;
    loop {
        match module::unload(name) {
            Ok(()) => return busy,
            Err(LoadError::Busy(_)) => {
                busy += 1;
                thread::yield_now();
            }
            Err(other) => panic!("unload {name}: {other}"),
        }
    }
}

// ---- 1. The window between ftrace_caller and the push ---------------------------

core::arch::global_asm!(
    r#"
    .text
    # unload_test_tick_probe: a way into livepatch_handler with a timer tick pending.
    #
    # On entry: exactly as livepatch_handler (r11 = C's global entry, LR = r0 =
    # the return address into A, r1 = A's stack pointer, r2-r10 as at B's
    # entry); r12 and CTR free.
    # Makes a decrementer interrupt pending with MSR[EE] off, then enters
    # livepatch_handler by rfid with EE on, so the tick is taken with NIP =
    # livepatch_handler: the worst moment, C's address only in r11.
    # On exit: at livepatch_handler, every register but r12 as on entry;
    # SRR0 and SRR1 clobbered.
    .globl unload_test_tick_probe
    .type unload_test_tick_probe, @function
unload_test_tick_probe:
    li      12, {msr_ri}
    mtmsrd  12, 1                     # MSR[EE] = 0, RI stays 1
    li      12, 1
    mtdec   12                        # DEC = 1: QEMU raises the tick now; pending while EE = 0
    ld      12, {percpu_toc}(13)      # r12 = kernel TOC
    addis   12, 12, livepatch_handler@toc@ha
    addi    12, 12, livepatch_handler@toc@l     # r12 = livepatch_handler
    mtsrr0  12                        # SRR0 = livepatch_handler
    mfmsr   12
    ori     12, 12, {msr_ee}          # r12 = this MSR with EE on
    mtsrr1  12                        # SRR1 = r12
    rfid                              # to livepatch_handler, EE on: the tick is taken there
    .size unload_test_tick_probe, . - unload_test_tick_probe
    "#,
    msr_ri = const 2,
    msr_ee = const 0x8000,
    percpu_toc = const offset_of!(PerCpu, toc),
);

unsafe extern "C" {
    fn unload_test_tick_probe();
}

/// Calls the probe diverted into `unload_test_tick_probe`.
static PROBED_CALLS: AtomicU64 = AtomicU64::new(0);

/// Runs after the livepatch handler on `kernel::shell::greeting`: a call it
/// sent to `livepatch_handler` goes through the probe instead.
#[notrace]
extern "C" fn divert_through_tick_probe(_ip: u64, _parent_ip: u64, _ops: &FtraceOps, regs: &mut FtraceRegs) {
    if regs.regs.nip == livepatch_handler as *const () as u64 {
        regs.regs.nip = unload_test_tick_probe as *const () as u64;
        PROBED_CALLS.fetch_add(1, Ordering::Relaxed);
    }
}

static TICK_PROBE: FtraceOps = FtraceOps::new("unload-tick-probe", divert_through_tick_probe, OpsFlags::RECURSION_SAFE);

/// Patched for the length of a test so that the livepatch ops stays first
/// in the ftrace list (it is unregistered whenever no patch is enabled).
#[livepatchable]
fn anchor_original() -> u64 {
    black_box(1)
}

#[inline(never)]
fn anchor_replacement() -> u64 {
    black_box(2)
}

#[ktest]
fn unloading_while_callers_are_preempted_entering_the_replacement_never_runs_freed_code() {
    static DONE: AtomicU64 = AtomicU64::new(0);
    static WRONG: AtomicU64 = AtomicU64::new(0);
    static CALLS: AtomicU64 = AtomicU64::new(0);
    DONE.store(0, Ordering::SeqCst);
    WRONG.store(0, Ordering::SeqCst);
    CALLS.store(0, Ordering::SeqCst);
    PROBED_CALLS.store(0, Ordering::SeqCst);
    enable_kernel_patch("unload-anchor", "kernel::tests::unload::anchor_original", anchor_replacement as *const () as u64);
    trace::register(&TICK_PROBE, Filter::Names(&["kernel::shell::greeting"])).expect("the probe registers");
    let workers: Vec<_> = (0..3)
        .map(|_| {
            thread::spawn("greeter", || {
                while DONE.load(Ordering::SeqCst) == 0 {
                    let text = crate::shell::greeting();
                    if text != ORIGINAL_GREETING && text != COUNTER_GREETING {
                        WRONG.fetch_add(1, Ordering::SeqCst);
                    }
                    CALLS.fetch_add(1, Ordering::SeqCst);
                }
            })
            .expect("room for a thread")
        })
        .collect();
    crate::time::set_jitter(0x2545_f491_4f6c_dd1d);
    let mut busy = 0;
    for _ in 0..30 {
        module::load(embedded("counter")).expect("the counter module loads");
        thread::sleep_milliseconds(1);
        busy += unload_when_idle("counter");
    }
    crate::time::set_jitter(0);
    DONE.store(1, Ordering::SeqCst);
    let statuses: Vec<ExitStatus> = workers.into_iter().map(|worker| worker.join()).collect();
    trace::unregister(&TICK_PROBE).expect("registered");
    retire("unload-anchor");
    crate::println!("unload test: {} calls, {} through the probe, unload busy {busy} times", CALLS.load(Ordering::SeqCst), PROBED_CALLS.load(Ordering::SeqCst));
    assert!(statuses.iter().all(|status| *status == ExitStatus::Returned), "callers: {statuses:?}");
    assert_eq!(module::busy::PARKED_ENTERING.load(Ordering::SeqCst), 0, "no caller was ever switched out before its call of C");
    assert_eq!(WRONG.load(Ordering::SeqCst), 0, "every call returned one of the two greetings");
    assert!(PROBED_CALLS.load(Ordering::SeqCst) > 30, "the probe put callers at the window");
    assert!(module::summaries().is_empty());
}
