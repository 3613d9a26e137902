//! Tests of the consistency model (livepatch::transition): per-thread switching, the reason for it, stalls, reversal, force, and many threads.
//!
//! Names follow Linux's selftests where one exists (test-callbacks.sh
//! "busy target"); docs/livepatch.md maps them.
use super::settle;
use crate::livepatch::transition::{PATCHED, UNDEFINED, UNPATCHED};
use crate::livepatch::{self, Blocker, Function, LivepatchError, Object, Patch, Progress};
use crate::module::{self, LoadError};
use crate::thread::{self, ExitStatus};
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::hint::black_box;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use macros::{ktest, livepatchable};

/// Adds (disabled) a kernel patch replacing each (old name, replacement).
fn add_patch(name: &str, functions: &[(&str, u64)]) {
    let functions = functions
        .iter()
        .map(|&(old_name, new_address)| Function {
            old_name: String::from(old_name),
            old_position: None,
            new_address,
            allow_inlined: false,
        })
        .collect();
    livepatch::add(Patch {
        name: String::from(name),
        objects: vec![Object { module: None, functions, ..Default::default() }],
        ..Default::default()
    })
    .expect("the patch is valid");
}

/// The patch state of thread `id` (`thread::snapshot`).
fn patch_state_of(id: u64) -> u64 {
    thread::snapshot().iter().find(|summary| summary.id == id).map(|summary| summary.patch_state).expect("live thread")
}

// ---- 1. The reason for the model: a contract between two functions -------------

/// Calls of B that broke the contract: old B given new A's token, or new B old A's.
static CONTRACT_BROKEN: AtomicU64 = AtomicU64::new(0);
/// Calls in which the new pair ran (new A, then new B).
static CONTRACT_NEW_PAIRS: AtomicU64 = AtomicU64::new(0);
static CONTRACT_OLD_PAIRS: AtomicU64 = AtomicU64::new(0);
static CONTRACT_STOP: AtomicBool = AtomicBool::new(false);

/// What A does before it calls B: some work the timer may preempt, then a
/// 1 ms sleep, so that a thread is inside A most of the time.
#[inline(never)]
fn linger() {
    for value in 0..2_000u64 {
        black_box(value);
    }
    thread::sleep_milliseconds(1);
}

/// Old A: hands B a version-1 token.
#[livepatchable]
fn contract_a() -> u64 {
    linger();
    contract_b(black_box(1))
}

/// Old B: understands version-1 tokens only.
#[livepatchable]
fn contract_b(token: u64) -> u64 {
    if token != 1 {
        CONTRACT_BROKEN.fetch_add(1, Ordering::SeqCst);
    }
    black_box(10)
}

/// New A: hands B a version-2 token, calling B by its old name, so that the
/// handler chooses which B runs (as a patch module's call of B would).
#[inline(never)]
fn contract_a_new() -> u64 {
    linger();
    contract_b(black_box(2))
}

/// New B: understands version-2 tokens only.
#[inline(never)]
fn contract_b_new(token: u64) -> u64 {
    if token != 2 {
        CONTRACT_BROKEN.fetch_add(1, Ordering::SeqCst);
    }
    black_box(20)
}

const CONTRACT_A: &str = "kernel::tests::consistency::contract_a";
const CONTRACT_B: &str = "kernel::tests::consistency::contract_b";

