//! test-state.sh: a system state a patch's callbacks change and restore, taken over by a cumulative patch, and version checks.
use super::{disable, enable, function, kernel_object, patch, retire};
use crate::livepatch::callbacks::{self, KlpState};
use crate::livepatch::{self as klp, Callbacks, LivepatchError, PlanError};
use crate::memory;
use alloc::boxed::Box;
use alloc::vec;
use core::hint::black_box;
use core::sync::atomic::{AtomicU64, Ordering};
use macros::{ktest, livepatchable};

/// Linux's `console_loglevel`, the system state the test patches change.
static LOGLEVEL: AtomicU64 = AtomicU64::new(7);
/// The level the patches set (Linux's CONSOLE_LOGLEVEL_MOTORMOUTH).
const PATCHED_LEVEL: u64 = 15;
/// The state's id (Linux's CONSOLE_LOGLEVEL_STATE).
const STATE: u64 = 1;

/// The function the state patches replace (any will do: the state is the point).
#[livepatchable]
pub fn state_target() -> u64 {
    black_box(1)
}

fn replacement() -> u64 {
    black_box(2)
}

/// The state of `patch` (it declares it).
fn state_of(patch: &str) -> &'static KlpState {
    callbacks::get_state(patch, STATE).expect("the patch declares the state")
}

/// Pre-patch: takes the saved level over from the previous patch, or saves
/// the current one in a fresh allocation (Linux's `allocate_loglevel_state`).
fn pre_patch(patch: &str) -> i32 {
    let state = state_of(patch);
    match callbacks::get_previous_state(patch, STATE) {
        Some(previous) => callbacks::set_data(state, callbacks::data(previous)),
        None => {
            let saved = Box::into_raw(Box::new(LOGLEVEL.load(Ordering::SeqCst)));
            callbacks::set_data(state, saved as u64);
        }
    }
    0
}

/// Post-patch: changes the level, unless a previous patch did already.
fn post_patch(patch: &str) {
    if callbacks::get_previous_state(patch, STATE).is_none() {
        LOGLEVEL.store(PATCHED_LEVEL, Ordering::SeqCst);
    }
}

/// Pre-unpatch: restores the saved level.
fn pre_unpatch(patch: &str) {
    // Safety: set by pre_patch to a boxed u64 that only post_unpatch frees.
    LOGLEVEL.store(unsafe { *(callbacks::data(state_of(patch)) as *const u64) }, Ordering::SeqCst);
}

/// Post-unpatch: frees the saved level.
fn post_unpatch(patch: &str) {
    let state = state_of(patch);
    // Safety: as above; taken out of the state first.
    drop(unsafe { Box::from_raw(callbacks::data(state) as *mut u64) });
    callbacks::set_data(state, 0);
}

/// The callbacks of a state patch named `$patch`, in `mod $module`.
macro_rules! state_callbacks {
    ($module:ident, $patch:literal) => {
        mod $module {
            pub const NAME: &str = $patch;
            extern "C" fn pre_patch(_: *const u8, _: usize) -> i32 {
                super::pre_patch(NAME)
            }
            extern "C" fn post_patch(_: *const u8, _: usize) -> i32 {
                super::post_patch(NAME);
                0
            }
            extern "C" fn pre_unpatch(_: *const u8, _: usize) -> i32 {
                super::pre_unpatch(NAME);
                0
            }
            extern "C" fn post_unpatch(_: *const u8, _: usize) -> i32 {
                super::post_unpatch(NAME);
                0
            }
            pub const CALLBACKS: crate::livepatch::Callbacks = crate::livepatch::Callbacks {
                pre_patch: Some(pre_patch),
                post_patch: Some(post_patch),
                pre_unpatch: Some(pre_unpatch),
                post_unpatch: Some(post_unpatch),
            };
        }
    };
}

state_callbacks!(state1, "test_klp_state");
state_callbacks!(state2, "test_klp_state2");
state_callbacks!(state3, "test_klp_state3");

/// Adds a state patch (all are cumulative, as Linux's test_klp_state*).
fn add_state_patch(name: &str, callbacks: Callbacks, version: u64) {
    let functions = vec![function("kernel::tests::selftests::state::state_target", replacement as *const ())];
    klp::add(patch(name, vec![kernel_object(functions, callbacks)], true, &[(STATE, version)])).expect("adds");
}

/// "system state modification": the patch's callbacks change the level
/// and restore it, and free what they allocated.
#[ktest]
fn test_state_system_state_modification() {
    add_state_patch(state1::NAME, state1::CALLBACKS, 1);
    enable(state1::NAME).expect("enables");
    assert_eq!(LOGLEVEL.load(Ordering::SeqCst), PATCHED_LEVEL);
    assert_eq!(callbacks::get_state(state1::NAME, STATE).map(|state| state.version), Some(1));
    assert!(callbacks::get_state(state1::NAME, STATE + 1).is_none(), "an undeclared state is absent");
    disable(state1::NAME);
    assert_eq!(LOGLEVEL.load(Ordering::SeqCst), 7);
    retire(&[state1::NAME]);
}

