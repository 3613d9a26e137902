//! The livepatch core's one IPMODIFY ftrace ops, and the table its handler reads.
//!
//! Every replaced function is claimed by this single ops (so no other
//! IPMODIFY user can take it). The handler looks the traced site up in a
//! sorted table of `Redirect`s and sends the call to the replacement with
//! `klp_arch_set_pc` (which sends it through `livepatch_handler`). During a
//! transition (`transition.rs`) the transitioning patch's entries say so,
//! and the handler picks per thread (Linux's `klp_ftrace_handler` with
//! `func->transition`): a thread whose `patch_state` is unpatched gets the
//! replacement below the patch's, or the original code.
//!
//! Memory ordering: a transition writes every thread's `patch_state` before
//! it publishes the table that marks the entries (`Published`: a release
//! store; the handler's load of the table is an acquire), so a handler that
//! sees the mark sees the state written for its thread then, or one its
//! thread wrote since (its own safe point), or one the transition wrote
//! while the thread was switched out (under the scheduler lock, which the
//! thread's switch in takes after). At the end the table without marks is
//! published before the states are cleared, after a grace period: no
//! handler still reading the marked table reads a cleared state. Only this handler sends calls through
//! `livepatch_handler`, so another handler that redirects a call is never
//! taken for a livepatch (what decides is where the call is sent, not
//! whether it was redirected). One shared ops keeps the traced call cheap
//! however many functions are patched: a direct call and a binary search,
//! not a walk over one ops per function.
//!
//! A function whose entry is not marked and that nothing else traces skips
//! all of this: its site branches straight to a trampoline for its
//! replacement (`direct`); its entry stays in the table for the calls that
//! meet the site's stub (before the switch, or while another ops traces it).
use super::Stack;
use crate::arch::livepatch::klp_arch_set_pc;
use crate::sync::{NonPreemptibleReaders, Published};
use crate::trace::{self, Filter, FtraceError, FtraceOps, FtraceRegs, OpsFlags};
use alloc::vec::Vec;
use macros::notrace;
use portable::site_table::search_by;

/// The livepatch core's ftrace ops.
pub static LIVEPATCH_OPS: FtraceOps = FtraceOps::new(
    super::LIVEPATCH_OPS_NAME,
    livepatch_ftrace_handler,
    OpsFlags::IPMODIFY.union(OpsFlags::RECURSION_SAFE).union(OpsFlags::PERMANENT),
);

/// Where the calls of one patched function go.
#[repr(C)]
struct Redirect {
    /// The function's ftrace site (the table is sorted by it).
    site: u64,
    /// The topmost replacement's global entry, or 0 (`NOP`: the original
    /// code), which only a marked entry has (see the handler).
    new: u64,
    /// For a thread still unpatched while `transition` is set: the replacement
    /// below (its global entry), or 0 for the original code.
    previous: u64,
    /// Nonzero while the topmost replacement's patch is in transition.
    transition: u64,
}

/// `Redirect`s sorted by site.
struct Targets {
    pairs: Vec<Redirect>,
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
    let found = search_by(pairs.len(), ip, |index| unsafe { pairs.get_unchecked(index).site });
    if let Some(index) = found {
        let redirect = unsafe { pairs.get_unchecked(index) };
        let mut target = redirect.new;
        if redirect.transition != 0 {
            // The thread this CPU runs (also when an interrupt handler on its
            // stack or on the emergency stack calls the function): the table's
            // acquire load orders this read after the states the transition
            // wrote before publishing it (see the module comment).
            let info = crate::arch::registers::per_cpu().current_thread as *const crate::thread::ThreadInfo;
            // Safety: the running thread's stack base holds its thread_info.
            if unsafe { core::ptr::read_volatile(&raw const (*info).patch_state) } == super::transition::UNPATCHED {
                target = redirect.previous;
            }
            if target == 0 {
                // The original code (below the first patch, or, for a
                // switched thread, an atomic replace's NOP entry, which
                // exists only during its transition and so is always
                // marked): the call goes on into the traced function.
                return;
            }
        }
        klp_arch_set_pc(regs, target);
    }
}