/// Runs four threads calling A in a loop (a safe point between calls) and
/// enables and disables the two-function patch `rounds` times; returns the
/// broken contracts counted. With `immediate`, the test-only immediate model
/// switches every thread at once instead.
fn run_contract_rounds(rounds: u64, immediate: bool) -> u64 {
    CONTRACT_BROKEN.store(0, Ordering::SeqCst);
    CONTRACT_NEW_PAIRS.store(0, Ordering::SeqCst);
    CONTRACT_OLD_PAIRS.store(0, Ordering::SeqCst);
    CONTRACT_STOP.store(false, Ordering::SeqCst);
    add_patch(
        "contract",
        &[(CONTRACT_A, contract_a_new as *const () as u64), (CONTRACT_B, contract_b_new as *const () as u64)],
    );
    let callers: Vec<_> = (0..4)
        .map(|_| {
            thread::spawn("contract-caller", || {
                while !CONTRACT_STOP.load(Ordering::SeqCst) {
                    match contract_a() {
                        20 => CONTRACT_NEW_PAIRS.fetch_add(1, Ordering::SeqCst),
                        _ => CONTRACT_OLD_PAIRS.fetch_add(1, Ordering::SeqCst),
                    };
                    // Outside A and B: a transition may switch this thread here.
                    livepatch::safe_point();
                }
            })
            .expect("room for a thread")
        })
        .collect();
    livepatch::IMMEDIATE.store(immediate, Ordering::SeqCst);
    for _ in 0..rounds {
        thread::sleep_milliseconds(5);
        livepatch::enable("contract").expect("enables");
        settle::wait();
        thread::sleep_milliseconds(5);
        livepatch::disable("contract").expect("disables");
        settle::wait();
        if immediate && CONTRACT_BROKEN.load(Ordering::SeqCst) > 0 {
            break;
        }
    }
    livepatch::IMMEDIATE.store(false, Ordering::SeqCst);
    CONTRACT_STOP.store(true, Ordering::SeqCst);
    for caller in callers {
        assert_eq!(caller.join(), ExitStatus::Returned);
    }
    livepatch::remove("contract").expect("disabled");
    CONTRACT_BROKEN.load(Ordering::SeqCst)
}

#[ktest]
fn the_consistency_model_never_runs_new_b_from_old_a() {
    let broken = run_contract_rounds(8, false);
    let (new, old) = (CONTRACT_NEW_PAIRS.load(Ordering::SeqCst), CONTRACT_OLD_PAIRS.load(Ordering::SeqCst));
    assert_eq!(broken, 0, "no thread ran old A with new B or new A with old B ({new} new pairs, {old} old)");
    assert!(new > 0 && old > 0, "both pairs ran: {new} new, {old} old");
}

#[ktest]
fn the_immediate_model_runs_new_b_from_old_a() {
    // The same threads and patch, every thread switched at once: a thread
    // asleep inside old A wakes up and calls new B with the old token.
    let broken = run_contract_rounds(40, true);
    assert!(broken > 0, "the immediate model mixed old and new within 40 rounds");
}

/// The third version, a patch stacked on the new pair: A hands B a version-3 token.
#[inline(never)]
fn contract_a_third() -> u64 {
    linger();
    contract_b(black_box(3))
}

/// B of the third version: understands version-3 tokens only.
#[inline(never)]
fn contract_b_third(token: u64) -> u64 {
    if token != 3 {
        CONTRACT_BROKEN.fetch_add(1, Ordering::SeqCst);
    }
    black_box(30)
}

static CONTRACT_THIRD_PAIRS: AtomicU64 = AtomicU64::new(0);

#[ktest]
fn a_patch_stacked_on_another_waits_for_threads_inside_the_one_below() {
    // The threads sleep inside the lower patch's A (version 2) while the
    // upper patch (version 3) is enabled and disabled: the transition must
    // count the replacement below as changed code too.
    CONTRACT_BROKEN.store(0, Ordering::SeqCst);
    CONTRACT_THIRD_PAIRS.store(0, Ordering::SeqCst);
    CONTRACT_STOP.store(false, Ordering::SeqCst);
    add_patch(
        "contract-lower",
        &[(CONTRACT_A, contract_a_new as *const () as u64), (CONTRACT_B, contract_b_new as *const () as u64)],
    );
    livepatch::enable("contract-lower").expect("enables");
    settle::wait();
    add_patch(
        "contract-upper",
        &[(CONTRACT_A, contract_a_third as *const () as u64), (CONTRACT_B, contract_b_third as *const () as u64)],
    );
    let callers: Vec<_> = (0..4)
        .map(|_| {
            thread::spawn("contract-caller", || {
                while !CONTRACT_STOP.load(Ordering::SeqCst) {
                    if contract_a() == 30 {
                        CONTRACT_THIRD_PAIRS.fetch_add(1, Ordering::SeqCst);
                    }
                    livepatch::safe_point();
                }
            })
            .expect("room for a thread")
        })
        .collect();
    for _ in 0..8 {
        thread::sleep_milliseconds(5);
        livepatch::enable("contract-upper").expect("enables");
        settle::wait();
        thread::sleep_milliseconds(5);
        livepatch::disable("contract-upper").expect("disables");
        settle::wait();
    }
    CONTRACT_STOP.store(true, Ordering::SeqCst);
    for caller in callers {
        assert_eq!(caller.join(), ExitStatus::Returned);
    }
    livepatch::remove("contract-upper").expect("disabled");
    livepatch::disable("contract-lower").expect("enabled");
    settle::wait();
    livepatch::remove("contract-lower").expect("disabled");
    let third = CONTRACT_THIRD_PAIRS.load(Ordering::SeqCst);
    assert_eq!(CONTRACT_BROKEN.load(Ordering::SeqCst), 0, "no thread mixed the lower pair with the upper one");
    assert!(third > 0, "the upper pair ran: {third} calls");
}

