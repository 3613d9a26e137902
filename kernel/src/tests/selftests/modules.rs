//! test-livepatch.sh and test-callbacks.sh cases with loadable target modules: patched when loaded first or later, callbacks as modules come and go, errors, a busy target.
use super::super::settle;
use super::{
    clear_events, disable, enable, function, kernel_object, module_object, patch, recording_callbacks, retire,
    take_events,
};
use crate::livepatch::{self as klp, Callbacks, LivepatchError, Progress};
use crate::module::{self, LoadError, embedded};
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::hint::black_box;
use core::sync::atomic::Ordering;
use macros::ktest;

recording_callbacks!(demo);
recording_callbacks!(demo_module);

/// `target_module_value`'s result unpatched (patches/target-module).
const TARGET_VALUE: u64 = 0x007a_49e7;

/// The replacement of `target_module_value`, in the kernel.
fn patched_value() -> u64 {
    black_box(0x1111)
}

/// The replacement of `busy_module_work`, in the kernel (same signature).
fn patched_work(_stop: &core::sync::atomic::AtomicBool) -> u64 {
    black_box(0)
}

fn file(name: &str) -> &'static [u8] {
    embedded::find(name).unwrap_or_else(|| panic!("the test kernel embeds '{name}'"))
}

/// Calls `target_module_value` in the loaded target module.
fn target_value() -> u64 {
    let (entry, _) = module::resolve_function("target-module", "target_module_value", None).expect("loaded");
    // Safety: the module's `pub fn target_module_value() -> u64`, at its global entry.
    let function: fn() -> u64 = unsafe { core::mem::transmute(entry as usize) };
    function()
}

/// Linux's test_klp_callbacks_demo: the kernel's callbacks target (for a
/// vmlinux object) and `target_module_value` in target-module, with the
/// recording callbacks on both objects.
fn add_demo(name: &str, module_callbacks: Callbacks) {
    let kernel = vec![function(
        "kernel::tests::selftests::callbacks::callbacks_target",
        super::callbacks::replacement as *const (),
    )];
    let target = vec![function("target_module_value", patched_value as *const ())];
    let objects =
        vec![kernel_object(kernel, demo::CALLBACKS), module_object("target-module", target, module_callbacks)];
    klp::add(patch(name, objects, false, &[])).expect("adds");
}

fn events(lines: &[&str]) -> Vec<String> {
    lines.iter().map(|line| String::from(*line)).collect()
}

/// Whether patch `name`'s object `object` is patched, as `klp list` says.
fn object_patched(name: &str, object: &str) -> bool {
    klp::list()
        .into_iter()
        .find(|patch| patch.name == name)
        .and_then(|patch| patch.objects.into_iter().find(|(listed, _)| listed == object))
        .is_some_and(|(_, patched)| patched)
}

// ---- test-livepatch.sh ------------------------------------------------------

/// "module function patching, target module loaded first" (test_klp_mod_target, test_klp_mod_patch).
#[ktest]
fn test_livepatch_module_function_patching_target_module_loaded_first() {
    settle::load(file("target-module")).expect("loads");
    assert_eq!(target_value(), TARGET_VALUE);
    add_demo("test_klp_mod_patch", Callbacks::default());
    enable("test_klp_mod_patch").expect("enables");
    assert_eq!(target_value(), 0x1111, "patched at once");
    disable("test_klp_mod_patch");
    assert_eq!(target_value(), TARGET_VALUE);
    retire(&["test_klp_mod_patch"]);
    settle::unload("target-module").expect("unloads");
}

