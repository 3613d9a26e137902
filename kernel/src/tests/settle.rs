//! Test helpers that wait for live patch transitions to complete, however long the host keeps the guest's CPUs from running.
//!
//! `livepatch::enable`, `disable` and `module::unload` wait a while for the
//! transition they start and then return it pending (`Progress::Pending`,
//! `LoadError::InTransition`), the worker finishing it later. How long they
//! wait is `livepatch::transition_wait`: 100 ms (200 for an unload) unless the
//! boot argument `livepatch.transition_wait` says otherwise, and 0 in the
//! livepatch suite's run on its slow paths. A test that needs a transition
//! complete before it goes on waits here, not on those figures: on a busy
//! host a transition nothing holds open can still take longer than 100 ms
//! (a preempted thread switches only at its next safe point).
//!
//! Each helper first waits for a transition left in progress (a call refused
//! with `TransitionInProgress` because an earlier one is still pending would
//! say nothing about the call), then makes its call, then waits for the
//! transition it started. A test that holds a transition open on purpose
//! calls `livepatch` and `module` itself.
use crate::livepatch::{self, LivepatchError, Progress};
use crate::module::{self, LoadError};
use alloc::string::String;

/// How long a test waits for a transition that nothing holds open.
pub const SETTLE_MILLISECONDS: u64 = 10_000;

/// Waits for the transition in progress, if any, to complete; panics naming
/// its blockers after `SETTLE_MILLISECONDS`.
#[track_caller]
pub fn wait() {
    if let Progress::Pending(blocked) = livepatch::wait_for_transition(SETTLE_MILLISECONDS) {
        panic!("the transition stalled for {SETTLE_MILLISECONDS} ms: {blocked:?}");
    }
}

/// Waits for the transition in progress (see `wait`), then until the worker
/// that retried it, if one was started, has ended and its stack is freed: a
/// test that compares heap usage before and after calls this before each.
#[track_caller]
pub fn worker_gone() {
    wait();
    let started = crate::arch::registers::timebase();
    while crate::thread::snapshot().iter().any(|thread| thread.name == livepatch::WORKER_NAME) {
        let waited = crate::arch::registers::timebase() - started;
        assert!(
            waited < crate::time::milliseconds_to_timebase(SETTLE_MILLISECONDS),
            "the transition worker was still there after {SETTLE_MILLISECONDS} ms"
        );
        crate::thread::sleep_milliseconds(1);
    }
}

/// Waits for the transition that `progress` reported pending (see `wait`).
#[track_caller]
pub fn settle(progress: Progress) {
    if let Progress::Pending(_) = progress {
        wait();
    }
}

/// Enables `name` and waits for its transition to complete.
#[track_caller]
pub fn enable(name: &str) -> Result<(), LivepatchError> {
    wait();
    settle(livepatch::enable(name)?);
    Ok(())
}

/// Disables `name` and waits for its transition to complete.
#[track_caller]
pub fn disable(name: &str) -> Result<(), LivepatchError> {
    wait();
    settle(livepatch::disable(name)?);
    Ok(())
}

/// Loads a patch module and waits for its enable transition to complete.
#[track_caller]
pub fn load(file: &[u8]) -> Result<String, LoadError> {
    wait();
    let name = module::load(file)?;
    wait();
    Ok(name)
}

/// Unloads a patch module, waiting (see `wait`) while its disable
/// transition is still pending (`InTransition`); any other error is returned.
#[track_caller]
pub fn unload(name: &str) -> Result<(), LoadError> {
    wait();
    match module::unload(name) {
        Err(LoadError::InTransition(..)) => {
            wait();
            module::unload(name)
        }
        other => other,
    }
}