// ---- 2. test-callbacks "busy target": a thread asleep in the target ------------

static BUSY_RELEASE: AtomicBool = AtomicBool::new(false);
/// Threads inside `busy_target` (old or new) now.
static BUSY_INSIDE: AtomicU64 = AtomicU64::new(0);

/// Sleeps until released; 1 from the original.
#[livepatchable]
fn busy_target() -> u64 {
    BUSY_INSIDE.fetch_add(1, Ordering::SeqCst);
    while !BUSY_RELEASE.load(Ordering::SeqCst) {
        thread::sleep_milliseconds(1);
    }
    BUSY_INSIDE.fetch_sub(1, Ordering::SeqCst);
    black_box(1)
}

/// The replacement: sleeps the same way; 2.
#[inline(never)]
fn busy_target_new() -> u64 {
    BUSY_INSIDE.fetch_add(1, Ordering::SeqCst);
    while !BUSY_RELEASE.load(Ordering::SeqCst) {
        thread::sleep_milliseconds(1);
    }
    BUSY_INSIDE.fetch_sub(1, Ordering::SeqCst);
    black_box(2)
}

const BUSY_TARGET: &str = "kernel::tests::consistency::busy_target";

/// A thread that calls `busy_target` twice, with a safe point in between,
/// and returns both results (first * 10 + second). On this CPU (tests run
/// pinned to the boot CPU): while the test runs, it is switched out, asleep
/// in the target, and a round names the function, never "running on CPU 1"
/// (as it did now and then when it ran on another CPU).
fn spawn_busy_caller() -> thread::JoinHandle {
    let handle = thread::spawn_on(crate::arch::percpu::smp_processor_id(), "busy-caller", || {
        let first = busy_target();
        livepatch::safe_point();
        let second = busy_target();
        RESULTS.store(first * 10 + second, Ordering::SeqCst);
    })
    .expect("room for a thread");
    while BUSY_INSIDE.load(Ordering::SeqCst) == 0 {
        thread::sleep_milliseconds(1);
    }
    handle
}
static RESULTS: AtomicU64 = AtomicU64::new(0);

fn reset_busy() {
    BUSY_RELEASE.store(false, Ordering::SeqCst);
    BUSY_INSIDE.store(0, Ordering::SeqCst);
    RESULTS.store(0, Ordering::SeqCst);
}

#[ktest]
fn busy_target_stalls_the_transition_names_the_thread_and_completes_when_it_leaves() {
    reset_busy();
    add_patch("busy", &[(BUSY_TARGET, busy_target_new as *const () as u64)]);
    let caller = spawn_busy_caller();
    let id = caller.id;
    let Progress::Pending(blocked) = livepatch::enable("busy").expect("enables") else {
        panic!("a thread asleep in the old function holds the transition open");
    };
    assert!(
        blocked.iter().any(|blocked| blocked.thread == id
            && matches!(&blocked.blocker, Blocker::Function { function, .. } if function == BUSY_TARGET)),
        "the blocker is the caller, with busy_target on its stack: {blocked:?}"
    );
    let status = livepatch::status().expect("in transition");
    assert!(status.enabling && status.patch == "busy");
    let lines = crate::shell::klp_status();
    assert!(
        lines
            .iter()
            .any(|line| line.contains(&alloc::format!("thread {id} (busy-caller)")) && line.contains(BUSY_TARGET)),
        "klp status names the thread and the function: {lines:?}"
    );
    assert!(
        crate::shell::klp_list().iter().any(|line| line.contains("busy [enabled, in transition to patched]")),
        "{:?}",
        crate::shell::klp_list()
    );
    assert_eq!(patch_state_of(id), UNPATCHED, "the blocked thread has not switched");
    assert_eq!(patch_state_of(thread::current_id()), PATCHED, "the enabling thread switched at once");
    // Another patch waits, then is refused with the blocker named.
    add_patch("busy-other", &[("kernel::tests::consistency::contract_b", contract_b_new as *const () as u64)]);
    let refused = livepatch::enable("busy-other");
    assert!(
        matches!(&refused, Err(LivepatchError::TransitionInProgress { patch, .. }) if patch == "busy"),
        "{refused:?}"
    );
    livepatch::remove("busy-other").expect("never enabled");
    // Woken, the thread leaves the old function, switches at its safe point
    // and its second call runs the replacement.
    BUSY_RELEASE.store(true, Ordering::SeqCst);
    settle::wait();
    assert_eq!(caller.join(), ExitStatus::Returned);
    assert_eq!(RESULTS.load(Ordering::SeqCst), 12, "old, then new");
    assert!(livepatch::status().is_none());
    assert_eq!(patch_state_of(thread::current_id()), UNDEFINED, "states are cleared after the transition");
    livepatch::disable("busy").expect("enabled");
    settle::wait();
    livepatch::remove("busy").expect("disabled");
}