/// "module function patching, livepatch loaded first": the module is
/// patched as it loads, before its code runs.
#[ktest]
fn test_livepatch_module_function_patching_livepatch_loaded_first() {
    add_demo("test_klp_mod_patch", Callbacks::default());
    enable("test_klp_mod_patch").expect("enables without its module");
    assert!(!object_patched("test_klp_mod_patch", "target-module"));
    settle::load(file("target-module")).expect("loads");
    assert_eq!(target_value(), 0x1111, "patched on its load");
    assert!(object_patched("test_klp_mod_patch", "target-module"));
    settle::unload("target-module").expect("unloads");
    assert!(!object_patched("test_klp_mod_patch", "target-module"));
    // Loaded again: patched again.
    settle::load(file("target-module")).expect("loads");
    assert_eq!(target_value(), 0x1111);
    settle::unload("target-module").expect("unloads");
    disable("test_klp_mod_patch");
    retire(&["test_klp_mod_patch"]);
}

// ---- test-callbacks.sh ------------------------------------------------------

/// "target module before livepatch": both objects' callbacks, in order, around each transition.
#[ktest]
fn test_callbacks_target_module_before_livepatch() {
    clear_events();
    settle::load(file("target-module")).expect("loads");
    add_demo("test_klp_callbacks_demo", demo_module::CALLBACKS);
    enable("test_klp_callbacks_demo").expect("enables");
    disable("test_klp_callbacks_demo");
    settle::unload("target-module").expect("unloads");
    assert_eq!(
        take_events(),
        events(&[
            "target-module: init",
            "demo: pre_patch vmlinux",
            "demo_module: pre_patch target-module",
            "demo: post_patch vmlinux",
            "demo_module: post_patch target-module",
            "demo: pre_unpatch vmlinux",
            "demo_module: pre_unpatch target-module",
            "demo: post_unpatch vmlinux",
            "demo_module: post_unpatch target-module",
            "target-module: exit",
        ])
    );
    retire(&["test_klp_callbacks_demo"]);
}

/// "module_coming": the module's pre- and post-patch callbacks run as it
/// loads, before its init.
#[ktest]
fn test_callbacks_module_coming() {
    clear_events();
    add_demo("test_klp_callbacks_demo", demo_module::CALLBACKS);
    enable("test_klp_callbacks_demo").expect("enables");
    settle::load(file("target-module")).expect("loads");
    assert_eq!(target_value(), 0x1111);
    disable("test_klp_callbacks_demo");
    settle::unload("target-module").expect("unloads");
    assert_eq!(
        take_events(),
        events(&[
            "demo: pre_patch vmlinux",
            "demo: post_patch vmlinux",
            "demo_module: pre_patch target-module",
            "demo_module: post_patch target-module",
            "target-module: init",
            "demo: pre_unpatch vmlinux",
            "demo_module: pre_unpatch target-module",
            "demo: post_unpatch vmlinux",
            "demo_module: post_unpatch target-module",
            "target-module: exit",
        ])
    );
    retire(&["test_klp_callbacks_demo"]);
}

/// "module_going": the module's unpatch callbacks run as it goes, after its exit.
#[ktest]
fn test_callbacks_module_going() {
    clear_events();
    settle::load(file("target-module")).expect("loads");
    add_demo("test_klp_callbacks_demo", demo_module::CALLBACKS);
    enable("test_klp_callbacks_demo").expect("enables");
    settle::unload("target-module").expect("unloads");
    disable("test_klp_callbacks_demo");
    assert_eq!(
        take_events(),
        events(&[
            "target-module: init",
            "demo: pre_patch vmlinux",
            "demo_module: pre_patch target-module",
            "demo: post_patch vmlinux",
            "demo_module: post_patch target-module",
            "target-module: exit",
            "demo_module: pre_unpatch target-module",
            "demo_module: post_unpatch target-module",
            "demo: pre_unpatch vmlinux",
            "demo: post_unpatch vmlinux",
        ])
    );
    retire(&["test_klp_callbacks_demo"]);
}

