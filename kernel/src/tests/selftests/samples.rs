//! The sample patch modules of callbacks, system states and atomic replace, loaded and unloaded as a user would.
use super::super::settle;
use crate::livepatch;
use crate::module::embedded;
use crate::shell;
use macros::ktest;

fn file(name: &str) -> &'static [u8] {
    embedded::find(name).unwrap_or_else(|| panic!("the test kernel embeds the sample '{name}'"))
}

/// `cumulative` takes over from `greeting` and `ten`: `hello` says its
/// text, `klp_demo_ten` is back at its original code, the replaced patches
/// are disabled and their modules unload.
#[ktest]
fn sample_cumulative_module_replaces_the_patches_loaded_before_it() {
    let original_ten = crate::livepatch::api::klp_demo_ten(1, 2, 3, 4, 5, 6, 7, 8, 9, 10);
    settle::load(file("greeting")).expect("loads");
    settle::load(file("ten")).expect("loads");
    assert_ne!(crate::livepatch::api::klp_demo_ten(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), original_ten, "ten is patched");
    settle::load(file("cumulative")).expect("loads");
    assert_eq!(shell::greeting(), "hello from the cumulative patch module");
    assert_eq!(crate::livepatch::api::klp_demo_ten(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), original_ten, "NOP: original");
    let list = livepatch::list();
    let enabled = |name: &str| list.iter().find(|patch| patch.name == name).map(|patch| patch.enabled);
    assert_eq!((enabled("greeting"), enabled("ten"), enabled("cumulative")), (Some(false), Some(false), Some(true)));
    assert!(list.iter().any(|patch| patch.name == "cumulative" && patch.replace));
    settle::unload("greeting").expect("a replaced patch's module unloads");
    settle::unload("ten").expect("a replaced patch's module unloads");
    assert_eq!(shell::greeting(), "hello from the cumulative patch module", "unloading them changed nothing");
    settle::unload("cumulative").expect("unloads");
    assert_ne!(shell::greeting(), "hello from the cumulative patch module");
}

/// `states` records the tick it was installed at in state 1; loaded again
/// as a cumulative patch over itself it would take the value over (here:
/// the state is there, versioned, and its data was set by the callback).
#[ktest]
fn sample_states_module_keeps_its_data_in_its_system_state() {
    settle::load(file("states")).expect("loads");
    let state = livepatch::callbacks::get_state("states", 1).expect("the patch declares state 1");
    assert_eq!(state.version, 1);
    let since = livepatch::callbacks::data(state);
    assert!(since > 0, "the pre-patch callback (a module function) stored the tick");
    assert_eq!(shell::greeting(), alloc::format!("hello, state 1 installed at tick {since}"));
    settle::unload("states").expect("unloads");
    assert!(livepatch::callbacks::get_state("states", 1).is_none(), "the state goes with the patch");
}

/// `callbacks` loads with its four module callbacks resolved, and unloads.
#[ktest]
fn sample_callbacks_module_loads_and_unloads() {
    settle::load(file("callbacks")).expect("loads");
    assert_eq!(shell::greeting(), "hello from the callbacks patch module");
    settle::unload("callbacks").expect("unloads");
}

/// Plus (issue 14): the callbacks and states of patch modules through 100
/// load/unload rounds (`states` over `callbacks`: a cumulative patch with a
/// state and a module callback, replacing one with four), the heap back to
/// its baseline.
#[ktest]
fn callback_and_state_modules_loaded_and_unloaded_100_times_return_all_memory() {
    let round = || {
        settle::load(file("callbacks")).expect("loads");
        settle::load(file("states")).expect("loads");
        // Not `hello`: each round's text (its tick) would be a new interned copy, kept for good.
        assert!(
            livepatch::callbacks::get_state("states", 1).is_some_and(|state| livepatch::callbacks::data(state) > 0)
        );
        assert!(livepatch::list().iter().any(|patch| patch.name == "callbacks" && !patch.enabled), "replaced");
        settle::unload("callbacks").expect("a replaced patch's module unloads");
        settle::unload("states").expect("unloads");
    };
    // Warm up: lasting first-use allocations (interned texts, list buffers) are not leaks.
    round();
    // Settle: the stacks of threads that ended before (an earlier test's, a
    // transition worker's) are freed at a later switch; freed during the
    // rounds they would look like memory given back by them.
    for _ in 0..5 {
        crate::thread::sleep_milliseconds(10);
    }
    settle::worker_gone();
    let (before, _) = crate::memory::usage();
    for _ in 0..100 {
        round();
    }
    settle::worker_gone();
    assert_eq!(crate::memory::usage().0, before, "heap usage back to where it started");
}