/// `enable` waits `livepatch::transition_wait` for a transition that a
/// thread holds open (100 ms, or what the boot argument
/// `livepatch.transition_wait` says: 0 in the livepatch suite's run on its
/// slow paths), returns it pending, and the worker alone finishes it once
/// the thread has left: nobody waits for it here.
#[ktest]
fn enable_waits_as_the_boot_arguments_say_then_the_worker_finishes_the_transition() {
    let tree = portable::devicetree::DeviceTree::parse(crate::devicetree::blob()).expect("the boot-time tree parses");
    // As `livepatch::configure` reads it: the last one given, if a number in range.
    let expected = tree
        .bootargs()
        .unwrap_or("")
        .split_whitespace()
        .filter_map(|word| word.strip_prefix("livepatch.transition_wait="))
        .next_back()
        .and_then(|value| value.parse::<u64>().ok())
        .filter(|milliseconds| *milliseconds <= livepatch::TRANSITION_WAIT_LIMIT_MILLISECONDS)
        .unwrap_or(livepatch::TRANSITION_WAIT_MILLISECONDS);
    assert_eq!(livepatch::transition_wait(livepatch::TRANSITION_WAIT_MILLISECONDS), expected);
    reset_busy();
    add_patch("busy", &[(BUSY_TARGET, busy_target_new as *const () as u64)]);
    let caller = spawn_busy_caller();
    let started = crate::arch::registers::timebase();
    let Progress::Pending(_) = livepatch::enable("busy").expect("enables") else {
        panic!("a thread asleep in the old function holds the transition open");
    };
    let waited = crate::arch::registers::timebase() - started;
    assert!(
        waited >= crate::time::milliseconds_to_timebase(expected),
        "enable returned after {waited} timebase ticks, before its {expected} ms"
    );
    if expected < livepatch::TRANSITION_WAIT_MILLISECONDS {
        // One round of checks takes microseconds: an enable that still
        // waited the default 100 ms ignored the boot argument.
        assert!(
            waited < crate::time::milliseconds_to_timebase(livepatch::TRANSITION_WAIT_MILLISECONDS),
            "enable waited {waited} timebase ticks, not the {expected} ms the boot arguments say"
        );
    }
    BUSY_RELEASE.store(true, Ordering::SeqCst);
    assert_eq!(caller.join(), ExitStatus::Returned);
    // `in_transition` only looks: it runs no round of checks itself.
    let deadline =
        crate::arch::registers::timebase() + crate::time::milliseconds_to_timebase(settle::SETTLE_MILLISECONDS);
    while livepatch::in_transition("busy") {
        assert!(crate::arch::registers::timebase() < deadline, "the worker never finished the transition");
        thread::sleep_milliseconds(1);
    }
    assert_eq!(RESULTS.load(Ordering::SeqCst), 12, "old, then new");
    settle::disable("busy").expect("enabled");
    livepatch::remove("busy").expect("disabled");
}