/// "module_coming and module_going": both, while the patch stays enabled.
#[ktest]
fn test_callbacks_module_coming_and_module_going() {
    clear_events();
    add_demo("test_klp_callbacks_demo", demo_module::CALLBACKS);
    enable("test_klp_callbacks_demo").expect("enables");
    settle::load(file("target-module")).expect("loads");
    settle::unload("target-module").expect("unloads");
    disable("test_klp_callbacks_demo");
    assert_eq!(
        take_events(),
        events(&[
            "demo: pre_patch vmlinux",
            "demo: post_patch vmlinux",
            "demo_module: pre_patch target-module",
            "demo_module: post_patch target-module",
            "target-module: init",
            "target-module: exit",
            "demo_module: pre_unpatch target-module",
            "demo_module: post_unpatch target-module",
            "demo: pre_unpatch vmlinux",
            "demo: post_unpatch vmlinux",
        ])
    );
    retire(&["test_klp_callbacks_demo"]);
}

/// "module_coming + pre-patch callback -ENODEV": the module's load is
/// refused, its init never runs, the patch stays enabled and nothing of
/// the module stays.
#[ktest]
fn test_callbacks_module_coming_pre_patch_callback_error() {
    clear_events();
    add_demo("test_klp_callbacks_demo", demo_module::CALLBACKS);
    enable("test_klp_callbacks_demo").expect("enables");
    demo_module::PRE_PATCH_RESULT.store(-19, Ordering::SeqCst);
    let refused = module::load(file("target-module"));
    demo_module::PRE_PATCH_RESULT.store(0, Ordering::SeqCst);
    match refused {
        Err(LoadError::Livepatch(LivepatchError::PrePatch { object, code: -19, .. })) => {
            assert_eq!(object, "target-module");
        }
        other => panic!("expected the module's load refused by its pre-patch callback, got {other:?}"),
    }
    assert!(!module::is_target("target-module"), "not loaded");
    assert!(
        matches!(
            module::resolve_function("target-module", "target_module_value", None),
            Err(LivepatchError::UnknownObject(_))
        ),
        "its functions and sites went with it"
    );
    assert!(!crate::trace::site_summaries().iter().any(|site| site.name == "target_module_value"), "no site left");
    assert!(!object_patched("test_klp_callbacks_demo", "target-module"));
    assert!(super::enabled("test_klp_callbacks_demo"));
    disable("test_klp_callbacks_demo");
    assert_eq!(
        take_events(),
        events(&[
            "demo: pre_patch vmlinux",
            "demo: post_patch vmlinux",
            "demo_module: pre_patch target-module",
            "demo: pre_unpatch vmlinux",
            "demo: post_unpatch vmlinux",
        ])
    );
    // It loads once the callback succeeds.
    settle::load(file("target-module")).expect("loads");
    settle::unload("target-module").expect("unloads");
    retire(&["test_klp_callbacks_demo"]);
}

/// "pre-patch callback -ENODEV" with the module loaded: the module
/// object's pre-patch fails after the kernel's succeeded, so the kernel
/// object gets its post-unpatch; nothing is patched.
#[ktest]
fn test_callbacks_pre_patch_callback_error_on_the_module_object() {
    clear_events();
    settle::load(file("target-module")).expect("loads");
    add_demo("test_klp_callbacks_demo", demo_module::CALLBACKS);
    demo_module::PRE_PATCH_RESULT.store(-19, Ordering::SeqCst);
    let refused = super::enable("test_klp_callbacks_demo");
    demo_module::PRE_PATCH_RESULT.store(0, Ordering::SeqCst);
    assert!(matches!(refused, Err(LivepatchError::PrePatch { code: -19, .. })), "{refused:?}");
    assert_eq!(target_value(), TARGET_VALUE, "nothing patched");
    settle::unload("target-module").expect("unloads");
    assert_eq!(
        take_events(),
        events(&[
            "target-module: init",
            "demo: pre_patch vmlinux",
            "demo_module: pre_patch target-module",
            "demo: post_unpatch vmlinux",
            "target-module: exit",
        ])
    );
    retire(&["test_klp_callbacks_demo"]);
}

