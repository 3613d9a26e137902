//! test-livepatch.sh: basic function patching, multiple livepatches, atomic replace.
use super::{disable, enable, function, kernel_object, patch, retire};
use crate::livepatch::{self as klp, Callbacks, LivepatchError};
use alloc::vec;
use core::hint::black_box;
use macros::{ktest, livepatchable};

/// Linux's `cmdline_proc_show`, which test_klp_livepatch replaces.
#[livepatchable]
pub fn selftest_cmdline() -> &'static str {
    black_box("console=hvc0")
}

/// Linux's `meminfo_proc_show`, which test_klp_atomic_replace replaces.
#[livepatchable]
pub fn selftest_meminfo() -> &'static str {
    black_box("MemTotal: 512 MiB")
}

/// test_klp_livepatch's replacement.
pub fn patched_cmdline() -> &'static str {
    black_box("this has been live patched")
}

/// test_klp_atomic_replace's replacement.
pub fn patched_meminfo() -> &'static str {
    black_box("this has been live patched")
}

/// test_klp_livepatch: replaces the cmdline function.
fn add_livepatch(name: &str) {
    let functions =
        vec![function("kernel::tests::selftests::livepatch::selftest_cmdline", patched_cmdline as *const ())];
    klp::add(patch(name, vec![kernel_object(functions, Callbacks::default())], false, &[])).expect("adds");
}

/// test_klp_atomic_replace (with `replace`): replaces the meminfo function.
fn add_atomic_replace(name: &str, replace: bool) {
    let functions =
        vec![function("kernel::tests::selftests::livepatch::selftest_meminfo", patched_meminfo as *const ())];
    klp::add(patch(name, vec![kernel_object(functions, Callbacks::default())], replace, &[])).expect("adds");
}

/// "basic function patching": the patched function's result changes while
/// the patch is enabled and comes back after.
#[ktest]
fn test_livepatch_basic_function_patching() {
    add_livepatch("test_klp_livepatch");
    enable("test_klp_livepatch").expect("enables");
    assert_eq!(selftest_cmdline(), "this has been live patched");
    disable("test_klp_livepatch");
    assert_eq!(selftest_cmdline(), "console=hvc0");
    retire(&["test_klp_livepatch"]);
}

/// "multiple livepatches": two patches of different functions both apply;
/// disabling them in reverse order restores each function.
#[ktest]
fn test_livepatch_multiple_livepatches() {
    add_livepatch("test_klp_livepatch");
    add_atomic_replace("test_klp_atomic_replace", false);
    enable("test_klp_livepatch").expect("enables");
    assert_eq!(selftest_cmdline(), "this has been live patched");
    enable("test_klp_atomic_replace").expect("enables");
    assert_eq!((selftest_cmdline(), selftest_meminfo()), ("this has been live patched", "this has been live patched"));
    disable("test_klp_atomic_replace");
    assert_eq!((selftest_cmdline(), selftest_meminfo()), ("this has been live patched", "MemTotal: 512 MiB"));
    disable("test_klp_livepatch");
    assert_eq!(selftest_cmdline(), "console=hvc0");
    retire(&["test_klp_livepatch", "test_klp_atomic_replace"]);
}

/// "atomic replace livepatch": a replace patch of meminfo only takes over
/// from the cmdline patch, whose function returns to the original; the
/// replaced patch is disabled and can be removed; disabling the replace
/// patch restores everything.
#[ktest]
fn test_livepatch_atomic_replace() {
    add_livepatch("test_klp_livepatch");
    enable("test_klp_livepatch").expect("enables");
    add_atomic_replace("test_klp_atomic_replace", true);
    enable("test_klp_atomic_replace").expect("enables");
    assert_eq!(selftest_cmdline(), "console=hvc0", "not in the replace patch: back to the original");
    assert_eq!(selftest_meminfo(), "this has been live patched");
    assert!(!super::enabled("test_klp_livepatch"), "the replaced patch is disabled");
    klp::remove("test_klp_livepatch").expect("a replaced patch can be removed");
    disable("test_klp_atomic_replace");
    assert_eq!((selftest_cmdline(), selftest_meminfo()), ("console=hvc0", "MemTotal: 512 MiB"));
    retire(&["test_klp_atomic_replace"]);
}

// ---- During an atomic replace's transition -----------------------------------

/// Replaced by the first patch; the replace patch leaves it out (a NOP entry).
#[livepatchable]
pub fn replace_window_f() -> u64 {
    black_box(1)
}