#[ktest]
fn busy_target_enable_reversed_midway_completes_at_once_and_the_thread_keeps_the_original() {
    reset_busy();
    add_patch("busy", &[(BUSY_TARGET, busy_target_new as *const () as u64)]);
    let caller = spawn_busy_caller();
    assert!(matches!(livepatch::enable("busy"), Ok(Progress::Pending(_))));
    // Reversed: the blocked thread is unpatched already, the others switch back.
    let reversed = livepatch::disable("busy").expect("reverses");
    // It completes without the blocked thread, still asleep in the target:
    // at once, or, when the reversal is left to the worker
    // (`livepatch.transition_wait=0`), once the other CPUs' idle threads have
    // switched back. A reversal that waited for the sleeper would stall.
    settle::settle(reversed);
    assert_eq!(BUSY_INSIDE.load(Ordering::SeqCst), 1, "the blocked thread is still inside");
    assert!(livepatch::list().iter().any(|patch| patch.name == "busy" && !patch.enabled && patch.transition.is_none()));
    BUSY_RELEASE.store(true, Ordering::SeqCst);
    assert_eq!(caller.join(), ExitStatus::Returned);
    assert_eq!(RESULTS.load(Ordering::SeqCst), 11, "old both times");
    livepatch::remove("busy").expect("disabled");
}

#[ktest]
fn busy_target_disable_reversed_midway_keeps_the_patch() {
    reset_busy();
    add_patch("busy", &[(BUSY_TARGET, busy_target_new as *const () as u64)]);
    livepatch::enable("busy").expect("enables");
    settle::wait();
    // Now asleep in the replacement: the disable waits for it.
    let caller = spawn_busy_caller();
    let Progress::Pending(blocked) = livepatch::disable("busy").expect("disables") else {
        panic!("a thread asleep in the replacement holds the disable open");
    };
    assert!(blocked.iter().any(|blocked| blocked.thread == caller.id), "{blocked:?}");
    let reversed = livepatch::enable("busy").expect("reverses");
    // It completes without the blocked thread, still asleep in the target:
    // at once, or, when the reversal is left to the worker
    // (`livepatch.transition_wait=0`), once the other CPUs' idle threads have
    // switched back. A reversal that waited for the sleeper would stall.
    settle::settle(reversed);
    assert_eq!(BUSY_INSIDE.load(Ordering::SeqCst), 1, "the blocked thread is still inside");
    BUSY_RELEASE.store(true, Ordering::SeqCst);
    assert_eq!(caller.join(), ExitStatus::Returned);
    assert_eq!(RESULTS.load(Ordering::SeqCst), 22, "new both times");
    livepatch::disable("busy").expect("enabled");
    settle::wait();
    livepatch::remove("busy").expect("disabled");
}

/// Replaces `klp_uptime_ticks`, which the counter module's replacement
/// calls: sleeps until released, so that the thread has the module's code
/// on its stack.
#[inline(never)]
extern "C" fn parked_uptime_ticks() -> u64 {
    BUSY_INSIDE.fetch_add(1, Ordering::SeqCst);
    while !BUSY_RELEASE.load(Ordering::SeqCst) {
        thread::sleep_milliseconds(1);
    }
    BUSY_INSIDE.fetch_sub(1, Ordering::SeqCst);
    black_box(7)
}

#[ktest]
fn busy_target_forced_completes_and_its_module_is_never_unloaded() {
    reset_busy();
    let counter = module::embedded::find("counter").expect("the test kernel embeds the samples");
    module::load(counter).expect("loads");
    settle::wait();
    add_patch("park", &[("klp_uptime_ticks", parked_uptime_ticks as *const () as u64)]);
    livepatch::enable("park").expect("enables");
    settle::wait();
    // greeting -> the counter module's replacement -> klp_uptime_ticks -> parked.
    // On this CPU, as `spawn_busy_caller`.
    let caller = thread::spawn_on(crate::arch::percpu::smp_processor_id(), "in-counter", || {
        black_box(crate::shell::greeting());
    })
    .expect("room for a thread");
    // Bounded, and saying where the caller is: a caller that never parks
    // (seen once, not understood) would otherwise end as a watchdog hang.
    let deadline =
        crate::arch::registers::timebase() + crate::time::milliseconds_to_timebase(settle::SETTLE_MILLISECONDS);
    while BUSY_INSIDE.load(Ordering::SeqCst) == 0 {
        assert!(
            crate::arch::registers::timebase() < deadline,
            "the caller never reached the parked replacement: {:?}; {:?}",
            thread::snapshot().iter().find(|summary| summary.id == caller.id).map(|summary| summary.state),
            crate::shell::klp_list()
        );
        thread::sleep_milliseconds(1);
    }
    let busy = module::unload("counter");
    assert!(
        matches!(&busy, Err(LoadError::InTransition(name, blocked)) if name == "counter"
            && blocked.iter().any(|blocked| blocked.thread == caller.id
                && matches!(&blocked.blocker, Blocker::Function { function, .. } if function == "kernel::shell::greeting"))),
        "{busy:?}"
    );
    livepatch::force("counter").expect("in transition");
    assert!(livepatch::status().is_none(), "forced: complete");
    assert!(crate::shell::klp_list().iter().any(|line| line.contains("counter [disabled, forced]")));
    let refused = module::unload("counter");
    assert!(matches!(&refused, Err(LoadError::Forced(name)) if name == "counter"), "{refused:?}");
    assert!(module::summaries().iter().any(|(name, ..)| name == "counter"), "still loaded");
    BUSY_RELEASE.store(true, Ordering::SeqCst);
    assert_eq!(caller.join(), ExitStatus::Returned);
    assert!(matches!(module::unload("counter"), Err(LoadError::Forced(_))), "for good, even with no thread inside");
    // Test cleanup only (the kernel has no such way out): forget the force.
    livepatch::forget_forced("counter");
    settle::unload("counter").expect("unloads once the force is forgotten");
    livepatch::disable("park").expect("enabled");
    settle::wait();
    livepatch::remove("park").expect("disabled");
}