/// "multiple target modules": a patch of the kernel and two modules
/// (busy-module, not blocking here, and target-module) runs each object's
/// callbacks in the patch's object order.
#[ktest]
fn test_callbacks_multiple_target_modules() {
    clear_events();
    settle::load(file("busy-module")).expect("loads");
    let kernel = vec![function(
        "kernel::tests::selftests::callbacks::callbacks_target",
        super::callbacks::replacement as *const (),
    )];
    let target = vec![function("target_module_value", patched_value as *const ())];
    let objects = vec![
        kernel_object(kernel, demo::CALLBACKS),
        module_object("busy-module", Vec::new(), demo_module::CALLBACKS),
        module_object("target-module", target, demo_module::CALLBACKS),
    ];
    klp::add(patch("test_klp_callbacks_demo", objects, false, &[])).expect("adds");
    enable("test_klp_callbacks_demo").expect("enables");
    settle::load(file("target-module")).expect("loads");
    settle::unload("target-module").expect("unloads");
    disable("test_klp_callbacks_demo");
    settle::unload("busy-module").expect("unloads");
    let all = take_events();
    let callbacks: Vec<&str> = all.iter().map(String::as_str).filter(|line| line.contains("patch")).collect();
    assert_eq!(
        callbacks,
        [
            "demo: pre_patch vmlinux",
            "demo_module: pre_patch busy-module",
            "demo: post_patch vmlinux",
            "demo_module: post_patch busy-module",
            "demo_module: pre_patch target-module",
            "demo_module: post_patch target-module",
            "demo_module: pre_unpatch target-module",
            "demo_module: post_unpatch target-module",
            "demo: pre_unpatch vmlinux",
            "demo_module: pre_unpatch busy-module",
            "demo: post_unpatch vmlinux",
            "demo_module: post_unpatch busy-module",
        ]
    );
    retire(&["test_klp_callbacks_demo"]);
}

/// "busy target module": a thread asleep in busy-module's patched work
/// function stalls the enable; target-module loading meanwhile gets its
/// pre-patch callback and is patched, but its post-patch waits for the
/// transition, which completes once busy-module goes (its exit stops the
/// thread); then every remaining object's post-patch runs.
#[ktest]
fn test_callbacks_busy_target_module() {
    clear_events();
    settle::load(file("busy-module")).expect("loads");
    let busy = vec![function("busy_module_work", patched_work as *const ())];
    let target = vec![function("target_module_value", patched_value as *const ())];
    let objects = vec![
        kernel_object(Vec::new(), demo::CALLBACKS),
        module_object("busy-module", busy, demo_module::CALLBACKS),
        module_object("target-module", target, demo_module::CALLBACKS),
    ];
    klp::add(patch("test_klp_callbacks_demo", objects, false, &[])).expect("adds");
    // Until its thread has run (on one CPU it has not yet): from its first
    // run on it is inside busy_module_work's loop. (Not "until it sleeps":
    // its 10 ms sleeps and this thread's polls can fall on the same ticks.)
    while !crate::thread::snapshot().iter().any(|summary| summary.name == "busy-module" && summary.switches > 0) {
        crate::thread::sleep_milliseconds(1);
    }
    let Progress::Pending(blocked) = klp::enable("test_klp_callbacks_demo").expect("enables") else {
        panic!("busy-module's thread, asleep in busy_module_work, must stall the transition");
    };
    assert!(!blocked.is_empty());
    module::load(file("target-module")).expect("loads during the transition");
    assert_eq!(target_value(), 0x1111, "this thread switched: it runs the patched module function");
    let during = take_events();
    assert!(during.iter().any(|line| line == "demo_module: pre_patch target-module"), "{during:?}");
    assert!(!during.iter().any(|line| line.contains("post_patch")), "no post-patch during the transition: {during:?}");
    module::unload("busy-module").expect("its exit stops the thread");
    if let Progress::Pending(blocked) = klp::wait_for_transition(5_000) {
        panic!("the transition stalled after busy-module went: {blocked:?}");
    }
    let after = take_events();
    let callbacks: Vec<&str> = after.iter().map(String::as_str).filter(|line| line.contains("patch")).collect();
    assert_eq!(
        callbacks,
        ["demo_module: post_unpatch busy-module", "demo: post_patch vmlinux", "demo_module: post_patch target-module",],
        "busy-module went in transition (no pre-unpatch); the rest completes"
    );
    disable("test_klp_callbacks_demo");
    settle::unload("target-module").expect("unloads");
    retire(&["test_klp_callbacks_demo"]);
}