fn first_f() -> u64 {
    black_box(2)
}

/// Replaced by both; the first patch's replacement sleeps, holding the
/// replace patch's transition open.
#[livepatchable]
pub fn replace_window_g() -> u64 {
    black_box(1)
}

/// What the unswitched blocker saw of `f` after it was woken.
static BLOCKER_SAW: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

pub(super) fn first_g() -> u64 {
    crate::thread::sleep_interruptible(60_000);
    // Still inside the first patch's code: not switched, it runs the old `f`.
    BLOCKER_SAW.store(replace_window_f(), core::sync::atomic::Ordering::SeqCst);
    black_box(2)
}

pub(super) fn replace_g() -> u64 {
    black_box(3)
}

/// Enables "first" (f and g), then the atomic replace "replacing" (g only)
/// while a thread sleeps in first's g: returns that thread, with the
/// replace's transition held open by it.
fn start_replace_held_open() -> crate::thread::JoinHandle {
    use crate::thread;
    BLOCKER_SAW.store(0, core::sync::atomic::Ordering::SeqCst);
    let first = vec![
        function("kernel::tests::selftests::livepatch::replace_window_f", first_f as *const ()),
        function("kernel::tests::selftests::livepatch::replace_window_g", first_g as *const ()),
    ];
    klp::add(patch("first", vec![kernel_object(first, Callbacks::default())], false, &[])).expect("adds");
    enable("first").expect("enables");
    let replacing = vec![function("kernel::tests::selftests::livepatch::replace_window_g", replace_g as *const ())];
    klp::add(patch("replacing", vec![kernel_object(replacing, Callbacks::default())], true, &[])).expect("adds");
    let blocker = thread::spawn_on(crate::arch::percpu::smp_processor_id(), "replace-blocker", || {
        replace_window_g();
    })
    .expect("room for a thread");
    // It sleeps 60 s: no tick can hide its sleep from this poll.
    while !thread::snapshot()
        .iter()
        .any(|summary| summary.id == blocker.id && matches!(summary.state, thread::State::Sleeping(_)))
    {
        thread::sleep_milliseconds(1);
    }
    let klp::Progress::Pending(_) = klp::enable("replacing").expect("enables") else {
        panic!("the thread asleep in the first patch's g holds the transition open");
    };
    blocker
}

/// During an atomic replace's transition, a switched thread runs the
/// original of a function the replace patch leaves out (the handler's NOP
/// entry), and an unswitched thread runs the replaced patch's replacement.
#[ktest]
fn atomic_replace_in_transition_runs_the_original_for_switched_threads_and_the_old_patch_for_others() {
    use crate::thread;
    use core::sync::atomic::Ordering;
    let blocker = start_replace_held_open();
    assert_eq!(replace_window_f(), 1, "switched: the NOP entry runs the original");
    assert_eq!(replace_window_g(), 3, "switched: the replace patch");
    assert!(thread::wake_interruptible(blocker.id));
    assert_eq!(blocker.join(), thread::ExitStatus::Returned);
    assert_eq!(BLOCKER_SAW.load(Ordering::SeqCst), 2, "unswitched: the first patch's f");
    if let klp::Progress::Pending(blocked) = klp::wait_for_transition(5_000) {
        panic!("the transition stalled: {blocked:?}");
    }
    assert_eq!((replace_window_f(), replace_window_g()), (1, 3));
    assert!(!super::enabled("first"));
    klp::remove("first").expect("replaced");
    disable("replacing");
    retire(&["replacing"]);
}

/// Forcing an atomic replace's transition marks the patches it replaces
/// forced too (a thread may still run them): they can never be removed.
#[ktest]
fn a_forced_atomic_replace_leaves_the_patches_it_replaced_forced() {
    use crate::thread;
    let blocker = start_replace_held_open();
    klp::force("replacing").expect("in transition");
    assert!(!super::enabled("first"), "replaced");
    assert!(klp::was_forced("first"), "the replaced patch is forced too: the blocker still runs it");
    assert!(matches!(klp::remove("first"), Err(LivepatchError::Forced(_))));
    // Test cleanup only: the blocker leaves, then the force is forgotten.
    assert!(thread::wake_interruptible(blocker.id));
    assert_eq!(blocker.join(), thread::ExitStatus::Returned);
    klp::forget_forced("first");
    klp::forget_forced("replacing");
    klp::remove("first").expect("replaced");
    disable("replacing");
    retire(&["replacing"]);
}