static SLOW_WOKEN: AtomicU64 = AtomicU64::new(0);

/// Sleeps a minute, interruptibly; 1 from the original.
#[livepatchable]
fn slow_target() -> u64 {
    if thread::sleep_interruptible(60_000) {
        SLOW_WOKEN.fetch_add(1, Ordering::SeqCst);
    }
    black_box(1)
}

#[inline(never)]
fn slow_target_new() -> u64 {
    black_box(2)
}

/// A thread on this CPU that calls `slow_target` twice with a safe point
/// in between; `RESULTS` gets first * 10 + second.
fn spawn_slow_caller() -> thread::JoinHandle {
    spawn_sleeping_caller("slow-caller", slow_target)
}

/// A thread on this CPU (the runner pins cases to the boot CPU) that calls
/// `target` twice with a safe point in between (`RESULTS` gets first * 10 +
/// second), returned once it sleeps in the first call.
fn spawn_sleeping_caller(name: &str, target: fn() -> u64) -> thread::JoinHandle {
    let handle = thread::spawn_on(crate::arch::percpu::BOOT_CPU, name, move || {
        let first = target();
        livepatch::safe_point();
        RESULTS.store(first * 10 + target(), Ordering::SeqCst);
    })
    .expect("room for a thread");
    // Until it sleeps in `target`.
    while !thread::snapshot()
        .iter()
        .any(|summary| summary.id == handle.id && matches!(summary.state, thread::State::Sleeping(_)))
    {
        thread::sleep_milliseconds(1);
    }
    handle
}

#[ktest]
fn a_thread_asleep_in_the_target_is_woken_by_the_fake_signal_and_switches() {
    RESULTS.store(0, Ordering::SeqCst);
    SLOW_WOKEN.store(0, Ordering::SeqCst);
    add_patch("slow", &[("kernel::tests::consistency::slow_target", slow_target_new as *const () as u64)]);
    // Asked for: `klp signal`.
    let caller = spawn_slow_caller();
    let started = crate::arch::registers::timebase();
    let Progress::Pending(blocked) = livepatch::enable("slow").expect("enables") else {
        panic!("a thread asleep in the old function holds the transition open");
    };
    assert!(blocked.iter().any(|blocked| blocked.thread == caller.id), "{blocked:?}");
    let woken = livepatch::signal();
    assert_woken_by_the_signal(woken, started, "the one blocker asleep interruptibly is woken");
    settle::wait();
    assert_eq!(caller.join(), ExitStatus::Returned);
    assert_eq!(RESULTS.load(Ordering::SeqCst), 12, "old, woken early, then new");
    assert_eq!(SLOW_WOKEN.load(Ordering::SeqCst), 1);
    livepatch::disable("slow").expect("enabled");
    settle::wait();
    // Sent by the worker after `SIGNAL_MILLISECONDS` of stall, unasked.
    RESULTS.store(0, Ordering::SeqCst);
    let caller = spawn_slow_caller();
    livepatch::enable("slow").expect("enables");
    settle::wait();
    assert_eq!(caller.join(), ExitStatus::Returned);
    assert_eq!(RESULTS.load(Ordering::SeqCst), 12);
    assert_eq!(SLOW_WOKEN.load(Ordering::SeqCst), 2, "the worker's signal woke it");
    livepatch::disable("slow").expect("enabled");
    settle::wait();
    livepatch::remove("slow").expect("disabled");
}