// ---- test-sysfs.sh ----------------------------------------------------------

/// "sysfs test object/patched": a module object is patched while its
/// module is loaded and the patch enabled.
#[ktest]
fn test_sysfs_object_patched() {
    add_demo("test_klp_callbacks_demo", Callbacks::default());
    enable("test_klp_callbacks_demo").expect("enables");
    assert!(object_patched("test_klp_callbacks_demo", "vmlinux"));
    assert!(!object_patched("test_klp_callbacks_demo", "target-module"), "not loaded");
    settle::load(file("target-module")).expect("loads");
    assert!(object_patched("test_klp_callbacks_demo", "target-module"));
    settle::unload("target-module").expect("unloads");
    assert!(!object_patched("test_klp_callbacks_demo", "target-module"));
    disable("test_klp_callbacks_demo");
    assert!(!object_patched("test_klp_callbacks_demo", "vmlinux"));
    retire(&["test_klp_callbacks_demo"]);
}

// ---- The sample: a loadable module and a patch module for it ------------------

/// `hello-module-fix` (a patch module whose `object hello-module` line
/// names the target module) changes what the module's shell command says,
/// whether the module or the patch is loaded first.
#[ktest]
fn sample_hello_module_fix_patches_the_module_loaded_before_or_after_it() {
    use crate::module::commands;
    const ORIGINAL: &str = "hello from the hello-module target module\n";
    const FIXED: &str = "hello from the hello-module-fix live patch\n";
    settle::load(file("hello-module")).expect("loads");
    assert_eq!(commands::output_of("hello-module", "").as_deref(), Some(ORIGINAL));
    settle::load(file("hello-module-fix")).expect("the patch of a loaded module loads");
    assert_eq!(commands::output_of("hello-module", "").as_deref(), Some(FIXED));
    assert!(object_patched("hello-module-fix", "hello-module"));
    settle::unload("hello-module").expect("the patched module unloads");
    assert!(!object_patched("hello-module-fix", "hello-module"), "its object waits for the module again");
    settle::load(file("hello-module")).expect("loads again");
    assert_eq!(commands::output_of("hello-module", "").as_deref(), Some(FIXED), "patched as it loads");
    settle::unload("hello-module-fix").expect("the patch unloads");
    assert_eq!(commands::output_of("hello-module", "").as_deref(), Some(ORIGINAL));
    settle::unload("hello-module").expect("unloads");
}

