//! The livepatch core's one IPMODIFY ftrace ops, and the table its handler reads.
//!
//! Every replaced function is claimed by this single ops (so no other
//! IPMODIFY user can take it). The handler looks the traced site up in a
//! sorted (site, replacement) table and sets `nip` to the replacement's
//! global entry with `FtraceRegs::REDIRECT`, so `ftrace_caller` leaves
//! through `livepatch_handler`. Only this handler sets the flag: another
//! NIP-modifying handler is never taken for a livepatch (decided by who
//! changed nip, not by whether it changed). One shared ops keeps the traced
//! call cheap however many functions are patched: a direct call and a
//! binary search, not a walk over one ops per function.
use crate::trace::{self, Filter, FtraceError, FtraceOps, FtraceRegs, OpsFlags};
use alloc::boxed::Box;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicPtr, Ordering};
use macros::notrace;

/// The livepatch core's ftrace ops.
pub static LIVEPATCH_OPS: FtraceOps =
    FtraceOps::new("livepatch", livepatch_ftrace_handler, OpsFlags::IPMODIFY.union(OpsFlags::RECURSION_SAFE));

/// Site addresses (sorted) and, at the same index, the replacement to run.
struct Targets {
    sites: Vec<u64>,
    replacements: Vec<u64>,
}

static TARGETS: AtomicPtr<Targets> = AtomicPtr::new(core::ptr::null_mut());

#[notrace]
extern "C" fn livepatch_ftrace_handler(ip: u64, _parent_ip: u64, _ops: &FtraceOps, regs: &mut FtraceRegs) {
    let targets = TARGETS.load(Ordering::Acquire);
    if targets.is_null() {
        return;
    }
    // Safety: published by `publish`, freed only after being replaced, with
    // preemption off on this one CPU, while no handler runs.
    let targets = unsafe { &*targets };
    if let Some(index) = trace::search_sorted(&targets.sites, ip) {
        regs.regs.nip = targets.replacements[index];
        regs.flags |= FtraceRegs::REDIRECT;
    }
}

/// Makes calls of each function (global entry) in `redirects` go to its
/// replacement, and every other function run its original code. Either all
/// of it takes effect or, on error, nothing does. Call with preemption off.
pub fn apply(redirects: &[(u64, u64)]) -> Result<(), FtraceError> {
    let mut pairs: Vec<(u64, u64)> = redirects
        .iter()
        .map(|&(old, new)| (trace::function_of_entry(old).ok_or(FtraceError::NotTraceable(old)), new))
        .map(|(site, new)| site.map(|site| (site, new)))
        .collect::<Result<_, _>>()?;
    pairs.sort_unstable();
    let previous = publish(Targets {
        sites: pairs.iter().map(|(site, _)| *site).collect(),
        replacements: pairs.iter().map(|(_, new)| *new).collect(),
    });
    let functions: Vec<u64> = redirects.iter().map(|(old, _)| *old).collect();
    let result = if functions.is_empty() {
        if trace::registered().contains(&LIVEPATCH_OPS.name) { trace::unregister(&LIVEPATCH_OPS) } else { Ok(()) }
    } else {
        trace::update(&LIVEPATCH_OPS, Filter::Addresses(&functions)).map(|_| ())
    };
    match result {
        Ok(()) => {
            free(previous);
            Ok(())
        }
        Err(error) => {
            free(publish_raw(previous));
            Err(error)
        }
    }
}

fn publish(targets: Targets) -> *mut Targets {
    publish_raw(Box::into_raw(Box::new(targets)))
}

fn publish_raw(targets: *mut Targets) -> *mut Targets {
    TARGETS.swap(targets, Ordering::AcqRel)
}

fn free(targets: *mut Targets) {
    if !targets.is_null() {
        // Safety: from Box::into_raw in `publish`, no longer published, and no
        // handler is running (preemption off, one CPU).
        drop(unsafe { Box::from_raw(targets) });
    }
}
