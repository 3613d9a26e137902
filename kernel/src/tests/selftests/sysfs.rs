//! test-sysfs.sh: what `klp list` shows per patch (our sysfs), and how it changes.
use super::{disable, enable, function, kernel_object, patch, retire};
use crate::livepatch::{self as klp, Callbacks};
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::hint::black_box;
use macros::{ktest, livepatchable};

#[livepatchable]
pub fn sysfs_target_one() -> u64 {
    black_box(1)
}

#[livepatchable]
pub fn sysfs_target_two() -> u64 {
    black_box(2)
}

fn replacement() -> u64 {
    black_box(10)
}

fn add(name: &str, target: &str, replace: bool) {
    let functions = vec![function(target, replacement as *const ())];
    klp::add(patch(name, vec![kernel_object(functions, Callbacks::default())], replace, &[(3, 1)])).expect("adds");
}

fn summary(name: &str) -> klp::PatchSummary {
    klp::list().into_iter().find(|patch| patch.name == name).expect("listed")
}

/// "sysfs test livepatch interfaces" and "sysfs test object/patched": each
/// field, and its change across enable and disable.
#[ktest]
fn test_sysfs_livepatch_interfaces() {
    add("test_klp_livepatch", "kernel::tests::selftests::sysfs::sysfs_target_one", false);
    let before = summary("test_klp_livepatch");
    assert!(!before.enabled && before.transition.is_none() && !before.replace);
    assert_eq!(before.objects, vec![(String::from("vmlinux"), false)], "not patched while disabled");
    assert_eq!(before.states, vec![(3, 1)]);
    let old = sysfs_target_one as *const () as u64;
    let pairs: Vec<(u64, u64, bool)> =
        before.functions.iter().map(|function| (function.old, function.new, function.active)).collect();
    assert_eq!(pairs, vec![(old, replacement as *const () as u64, false)], "old and new addresses");
    enable("test_klp_livepatch").expect("enables");
    let after = summary("test_klp_livepatch");
    assert!(after.enabled && after.transition.is_none());
    assert_eq!(after.objects, vec![(String::from("vmlinux"), true)], "patched");
    assert!(after.functions[0].active);
    assert_eq!(sysfs_target_one(), 10);
    disable("test_klp_livepatch");
    let disabled = summary("test_klp_livepatch");
    assert!(!disabled.enabled && !disabled.objects[0].1 && !disabled.functions[0].active);
    retire(&["test_klp_livepatch"]);
}

/// "sysfs test replace enabled" and "sysfs test stack_order": the replace
/// field, and each patch's position, renumbered after the middle one goes.
#[ktest]
fn test_sysfs_replace_and_stack_order() {
    add("first", "kernel::tests::selftests::sysfs::sysfs_target_one", false);
    add("middle", "kernel::tests::selftests::sysfs::sysfs_target_two", false);
    add("last", "kernel::tests::selftests::sysfs::sysfs_target_one", true);
    let orders = || {
        ["first", "middle", "last"]
            .map(|name| klp::list().iter().find(|patch| patch.name == name).map(|patch| patch.stack_order))
    };
    let first_order = orders();
    assert_eq!(first_order[1].unwrap() - first_order[0].unwrap(), 1);
    assert_eq!(first_order[2].unwrap() - first_order[1].unwrap(), 1, "consecutive, in the order added");
    assert!(summary("last").replace && !summary("first").replace);
    klp::remove("middle").expect("removes");
    let renumbered = orders();
    assert_eq!(renumbered[1], None);
    assert_eq!(renumbered[2], first_order[1], "the last patch moved down into the middle's place");
    assert_eq!(renumbered[0], first_order[0]);
    enable("first").expect("enables");
    disable("first");
    retire(&["first", "last"]);
}