/// Set by the test below: the thread it sends into busy-module leaves.
static INSIDE_STOP: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// A module whose unload was refused (a thread still inside) has exited:
/// a patch added then does not patch it, and its final unload leaves no
/// patched object behind (its object waits for the module's next load).
#[ktest]
fn a_patch_added_while_a_module_waits_to_unload_waits_for_its_next_load() {
    settle::load(file("busy-module")).expect("loads");
    let (entry, _) = module::resolve_function("busy-module", "busy_module_work", None).expect("resolves");
    // Safety: the global entry of `fn(&AtomicBool) -> u64` in the loaded module.
    let work: fn(&core::sync::atomic::AtomicBool) -> u64 = unsafe { core::mem::transmute(entry as usize) };
    INSIDE_STOP.store(false, Ordering::SeqCst);
    let inside = crate::thread::spawn("inside-busy-module", move || {
        work(&INSIDE_STOP);
    })
    .expect("spawns");
    crate::thread::sleep_milliseconds(30);
    assert!(matches!(module::unload("busy-module"), Err(LoadError::Busy(..))), "a thread is inside");
    let busy = vec![function("busy_module_work", patched_work as *const ())];
    klp::add(patch("late", vec![module_object("busy-module", busy, Callbacks::default())], false, &[])).expect("adds");
    enable("late").expect("enables");
    assert!(!object_patched("late", "busy-module"), "an exited module is not patched");
    // Nor is an object with callbacks only: its callbacks do not run.
    clear_events();
    klp::add(patch(
        "late-callbacks",
        vec![module_object("busy-module", Vec::new(), demo_module::CALLBACKS)],
        false,
        &[],
    ))
    .expect("adds");
    enable("late-callbacks").expect("enables");
    assert!(!object_patched("late-callbacks", "busy-module"));
    assert!(take_events().iter().all(|line| !line.contains("busy-module")), "no callback of the exited module ran");
    disable("late-callbacks");
    retire(&["late-callbacks"]);
    assert!(
        matches!(crate::trace::set_enabled(false), Err(crate::trace::FtraceError::Permanent(_))),
        "ftrace stays on while a patch is enabled, even one with nothing to redirect yet"
    );
    INSIDE_STOP.store(true, Ordering::SeqCst);
    crate::thread::wake_interruptible(inside.id);
    inside.join();
    settle::unload("busy-module").expect("unloads once the thread left");
    assert!(!object_patched("late", "busy-module"));
    disable("late");
    retire(&["late"]);
}

/// A module loading during an atomic replace's transition gets the replace
/// patch's NOP entries on the functions the replaced patches patch in it
/// (Linux's NOP objects for module objects): a switched thread runs the
/// module's original, as it does the kernel's.
#[ktest]
fn a_module_loading_during_an_atomic_replace_runs_its_original_for_switched_threads() {
    use super::livepatch::{first_g, replace_g, replace_window_g};
    let first = vec![
        kernel_object(
            vec![function("kernel::tests::selftests::livepatch::replace_window_g", first_g as *const ())],
            Callbacks::default(),
        ),
        module_object(
            "target-module",
            vec![function("target_module_value", patched_value as *const ())],
            Callbacks::default(),
        ),
    ];
    klp::add(patch("first", first, false, &[])).expect("adds");
    enable("first").expect("enables without its module");
    let replacing = vec![kernel_object(
        vec![function("kernel::tests::selftests::livepatch::replace_window_g", replace_g as *const ())],
        Callbacks::default(),
    )];
    klp::add(patch("replacing", replacing, true, &[])).expect("adds");
    let blocker = crate::thread::spawn_on(crate::arch::percpu::smp_processor_id(), "replace-blocker", || {
        replace_window_g();
    })
    .expect("room for a thread");
    while !crate::thread::snapshot()
        .iter()
        .any(|summary| summary.id == blocker.id && matches!(summary.state, crate::thread::State::Sleeping(_)))
    {
        crate::thread::sleep_milliseconds(1);
    }
    let Progress::Pending(_) = klp::enable("replacing").expect("enables") else {
        panic!("the thread asleep in the first patch's g holds the transition open");
    };
    module::load(file("target-module")).expect("loads during the replace's transition");
    assert_eq!(target_value(), TARGET_VALUE, "switched: the replace's NOP entry, the module's original");
    assert!(crate::thread::wake_interruptible(blocker.id));
    assert_eq!(blocker.join(), crate::thread::ExitStatus::Returned);
    if let Progress::Pending(blocked) = klp::wait_for_transition(5_000) {
        panic!("the transition stalled: {blocked:?}");
    }
    assert_eq!(target_value(), TARGET_VALUE, "completed: the original");
    assert!(!super::enabled("first"));
    settle::unload("target-module").expect("unloads");
    klp::remove("first").expect("replaced");
    disable("replacing");
    retire(&["replacing"]);
}