/// Makes every function in `functions` run its newest replacement, and every
/// other function its original code; the functions whose newest replacement
/// belongs to patch `transition` run it only in threads whose `patch_state`
/// is not unpatched (the others run the one below). Either all of it takes
/// effect or, on error, nothing does. Call with preemption off.
/// The functions whose answer is the same for every thread (no transition)
/// and that nothing else traces are then called directly (`direct`).
pub fn apply(functions: &[(u64, Stack)], transition: Option<u64>) -> Result<(), FtraceError> {
    let table = table(functions, transition);
    let wanted = wanted(&table);
    // Sites leaving direct calls go back to the stub while the table that
    // agrees with their trampolines is still the one published.
    super::direct::leave(&wanted)?;
    let previous = TARGETS.replace_retaining(table);
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
            super::direct::reclaim();
            super::direct::enter(&wanted);
            Ok(())
        }
        Err(error) => {
            previous.restore();
            super::direct::reclaim();
            // The table as it was: its final functions go direct again (a
            // failure leaves them on the generic path, which is correct).
            if let Err(undo) = reconcile_direct() {
                crate::println!("klp: direct calls not restored after a failed change ({undo})");
            }
            Err(error)
        }
    }
}

/// Publishes the table for `functions` (as `apply`) when their ftrace
/// registration stays as it is (the same functions as the table it
/// replaces): a transition's marks come or go. Returns after the grace
/// period of the table it replaced. On error (a direct site could not go
/// back to the stub) nothing changed.
pub fn publish(functions: &[(u64, Stack)], transition: Option<u64>) -> Result<(), FtraceError> {
    let table = table(functions, transition);
    let wanted = wanted(&table);
    super::direct::leave(&wanted)?;
    drop(TARGETS.replace_retaining(table));
    super::direct::reclaim();
    super::direct::enter(&wanted);
    Ok(())
}

/// Makes the direct calls match the published table and `direct::enabled`
/// (after direct calls were switched on or off). Call with the livepatch
/// lock held.
pub fn reconcile_direct() -> Result<(), FtraceError> {
    let wanted = {
        let _preempt = crate::thread::preempt_disable();
        // Safety: preemption is off while the table is read (`NonPreemptibleReaders`).
        wanted(unsafe { TARGETS.read() })
    };
    super::direct::leave(&wanted)?;
    super::direct::reclaim();
    super::direct::enter(&wanted);
    Ok(())
}

/// (site, replacement) of the functions of `targets` that can be called
/// directly: not in transition (one answer for every thread), not a NOP
/// entry; none while direct calls are off.
fn wanted(targets: &Targets) -> Vec<(u64, u64)> {
    if !super::direct::enabled() {
        return Vec::new();
    }
    targets
        .pairs
        .iter()
        .filter(|redirect| redirect.transition == 0 && redirect.new != 0)
        .map(|redirect| (redirect.site, redirect.new))
        .collect()
}

/// The handler's table for `functions`, with the functions whose topmost
/// replacement belongs to patch `transition` marked.
fn table(functions: &[(u64, Stack)], transition: Option<u64>) -> Targets {
    // Sites follow their functions' entries, so this is already sorted by
    // site, as the handler's binary search needs (checked in debug builds).
    let pairs: Vec<Redirect> = functions
        .iter()
        .filter_map(|(_, stack)| match stack.replacements.as_slice() {
            [below @ .., (patch, new)] => Some(Redirect {
                site: stack.site,
                new: *new,
                previous: below.last().map_or(0, |(_, previous)| *previous),
                transition: u64::from(Some(*patch) == transition),
            }),
            [] => None,
        })
        .collect();
    debug_assert!(pairs.is_sorted_by_key(|redirect| redirect.site), "the redirect table is searched by site");
    // The handler looks for a 0 target only in marked entries.
    debug_assert!(
        pairs.iter().all(|redirect| redirect.new != 0 || redirect.transition != 0),
        "an atomic replace's NOP entries exist only during its transition"
    );
    Targets { pairs }
}
