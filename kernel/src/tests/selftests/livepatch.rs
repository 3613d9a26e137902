//! test-livepatch.sh: basic function patching, multiple livepatches, atomic replace.
use super::{disable, enable, function, kernel_object, patch, retire};
use crate::livepatch::{self as klp, Callbacks};
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