/// `signal()` woke the one sleeper (`woken`), or the worker had sent the
/// signal itself first: it does once the transition started `started` has
/// stalled for `SIGNAL_MILLISECONDS`, which a busy host can make happen
/// before the test's own call. Either way the sleeper must wake: a signal
/// that skipped it would leave the test's `settle::wait` to time out.
#[track_caller]
fn assert_woken_by_the_signal(woken: usize, started: u64, what: &str) {
    let waited = crate::arch::registers::timebase() - started;
    assert!(
        woken == 1 || waited >= crate::time::milliseconds_to_timebase(livepatch::SIGNAL_MILLISECONDS),
        "{what}: signal() woke {woken} threads {waited} timebase ticks after the enable"
    );
}

/// Sleeps a minute, interruptibly, switched away by a tick as it went to
/// sleep (below an exception frame); 1 from the original.
#[livepatchable]
fn ticked_asleep_target() -> u64 {
    if thread::sleep_interruptible_switched_out_by_a_tick(60_000) {
        SLOW_WOKEN.fetch_add(1, Ordering::SeqCst);
    }
    black_box(1)
}

/// A thread asleep whose stack cannot be walked reliably (a tick switched it
/// away as it went to sleep: its sleep and the tick's exception frame on
/// its stack) blocks the transition as `Unreliable`, not by the function;
/// the fake signal wakes it all the same, as Linux's wakes every task not
/// yet switched: it leaves the function, switches and runs the new code.
/// (Found on a busy host: such a thread held a transition for its whole
/// minute, and every case after it.)
#[ktest]
fn a_thread_a_tick_switched_out_as_it_went_to_sleep_is_woken_by_the_fake_signal() {
    RESULTS.store(0, Ordering::SeqCst);
    SLOW_WOKEN.store(0, Ordering::SeqCst);
    add_patch("ticked", &[("kernel::tests::consistency::ticked_asleep_target", slow_target_new as *const () as u64)]);
    // Seen Sleeping on this test's CPU, it was switched out by a tick, never still Running.
    let caller = spawn_sleeping_caller("ticked-asleep", ticked_asleep_target);
    let started = crate::arch::registers::timebase();
    let Progress::Pending(blocked) = livepatch::enable("ticked").expect("enables") else {
        panic!("a thread asleep in the old function holds the transition open");
    };
    assert!(
        blocked.iter().any(|blocked| blocked.thread == caller.id
            && matches!(&blocked.blocker, Blocker::Unreliable(unreliable)
                if unreliable.reason == portable::reliable_stack::Reason::ExceptionFrame)),
        "the sleeper's stack holds the tick's exception frame: {blocked:?}"
    );
    let woken = livepatch::signal();
    assert_woken_by_the_signal(woken, started, "the sleeper is woken, though its blocker is its unreliable stack");
    // Its second call sleeps again (the new code runs instead: it returns at once).
    settle::wait();
    assert_eq!(caller.join(), ExitStatus::Returned);
    assert_eq!(RESULTS.load(Ordering::SeqCst), 12, "old, woken early, then new");
    assert_eq!(SLOW_WOKEN.load(Ordering::SeqCst), 1);
    settle::disable("ticked").expect("enabled");
    livepatch::remove("ticked").expect("disabled");
}

// ---- 3. An unreliable stack is never switched -------------------------------------

static SPIN_STOP: AtomicBool = AtomicBool::new(false);
static SPIN_SAFE: AtomicBool = AtomicBool::new(false);

