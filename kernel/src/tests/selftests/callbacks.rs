//! test-callbacks.sh: the order of the per-object callbacks, their errors, several patches and atomic replace.
use super::{clear_events, disable, enable, function, kernel_object, patch, recording_callbacks, retire, take_events};
use crate::livepatch::{self as klp, LivepatchError};
use alloc::vec;
use alloc::vec::Vec;
use core::hint::black_box;
use core::sync::atomic::Ordering;
use macros::{ktest, livepatchable};

recording_callbacks!(demo);
recording_callbacks!(demo2);

/// The kernel function the demo patches replace.
#[livepatchable]
pub fn callbacks_target() -> u64 {
    black_box(1)
}

pub fn replacement() -> u64 {
    black_box(2)
}

fn replacement2() -> u64 {
    black_box(3)
}

const TARGET: &str = "kernel::tests::selftests::callbacks::callbacks_target";

/// test_klp_callbacks_demo (vmlinux object only).
fn add_demo(name: &str, callbacks: crate::livepatch::Callbacks, new: *const (), replace: bool) {
    klp::add(patch(name, vec![kernel_object(vec![function(TARGET, new)], callbacks)], replace, &[])).expect("adds");
}

fn events(lines: &[&str]) -> Vec<alloc::string::String> {
    lines.iter().map(|line| alloc::string::String::from(*line)).collect()
}

/// "target module not present": a patch of the kernel and of a module that
/// is not loaded (an object with callbacks only, as Linux's demo has for
/// test_klp_callbacks_mod) runs only the kernel object's callbacks, in
/// Linux's order around each transition.
#[ktest]
fn test_callbacks_target_module_not_present() {
    clear_events();
    let objects = vec![
        kernel_object(vec![function(TARGET, replacement as *const ())], demo::CALLBACKS),
        super::module_object("target-module", Vec::new(), demo2::CALLBACKS),
    ];
    klp::add(patch("test_klp_callbacks_demo", objects, false, &[])).expect("adds");
    assert!(
        klp::list()
            .iter()
            .any(|patch| patch.objects.iter().any(|(object, patched)| object == "target-module" && !patched)),
        "the absent module's object is listed, not patched"
    );
    assert!(take_events().is_empty(), "adding runs no callback");
    enable("test_klp_callbacks_demo").expect("enables");
    assert_eq!(take_events(), events(&["demo: pre_patch vmlinux", "demo: post_patch vmlinux"]));
    assert_eq!(callbacks_target(), 2);
    disable("test_klp_callbacks_demo");
    assert_eq!(take_events(), events(&["demo: pre_unpatch vmlinux", "demo: post_unpatch vmlinux"]));
    assert_eq!(callbacks_target(), 1);
    retire(&["test_klp_callbacks_demo"]);
}

/// "pre-patch callback -ENODEV": a failing pre-patch callback refuses the
/// enable with its code; nothing was patched, no other callback ran (its
/// post-unpatch only follows a pre-patch that succeeded).
#[ktest]
fn test_callbacks_pre_patch_callback_error() {
    clear_events();
    add_demo("test_klp_callbacks_demo", demo::CALLBACKS, replacement as *const (), false);
    demo::PRE_PATCH_RESULT.store(-19, Ordering::SeqCst);
    let refused = super::enable("test_klp_callbacks_demo");
    demo::PRE_PATCH_RESULT.store(0, Ordering::SeqCst);
    match refused {
        Err(LivepatchError::PrePatch { patch, object, code }) => {
            assert_eq!((patch.as_str(), object.as_str(), code), ("test_klp_callbacks_demo", "vmlinux", -19));
        }
        other => panic!("expected the pre-patch error, got {other:?}"),
    }
    assert_eq!(take_events(), events(&["demo: pre_patch vmlinux"]));
    assert_eq!(callbacks_target(), 1, "nothing was patched");
    assert!(!super::enabled("test_klp_callbacks_demo") && klp::status().is_none(), "no transition, not enabled");
    // It can be enabled once the callback succeeds.
    enable("test_klp_callbacks_demo").expect("enables");
    assert_eq!(callbacks_target(), 2);
    retire(&["test_klp_callbacks_demo"]);
}

/// "multiple livepatches": each patch runs its own callbacks for its own
/// transitions; the newer patch's replacement runs while both are enabled.
#[ktest]
fn test_callbacks_multiple_livepatches() {
    clear_events();
    add_demo("test_klp_callbacks_demo", demo::CALLBACKS, replacement as *const (), false);
    add_demo("test_klp_callbacks_demo2", demo2::CALLBACKS, replacement2 as *const (), false);
    enable("test_klp_callbacks_demo").expect("enables");
    enable("test_klp_callbacks_demo2").expect("enables");
    assert_eq!(callbacks_target(), 3);
    disable("test_klp_callbacks_demo2");
    assert_eq!(callbacks_target(), 2);
    disable("test_klp_callbacks_demo");
    assert_eq!(
        take_events(),
        events(&[
            "demo: pre_patch vmlinux",
            "demo: post_patch vmlinux",
            "demo2: pre_patch vmlinux",
            "demo2: post_patch vmlinux",
            "demo2: pre_unpatch vmlinux",
            "demo2: post_unpatch vmlinux",
            "demo: pre_unpatch vmlinux",
            "demo: post_unpatch vmlinux",
        ])
    );
    retire(&["test_klp_callbacks_demo", "test_klp_callbacks_demo2"]);
}

/// "atomic replace": a replace patch takes over; the replaced patch's
/// unpatch callbacks never run, only the replace patch's own.
#[ktest]
fn test_callbacks_atomic_replace() {
    clear_events();
    add_demo("test_klp_callbacks_demo", demo::CALLBACKS, replacement as *const (), false);
    add_demo("test_klp_callbacks_demo2", demo2::CALLBACKS, replacement2 as *const (), true);
    enable("test_klp_callbacks_demo").expect("enables");
    enable("test_klp_callbacks_demo2").expect("enables");
    assert_eq!(callbacks_target(), 3);
    assert!(!super::enabled("test_klp_callbacks_demo"));
    disable("test_klp_callbacks_demo2");
    assert_eq!(callbacks_target(), 1, "the replaced patch does not come back");
    // Removing them runs no callback either.
    retire(&["test_klp_callbacks_demo", "test_klp_callbacks_demo2"]);
    assert_eq!(
        take_events(),
        events(&[
            "demo: pre_patch vmlinux",
            "demo: post_patch vmlinux",
            "demo2: pre_patch vmlinux",
            "demo2: post_patch vmlinux",
            "demo2: pre_unpatch vmlinux",
            "demo2: post_unpatch vmlinux",
        ])
    );
}