/// "taking over system state modification": a cumulative patch takes the
/// saved level over; the replaced patch's callbacks do not run, so the
/// level stays changed until the new patch restores it.
#[ktest]
fn test_state_taking_over_system_state_modification() {
    add_state_patch(state1::NAME, state1::CALLBACKS, 1);
    add_state_patch(state2::NAME, state2::CALLBACKS, 1);
    enable(state1::NAME).expect("enables");
    let saved = callbacks::data(callbacks::get_state(state1::NAME, STATE).expect("declared"));
    enable(state2::NAME).expect("a cumulative patch with the same state version is compatible");
    assert_eq!(callbacks::data(state_of(state2::NAME)), saved, "the second patch took the saved level over");
    assert_eq!(LOGLEVEL.load(Ordering::SeqCst), PATCHED_LEVEL, "still changed: no unpatch callback of the first ran");
    klp::remove(state1::NAME).expect("the replaced patch can go");
    disable(state2::NAME);
    assert_eq!(LOGLEVEL.load(Ordering::SeqCst), 7, "restored by the second patch");
    retire(&[state2::NAME]);
}

/// "compatible cumulative livepatches": the same or a newer version of the
/// state is accepted.
#[ktest]
fn test_state_compatible_cumulative_livepatches() {
    add_state_patch(state2::NAME, state2::CALLBACKS, 1);
    add_state_patch(state3::NAME, state3::CALLBACKS, 2);
    enable(state2::NAME).expect("enables");
    enable(state3::NAME).expect("version 2 over version 1 is compatible");
    assert_eq!(LOGLEVEL.load(Ordering::SeqCst), PATCHED_LEVEL);
    klp::remove(state2::NAME).expect("replaced");
    add_state_patch(state2::NAME, state2::CALLBACKS, 2);
    enable(state2::NAME).expect("the same version again is compatible");
    klp::remove(state3::NAME).expect("replaced");
    disable(state2::NAME);
    assert_eq!(LOGLEVEL.load(Ordering::SeqCst), 7);
    retire(&[state2::NAME]);
}

/// "incompatible cumulative livepatches": a cumulative patch that would
/// downgrade the state, or drop it, is refused with a clear error and
/// nothing changes.
#[ktest]
fn test_state_incompatible_cumulative_livepatches() {
    add_state_patch(state3::NAME, state3::CALLBACKS, 2);
    add_state_patch(state2::NAME, state2::CALLBACKS, 1);
    let functions = vec![function("kernel::tests::selftests::state::state_target", replacement as *const ())];
    klp::add(patch("stateless", vec![kernel_object(functions, Callbacks::default())], true, &[])).expect("adds");
    enable(state3::NAME).expect("enables");
    match super::enable(state2::NAME) {
        Err(LivepatchError::Plan(PlanError::StateDowngraded {
            id, version: 1, installed: 2, installed_by, ..
        })) => {
            assert_eq!((id, installed_by.as_str()), (STATE, state3::NAME));
        }
        other => panic!("expected a refused downgrade, got {other:?}"),
    }
    match super::enable("stateless") {
        Err(LivepatchError::Plan(PlanError::StateDropped { id, installed_by, .. })) => {
            assert_eq!((id, installed_by.as_str()), (STATE, state3::NAME));
        }
        other => panic!("expected a refused drop, got {other:?}"),
    }
    assert!(super::enabled(state3::NAME) && !super::enabled(state2::NAME) && !super::enabled("stateless"));
    assert_eq!(LOGLEVEL.load(Ordering::SeqCst), PATCHED_LEVEL, "no callback of the refused patches ran");
    assert_eq!(state_target(), 2);
    disable(state3::NAME);
    retire(&[state3::NAME, state2::NAME, "stateless"]);
}

/// Plus (issue 14): callbacks and states through 100 rounds of add, enable,
/// take over, disable, remove, with the heap back to where it started.
#[ktest]
fn callbacks_and_states_survive_100_rounds_with_the_heap_back_to_baseline() {
    let round = || {
        add_state_patch(state1::NAME, state1::CALLBACKS, 1);
        add_state_patch(state2::NAME, state2::CALLBACKS, 1);
        enable(state1::NAME).expect("enables");
        enable(state2::NAME).expect("takes over");
        klp::remove(state1::NAME).expect("replaced");
        disable(state2::NAME);
        retire(&[state2::NAME]);
        assert_eq!(LOGLEVEL.load(Ordering::SeqCst), 7);
    };
    // Warm up: the first round's lasting allocations (the lists' buffers) are not leaks.
    round();
    // Settle: a thread that ended before (an earlier test's) has its stack
    // freed at a later switch, which would look like memory the rounds gave back.
    for _ in 0..5 {
        crate::thread::sleep_milliseconds(10);
    }
    super::super::settle::worker_gone();
    let (heap, _) = memory::usage();
    for _ in 0..100 {
        round();
    }
    super::super::settle::worker_gone();
    assert_eq!(memory::usage().0, heap, "heap usage back to where it started");
}