#[ktest]
fn a_thread_preempted_in_a_loop_is_unreliable_and_switches_only_at_its_safe_point() {
    SPIN_STOP.store(false, Ordering::SeqCst);
    SPIN_SAFE.store(false, Ordering::SeqCst);
    add_patch("spin", &[(BUSY_TARGET, busy_target_new as *const () as u64)]);
    // On this CPU: while this thread runs, the spinner is switched out by the timer.
    let spinner = thread::spawn_on(crate::arch::percpu::smp_processor_id(), "spinner", || {
        while !SPIN_STOP.load(Ordering::SeqCst) {
            if SPIN_SAFE.load(Ordering::SeqCst) {
                livepatch::safe_point();
            }
        }
    })
    .expect("room for a thread");
    thread::sleep_milliseconds(20);
    let Progress::Pending(blocked) = livepatch::enable("spin").expect("enables") else {
        panic!("a thread preempted by the timer cannot be walked reliably");
    };
    let mine: Vec<_> = blocked.iter().filter(|blocked| blocked.thread == spinner.id).collect();
    assert!(
        matches!(mine.as_slice(), [blocked] if matches!(&blocked.blocker, Blocker::Unreliable(unreliable)
            if unreliable.reason == portable::reliable_stack::Reason::ExceptionFrame)),
        "{blocked:?}"
    );
    assert_eq!(patch_state_of(spinner.id), UNPATCHED, "never switched while unreliable");
    SPIN_SAFE.store(true, Ordering::SeqCst);
    settle::wait();
    SPIN_STOP.store(true, Ordering::SeqCst);
    assert_eq!(spinner.join(), ExitStatus::Returned);
    livepatch::disable("spin").expect("enabled");
    settle::wait();
    livepatch::remove("spin").expect("disabled");
}

// ---- 4. Fifty threads ------------------------------------------------------------

#[livepatchable]
fn fifty_target() -> u64 {
    black_box(1)
}

#[inline(never)]
fn fifty_target_new() -> u64 {
    black_box(2)
}

static FIFTY_STOP: AtomicBool = AtomicBool::new(false);
/// Per thread, the last result of `fifty_target` it saw.
static FIFTY_SEEN: [AtomicU64; 50] = [const { AtomicU64::new(0) }; 50];

/// A long call: a few million instructions without a safe point.
#[inline(never)]
fn long_call() {
    for value in 0..200_000u64 {
        black_box(value);
    }
}

#[ktest]
fn fifty_threads_busy_sleeping_and_in_long_calls_all_switch_and_end_undefined() {
    FIFTY_STOP.store(false, Ordering::SeqCst);
    FIFTY_SEEN.iter().for_each(|seen| seen.store(0, Ordering::SeqCst));
    add_patch("fifty", &[("kernel::tests::consistency::fifty_target", fifty_target_new as *const () as u64)]);
    let threads: Vec<_> = (0..50usize)
        .map(|index| {
            thread::spawn("fifty", move || {
                while !FIFTY_STOP.load(Ordering::SeqCst) {
                    FIFTY_SEEN[index].store(fifty_target(), Ordering::SeqCst);
                    match index % 3 {
                        // Busy: loops with an explicit safe point.
                        0 => livepatch::safe_point(),
                        // Sleeping: switched by the transition while asleep, or at its own sleep.
                        1 => thread::sleep_milliseconds(3),
                        // In long calls, preempted inside them (unreliable), then a safe point.
                        _ => {
                            long_call();
                            livepatch::safe_point();
                        }
                    }
                }
            })
            .expect("room for a thread")
        })
        .collect();
    thread::sleep_milliseconds(20);
    livepatch::enable("fifty").expect("enables");
    // During the transition every live thread is unpatched or patched.
    if livepatch::in_transition("fifty") {
        assert!(thread::snapshot().iter().all(|summary| summary.patch_state == PATCHED
            || summary.patch_state == UNPATCHED
            || matches!(summary.state, thread::State::Dead(_))));
    }
    settle::wait();
    assert!(thread::snapshot().iter().all(|summary| summary.patch_state == UNDEFINED), "cleared after it");
    // Every thread now runs the replacement.
    FIFTY_SEEN.iter().for_each(|seen| seen.store(0, Ordering::SeqCst));
    while FIFTY_SEEN.iter().any(|seen| seen.load(Ordering::SeqCst) == 0) {
        thread::sleep_milliseconds(1);
    }
    assert!(FIFTY_SEEN.iter().all(|seen| seen.load(Ordering::SeqCst) == 2), "all fifty run the replacement");
    livepatch::disable("fifty").expect("enabled");
    settle::wait();
    FIFTY_SEEN.iter().for_each(|seen| seen.store(0, Ordering::SeqCst));
    while FIFTY_SEEN.iter().any(|seen| seen.load(Ordering::SeqCst) == 0) {
        thread::sleep_milliseconds(1);
    }
    assert!(FIFTY_SEEN.iter().all(|seen| seen.load(Ordering::SeqCst) == 1), "all fifty run the original again");
    FIFTY_STOP.store(true, Ordering::SeqCst);
    for handle in threads {
        assert_eq!(handle.join(), ExitStatus::Returned);
    }
    livepatch::remove("fifty").expect("disabled");
}
