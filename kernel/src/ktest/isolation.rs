//! Test isolation: whatever a test left registered (ftrace ops, probes, live patches, modules, tick jitter, ftrace off) is undone after it, whether it passed or failed.
use crate::livepatch::{self, LivepatchError, PlanError};
use crate::{module, trace};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

/// What was registered before a test ran.
pub struct Registrations {
    ops: Vec<&'static str>,
    /// Patch names and whether each was enabled.
    patches: Vec<(String, bool)>,
    modules: Vec<String>,
}

/// Takes the picture a test's leftovers are measured against.
pub fn snapshot() -> Registrations {
    Registrations {
        ops: trace::registered(),
        patches: livepatch::list().into_iter().map(|patch| (patch.name, patch.enabled)).collect(),
        modules: module::summaries().into_iter().map(|(name, ..)| name).collect(),
    }
}

/// Puts everything back as it was in `before`: unloads new modules, removes
/// new patches, re-enables or disables the old ones, stops tracers and
/// unregisters ops added since. Returns one line per thing it had to undo.
pub fn restore(before: &Registrations) -> Vec<String> {
    let mut undone = Vec::new();
    crate::time::set_jitter(0);
    livepatch::IMMEDIATE.store(false, core::sync::atomic::Ordering::Relaxed);
    settle(&mut undone);
    for name in module::summaries().into_iter().map(|(name, ..)| name) {
        if !before.modules.contains(&name) {
            let mut result = module::unload(&name);
            if matches!(result, Err(module::LoadError::InTransition(..))) {
                settle(&mut undone);
                result = module::unload(&name);
            }
            undone.push(format!("module {name} (unload: {})", outcome(result.map_err(|error| format!("{error:?}")))));
        }
    }
    for patch in livepatch::list() {
        match before.patches.iter().find(|(name, _)| *name == patch.name) {
            None => {
                let disabled = match livepatch::disable(&patch.name) {
                    Ok(_) | Err(LivepatchError::Plan(PlanError::NotEnabled(_))) => Ok(()),
                    Err(error) => Err(format!("{error:?}")),
                };
                settle(&mut undone);
                let removed = disabled
                    .and_then(|()| livepatch::remove(&patch.name).map(drop).map_err(|error| format!("{error:?}")));
                undone.push(format!("live patch {} (remove: {})", patch.name, outcome(removed)));
            }
            Some((_, enabled)) if *enabled != patch.enabled => {
                let result =
                    if *enabled { livepatch::enable(&patch.name) } else { livepatch::disable(&patch.name) }.map(drop);
                settle(&mut undone);
                let verb = if *enabled { "enable again" } else { "disable again" };
                undone.push(format!(
                    "live patch {} state ({verb}: {})",
                    patch.name,
                    outcome(result.map_err(|error| format!("{error:?}")))
                ));
            }
            Some(_) => {}
        }
    }
    // Probes before the ops loop: it would unregister their ops behind the probes' table.
    for probe in trace::probe::remove_all() {
        undone.push(format!("probe {probe}"));
    }
    if !trace::enabled() {
        let result = trace::set_enabled(true).map_err(|error| format!("{error}"));
        undone.push(format!("ftrace off (on again: {})", outcome(result)));
    }
    for ops in trace::registered_ops() {
        // The livepatch core's own ops comes and goes with the patches restored above.
        if before.ops.contains(&ops.name) || ops.name == "livepatch" {
            continue;
        }
        let result = if core::ptr::eq(ops, &trace::graph::GRAPH_OPS) {
            trace::graph::stop()
        } else if core::ptr::eq(ops, &trace::function::FUNCTION_OPS) {
            trace::function::stop()
        } else {
            trace::unregister(ops)
        };
        undone.push(format!(
            "ftrace ops {} (unregister: {})",
            ops.name,
            outcome(result.map_err(|error| format!("{error:?}")))
        ));
    }
    worker_gone();
    undone
}

/// Waits (up to 1 s) until the transition worker a test's last transition
/// may have started has ended and its stack is freed: the next test's heap
/// baseline must not count it.
fn worker_gone() {
    let deadline = crate::arch::registers::timebase() + crate::time::milliseconds_to_timebase(1000);
    while crate::thread::snapshot().iter().any(|thread| thread.name == livepatch::WORKER_NAME)
        && crate::arch::registers::timebase() < deadline
    {
        crate::thread::sleep_milliseconds(1);
    }
}

/// Waits for a transition in progress, forcing it after 500 ms (and then
/// forgetting that it was forced, so that its module can still be unloaded):
/// the next test must start without one.
fn settle(undone: &mut Vec<String>) {
    if let livepatch::Progress::Pending(blocked) = livepatch::wait_for_transition(500)
        && let Some(status) = livepatch::status()
    {
        let forced = livepatch::force(&status.patch).map_err(|error| format!("{error}"));
        livepatch::forget_forced(&status.patch);
        undone.push(format!(
            "live patch {} transition (blocked by {} threads, first: {}; force: {})",
            status.patch,
            blocked.len(),
            blocked.first().map_or_else(String::new, |blocked| format!("{blocked}")),
            outcome(forced)
        ));
    }
}

fn outcome(result: Result<(), String>) -> String {
    match result {
        Ok(()) => String::from("done"),
        Err(error) => format!("failed: {error}"),
    }
}
