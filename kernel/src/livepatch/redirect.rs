//! The livepatch core's one IPMODIFY ftrace ops, and the table its handler reads.
//!
//! Every replaced function is claimed by this single ops (so no other
//! IPMODIFY user can take it). The handler looks the traced site up in a
//! sorted (site, replacement) table and redirects the call to the
//! replacement with `klp_arch_set_pc` (which sends it through
//! `livepatch_handler`). Only this handler sends calls through
//! `livepatch_handler`, so another handler that redirects a call is never
//! taken for a livepatch (what decides is where the call is sent, not
//! whether it was redirected). One shared ops keeps the traced call cheap
//! however many functions are patched: a direct call and a binary search,
//! not a walk over one ops per function.
use super::Stack;
use crate::arch::livepatch::klp_arch_set_pc;
use crate::sync::{NonPreemptibleReaders, Published};
use crate::trace::{self, Filter, FtraceError, FtraceOps, FtraceRegs, OpsFlags};
use alloc::vec::Vec;
use macros::notrace;
use portable::site_table::search_by;

/// The livepatch core's ftrace ops.
pub static LIVEPATCH_OPS: FtraceOps =
    FtraceOps::new("livepatch", livepatch_ftrace_handler, OpsFlags::IPMODIFY.union(OpsFlags::RECURSION_SAFE));

/// (site, replacement) pairs sorted by site.
struct Targets {
    pairs: Vec<(u64, u64)>,
}

/// The table before the first patch.
static NO_TARGETS: Targets = Targets { pairs: Vec::new() };

/// The table the handler searches; replaced by `apply`, under the livepatch lock.
static TARGETS: Published<Targets> = Published::new(&NO_TARGETS, NonPreemptibleReaders);

/// Runs on every call of a patched function: kept a leaf with no bounds
/// checks (the search stays within the table), so it needs no stack frame.
#[notrace]
extern "C" fn livepatch_ftrace_handler(ip: u64, _parent_ip: u64, _ops: &FtraceOps, regs: &mut FtraceRegs) {
    // The table is published before the sites that lead here are switched on.
    // Safety: a handler, which the scheduler does not preempt: a read-side
    // section (`NonPreemptibleReaders`).
    let pairs = unsafe { &TARGETS.read().pairs };
    // Safety (both reads): `search_by` asks only for indices below the length.
    let found = search_by(pairs.len(), ip, |index| unsafe { pairs.get_unchecked(index).0 });
    if let Some(index) = found {
        klp_arch_set_pc(regs, unsafe { pairs.get_unchecked(index).1 });
    }
}

/// Makes every function in `functions` run its newest replacement, and every
/// other function its original code. Either all of it takes effect or, on
/// error, nothing does. Call with preemption off.
pub fn apply(functions: &[(u64, Stack)]) -> Result<(), FtraceError> {
    // Sites follow their functions' entries, so this is already sorted by
    // site, as the handler's binary search needs (checked in debug builds).
    let pairs: Vec<(u64, u64)> = functions
        .iter()
        .filter_map(|(_, stack)| stack.replacements.last().map(|(_, new)| (stack.site, *new)))
        .collect();
    debug_assert!(pairs.is_sorted_by_key(|(site, _)| *site), "the redirect table is searched by site");
    let previous = TARGETS.replace_retaining(Targets { pairs });
    let entries: Vec<u64> =
        functions.iter().filter(|(_, stack)| !stack.replacements.is_empty()).map(|(entry, _)| *entry).collect();
    let result = if entries.is_empty() {
        if trace::registered().contains(&LIVEPATCH_OPS.name) { trace::unregister(&LIVEPATCH_OPS) } else { Ok(()) }
    } else {
        trace::update(&LIVEPATCH_OPS, Filter::Addresses(&entries)).map(|_| ())
    };
    match result {
        Ok(()) => {
            // Freed after the grace period.
            drop(previous);
            Ok(())
        }
        Err(error) => {
            previous.restore();
            Err(error)
        }
    }
}
