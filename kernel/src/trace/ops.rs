//! Registering ftrace handlers (`FtraceOps`): filters, flags, and what `ftrace_call` calls.
//!
//! `ftrace_call` (and `ftrace_regs_call`) branch to `ftrace_stub` when no ops
//! is registered, straight to the handler when one RECURSION_SAFE ops is, to
//! `ftrace_ops_assist` (recursion guard, then the handler) when one other ops
//! is, and to `ftrace_ops_list` (each ops whose filter holds the ip) when
//! several are. Registration runs with preemption disabled: on this
//! uniprocessor kernel no other thread runs while text and tables change, and
//! no thread can be preempted inside a handler (the timer does not preempt a
//! context `arch::ftrace::in_ftrace` places in a stub or a handler),
//! so after `unregister` returns nobody is in it.
use super::sites::{self, ApplyError};
use super::{FUNCTION_TRACE_OP, FtraceRegs};
use crate::arch::ftrace::{
    FTRACE_REGS_LOWEST, ftrace_stub, ftrace_update_ftrace_func, ftrace_validate_ftrace_func, trap_if_below,
};
use crate::arch::text::TextError;
use crate::symbols::Symbolized;
use crate::sync::{Mutex, NonPreemptibleReaders, Published};
use crate::thread::{self, current_thread_info};
use alloc::string::String;
use alloc::vec::Vec;
use bitflags::bitflags;
use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use macros::notrace;
use portable::ftrace::{Demand, SiteError};
use portable::site_table::search_sorted;
use portable::sorted::difference;

/// A handler: `ip` is the traced site, `parent_ip` the return address into the caller.
pub type Handler = extern "C" fn(ip: u64, parent_ip: u64, ops: &FtraceOps, regs: &mut FtraceRegs);

bitflags! {
    /// What an ops needs from ftrace.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct OpsFlags: u32 {
        /// The handler needs a complete pt_regs (`ftrace_regs_caller`).
        const SAVE_REGS = 1;
        /// The handler changes where the traced call continues; at most one such ops per function.
        const IPMODIFY = 2;
        /// The handler protects itself from recursion; call it without the guard.
        const RECURSION_SAFE = 4;
        /// Ftrace must stay on while this ops is registered (Linux's
        /// FTRACE_OPS_FL_PERMANENT): `set_enabled(false)` is refused, and so is
        /// registering it while ftrace is off. The livepatch core's ops has it.
        const PERMANENT = 8;
    }
}

/// A registered (or registrable) handler with its flags and filter.
pub struct FtraceOps {
    pub name: &'static str,
    pub handler: Handler,
    pub flags: OpsFlags,
    /// Sorted site addresses this ops traces, `NO_SITES` when unregistered.
    sites: Published<Vec<u64>>,
    /// (site, direct target) of the sites it gave a direct target
    /// (`set_direct`), sorted by site; `ftrace_direct_handler` reads it
    /// (kept only when that is the ops's handler).
    direct: Published<Vec<(u64, u64)>>,
}

/// The sites of an unregistered ops.
static NO_SITES: Vec<u64> = Vec::new();
/// The direct targets of an ops that has none.
static NO_DIRECT: Vec<(u64, u64)> = Vec::new();

impl FtraceOps {
    /// An unregistered ops.
    pub const fn new(name: &'static str, handler: Handler, flags: OpsFlags) -> Self {
        FtraceOps {
            name,
            handler,
            flags,
            sites: Published::new(&NO_SITES, NonPreemptibleReaders),
            direct: Published::new(&NO_DIRECT, NonPreemptibleReaders),
        }
    }

    /// (site, target) of every site it gave a direct target, sorted by site.
    pub fn direct_targets(&self) -> Vec<(u64, u64)> {
        let _preempt = thread::preempt_disable();
        // Safety: preemption is off, a read-side section (`NonPreemptibleReaders`).
        unsafe { self.direct.read() }.clone()
    }

    /// Number of sites it traces (0 when unregistered).
    pub fn site_count(&self) -> usize {
        let _preempt = thread::preempt_disable();
        // Safety: preemption is off, a read-side section (`NonPreemptibleReaders`).
        unsafe { self.sites.read() }.len()
    }

    fn demand(&self) -> Demand {
        Demand {
            ops: self as *const FtraceOps as usize,
            save_regs: self.flags.contains(OpsFlags::SAVE_REGS),
            ipmodify: self.flags.contains(OpsFlags::IPMODIFY),
        }
    }
}

/// Whether `ops` traces the site at `ip`.
///
/// # Safety
///
/// The caller is in a read-side section of `NonPreemptibleReaders`: a
/// handler (which the timer does not preempt), or code running with
/// preemption disabled.
#[notrace]
#[inline(always)]
pub unsafe fn traces(ops: &FtraceOps, ip: u64) -> bool {
    // Safety: the caller's promise, above.
    search_sorted(unsafe { ops.sites.read() }, ip).is_some()
}

/// Which functions an ops traces.
pub enum Filter<'a> {
    /// Functions whose name matches a glob (`*`, `?`).
    Glob(&'a str),
    /// Functions with exactly these names; each must exist. A name is never a
    /// glob: `*` and `?` in it are compared as they are (use `Glob` for those).
    Names(&'a [&'a str]),
    /// Functions at these addresses (global entry or site); each must have a site.
    Addresses(&'a [u64]),
}

/// Why a registration changed nothing.
#[derive(Debug)]
pub enum FtraceError {
    NoMatch(String),
    UnknownFunction(String),
    NotTraceable(u64),
    Busy {
        function: u64,
        owner: &'static str,
    },
    AlreadyRegistered(&'static str),
    NotRegistered(&'static str),
    /// Ftrace is off (`set_enabled(false)`), and this PERMANENT ops needs it on.
    Disabled(&'static str),
    /// Ftrace cannot be turned off: this PERMANENT ops is registered.
    Permanent(&'static str),
    /// A direct target was asked for by an ops that does not modify the
    /// instruction pointer at this function (`set_direct`).
    NotDirectOwner {
        function: u64,
        ops: &'static str,
    },
    /// One `set_direct` named this site twice.
    DirectTwice(u64),
    Text(TextError),
}

impl fmt::Display for FtraceError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FtraceError::NoMatch(glob) => write!(formatter, "no traceable function matches '{glob}'"),
            FtraceError::UnknownFunction(name) => write!(formatter, "no traceable function named '{name}'"),
            FtraceError::NotTraceable(address) => {
                write!(formatter, "{address:#x} ({}) has no ftrace site (notrace?)", Symbolized(*address))
            }
            FtraceError::Busy { function, owner } => write!(
                formatter,
                "{} is busy: its instruction pointer is already modified by '{owner}'",
                Symbolized(*function)
            ),
            FtraceError::AlreadyRegistered(name) => write!(formatter, "ftrace ops '{name}' is already registered"),
            FtraceError::NotRegistered(name) => write!(formatter, "ftrace ops '{name}' is not registered"),
            FtraceError::Disabled(name) => {
                write!(formatter, "ftrace is off: ops '{name}' is PERMANENT and cannot be registered until it is on")
            }
            FtraceError::Permanent(name) => {
                write!(formatter, "ftrace cannot be turned off: the PERMANENT ops '{name}' is registered (busy)")
            }
            FtraceError::NotDirectOwner { function, ops } => write!(
                formatter,
                "ops '{ops}' cannot give {} a direct target: it does not trace it with IPMODIFY",
                Symbolized(*function)
            ),
            FtraceError::DirectTwice(site) => {
                write!(formatter, "the site at {site:#x} ({}) was given two direct targets at once", Symbolized(*site))
            }
            FtraceError::Text(error) => write!(formatter, "{error} ({})", Symbolized(error.address())),
        }
    }
}

/// Registered ops, in registration order (changed only with preemption off).
static REGISTRY: Mutex<Vec<&'static FtraceOps>> = Mutex::new(Vec::new());
/// The same list for `ftrace_ops_list`, which must not take locks.
static LIST: Published<Vec<&'static FtraceOps>> = Published::new(&NO_OPS, NonPreemptibleReaders);
/// The list before the first registration.
static NO_OPS: Vec<&'static FtraceOps> = Vec::new();
/// The function `ftrace_call` and `ftrace_regs_call` branch to now (0 = ftrace_stub).
static CALL_TARGET: AtomicU64 = AtomicU64::new(0);
/// Whether that function uses `FUNCTION_TRACE_OP` (a single ops's handler, or `ftrace_ops_assist`).
static CALL_TARGET_USES_OP: AtomicBool = AtomicBool::new(false);

/// Registers `ops` for the functions `filter` names and patches their sites.
/// Returns the number of sites. On error nothing has changed.
#[notrace]
pub fn register(ops: &'static FtraceOps, filter: Filter) -> Result<usize, FtraceError> {
    let _preempt = thread::preempt_disable();
    let mut registry = REGISTRY.lock();
    if registry.iter().any(|other| core::ptr::eq(*other, ops)) {
        return Err(FtraceError::AlreadyRegistered(ops.name));
    }
    if ops.flags.contains(OpsFlags::PERMANENT) && !sites::enabled() {
        return Err(FtraceError::Disabled(ops.name));
    }
    let indices = resolve(&filter)?;
    ops.sites.replace(sites::addresses(&indices));
    let mut list = registry.clone();
    list.push(ops);
    if let Err(error) = set_call_target(&list) {
        ops.sites.clear();
        return Err(FtraceError::Text(error));
    }
    if let Err(error) = sites::apply(&indices, ops.demand(), true) {
        // apply changed nothing; switching back is the reverse of the switch just made.
        if let Err(undo) = set_call_target(&registry) {
            report_failed_undo("ftrace_call's target", &undo);
        }
        ops.sites.clear();
        return Err(apply_error(&registry, error));
    }
    registry.push(ops);
    Ok(indices.len())
}

/// Changes the functions a registered `ops` traces to those `filter` names:
/// sites that join are checked (IPMODIFY) and patched, sites that leave are
/// restored. An unregistered ops is registered. On error nothing changed.
#[notrace]
pub fn update(ops: &'static FtraceOps, filter: Filter) -> Result<usize, FtraceError> {
    let _preempt = thread::preempt_disable();
    let registry = REGISTRY.lock();
    if !registry.iter().any(|other| core::ptr::eq(*other, ops)) {
        drop(registry);
        return register(ops, filter);
    }
    let new = resolve(&filter)?;
    let mut old = sites::indices_of(&current_sites(ops)).map_err(FtraceError::NotTraceable)?;
    old.sort_unstable();
    // Both lists are sorted: one merge pass finds what joins and what leaves.
    let (added, removed) = difference(&new, &old);
    // Publish the union first, so a site switched on below is recognised at once.
    let mut union = new.clone();
    union.extend(removed.iter().copied());
    ops.sites.replace(sites::addresses(&union));
    if let Err(error) = sites::apply(&added, ops.demand(), true) {
        ops.sites.replace(sites::addresses(&old));
        return Err(apply_error(&registry, error));
    }
    if let Err(error) = sites::apply(&removed, ops.demand(), false) {
        if let Err(undo) = sites::apply(&added, ops.demand(), false) {
            report_failed_undo("the sites an update added", &apply_error(&registry, undo));
        }
        ops.sites.replace(sites::addresses(&old));
        return Err(apply_error(&registry, error));
    }
    ops.sites.replace(sites::addresses(&new));
    // Sites that left took their direct targets along (`SiteState::remove`).
    forget_direct(ops, |site| !current_sites(ops).contains(&site));
    Ok(new.len())
}

/// Drops the direct targets of the sites `gone` says left `ops`.
#[notrace]
fn forget_direct(ops: &FtraceOps, gone: impl Fn(u64) -> bool) {
    // Safety: callers hold the registry lock (preemption off): a read-side section.
    let current = unsafe { ops.direct.read() };
    if current.iter().any(|&(site, _)| gone(site)) {
        let kept = current.iter().copied().filter(|&(site, _)| !gone(site)).collect();
        ops.direct.replace(kept);
    }
}

/// Points the sites of `targets` (function address, then its new direct
/// target, or `None` to take it away) straight at their targets, on behalf
/// of `ops` (Linux's `register_ftrace_direct`, `modify_ftrace_direct` and
/// `unregister_ftrace_direct`, per function). `ops` must be registered with
/// IPMODIFY and trace each function, so a direct site is as exclusive as an
/// IPMODIFY one. While `ops` is a site's only user the site's `bl` goes to
/// the target itself, with no stub; when another ops traces it too, the
/// site calls the stub its users need and `ops`'s handler is expected to
/// send the call on to the target (`ftrace_direct_handler` does, from this
/// table; the livepatch core's handler does from its own), and the site goes
/// back to the target when the others leave (`SiteState::caller`).
///
/// A direct target is entered as a replacement of the traced function, not
/// as a hook before it: r0 = the return address into the traced function's
/// caller, r1 = that caller's stack pointer (no frame pushed), r2 = the
/// TOC at the traced function's entry, r3-r10 the arguments; LR is the word
/// after the site (or r0, when entered from a stub) and must not be used;
/// the target returns to r0 (`arch::trampoline`'s template is one).
/// All or nothing: every site is checked and every word encoded before
/// the first is written (a function named twice is refused: `DirectTwice`).
/// Returns when every CPU fetches the new words. Cost: one look-up per
/// function and one merge of the handler's table, whatever the batch's size.
#[notrace]
pub fn set_direct(ops: &'static FtraceOps, targets: &[(u64, Option<u64>)]) -> Result<(), FtraceError> {
    let _preempt = thread::preempt_disable();
    let registry = REGISTRY.lock();
    if !registry.iter().any(|other| core::ptr::eq(*other, ops)) {
        return Err(FtraceError::NotRegistered(ops.name));
    }
    // (index, target) for the sites, (site address, target) for the handler's table.
    let mut changes = Vec::with_capacity(targets.len());
    let mut entries = Vec::with_capacity(targets.len());
    let mut hint = 0;
    for &(function, target) in targets {
        let (index, site) = sites::index_of_near(function, hint).ok_or(FtraceError::NotTraceable(function))?;
        hint = index;
        changes.push((index, target));
        entries.push((site, target));
    }
    // Sorted by site (a livepatch batch is already), one function once.
    entries.sort_unstable_by_key(|&(site, _)| site);
    if let Some(pair) = entries.windows(2).find(|pair| pair[0].0 == pair[1].0) {
        return Err(FtraceError::DirectTwice(pair[0].0));
    }
    let owner = ops as *const FtraceOps as usize;
    sites::set_direct(&changes, owner).map_err(|error| match error {
        ApplyError::Site(function, SiteError::NotOwner { .. } | SiteError::NotTraced) => {
            FtraceError::NotDirectOwner { function, ops: ops.name }
        }
        other => apply_error(&registry, other),
    })?;
    // The table `ftrace_direct_handler` reads (a shared site reached through
    // the stub finds its target there), kept only for an ops whose handler
    // it is: an ops with its own handler (the livepatch core's) keeps its
    // own, and replacing this one costs a grace period. The current table
    // merged with `entries`, one pass, both sorted.
    if ops.handler as *const () != ftrace_direct_handler as *const () {
        return Ok(());
    }
    // Safety: the registry lock is held (preemption off): a read-side section.
    let current = unsafe { ops.direct.read() };
    let mut table = Vec::with_capacity(current.len() + entries.len());
    let mut kept = current.iter().copied().peekable();
    for (site, target) in entries {
        while let Some(&(other, _)) = kept.peek()
            && other <= site
        {
            let entry = kept.next().expect("peeked");
            // A site being given a new target (or none) drops its old one.
            if other < site {
                table.push(entry);
            }
        }
        if let Some(target) = target {
            table.push((site, target));
        }
    }
    table.extend(kept);
    ops.direct.replace(table);
    Ok(())
}

/// Stores the words of the sites of `functions` again, as they are: after
/// a site stopped branching to a direct target (and every CPU synchronised
/// for that store), before the target is freed. On the hardware the first
/// store, its flush and every CPU's `isync` are enough. QEMU's
/// multi-threaded TCG (7.2, this kernel's platform) can keep a translation
/// of the old word: a CPU that translated the block holding the site while
/// the store was being made links that block after the store's
/// invalidation ran, and every CPU may run it until the page is written
/// again (seen: a call through a freed trampoline 2 ms after its site
/// changed, with the site's word already the new one; gone with `-accel
/// tcg,thread=single`). A CPU takes the first store's IPI only between two
/// blocks, so by the time every CPU ran it, every translation begun before
/// is linked, and this second store invalidates it; one begun after reads
/// the new word. Functions without a site are left out.
#[notrace]
pub fn restore_words(functions: &[u64]) {
    let _preempt = thread::preempt_disable();
    let _registry = REGISTRY.lock();
    let indices: Vec<usize> = functions.iter().filter_map(|&function| sites::index_of(function)).collect();
    sites::restore_words(&indices);
}

/// Whether `function` (its global entry or site word) has an ftrace site
/// (a target module's function has none once its module went).
#[notrace]
pub fn has_site(function: u64) -> bool {
    let _preempt = thread::preempt_disable();
    let _registry = REGISTRY.lock();
    sites::exists(function)
}

/// The handler of an ops whose only work is direct calls: a call that
/// reached the stub (another ops traces the function too) is sent on to
/// the site's direct target (`set_direct`), with the registers the target
/// expects (the stub's exit leaves r0 = the return address into the caller).
/// An ops with it needs IPMODIFY and RECURSION_SAFE (it calls nothing).
#[notrace]
pub extern "C" fn ftrace_direct_handler(ip: u64, _parent_ip: u64, ops: &FtraceOps, regs: &mut FtraceRegs) {
    // Safety: a handler, which the timer does not preempt: a read-side section.
    let table = unsafe { ops.direct.read() };
    if let Ok(index) = table.binary_search_by_key(&ip, |&(site, _)| site) {
        regs.regs.nip = table[index].1;
    }
}

/// A copy of the site addresses `ops` traces.
#[notrace]
fn current_sites(ops: &FtraceOps) -> Vec<u64> {
    // Safety: callers hold the registry lock, so preemption is off: a
    // read-side section (`NonPreemptibleReaders`); the copy is made before
    // they replace the sites.
    unsafe { ops.sites.read() }.clone()
}

/// Unpatches the sites of `ops` and removes it. When it returns, no thread is
/// inside the handler. On error nothing changed: the switch of what
/// `ftrace_call` calls is checked before any site is written, so it cannot
/// fail after the sites were (and if it did, the sites are put back).
#[notrace]
pub fn unregister(ops: &'static FtraceOps) -> Result<(), FtraceError> {
    let _preempt = thread::preempt_disable();
    let mut registry = REGISTRY.lock();
    let position =
        registry.iter().position(|other| core::ptr::eq(*other, ops)).ok_or(FtraceError::NotRegistered(ops.name))?;
    let addresses = current_sites(ops);
    let indices: Vec<usize> = addresses.iter().filter_map(|&address| sites::index_of(address)).collect();
    let mut list = registry.clone();
    list.remove(position);
    validate_call_target(&list).map_err(FtraceError::Text)?;
    sites::apply(&indices, ops.demand(), false).map_err(|error| apply_error(&registry, error))?;
    if let Err(error) = set_call_target(&list) {
        if let Err(undo) = sites::apply(&indices, ops.demand(), true) {
            report_failed_undo("the sites of an ops being unregistered", &apply_error(&registry, undo));
        }
        return Err(FtraceError::Text(error));
    }
    registry.remove(position);
    ops.sites.clear();
    ops.direct.clear();
    Ok(())
}

/// Takes every site in `range` (a target module's memory, being unloaded)
/// out of every registered ops: each such site goes back to its nop and
/// leaves the ops's site list; the ops stays registered with its other
/// sites (with none, it traces nothing until updated or unregistered), as
/// Linux's ftrace drops a going module's records from every filter; then
/// runs `then` with the registry's lock still held. A
/// handler running on another CPU meanwhile sees the ops's old list or its
/// new one (`Published`); the module's code runs nowhere any more, so no
/// handler is called for one of its sites.
#[notrace]
pub(super) fn forget_range<T>(range: core::ops::Range<u64>, then: impl FnOnce() -> T) -> T {
    let _preempt = thread::preempt_disable();
    let registry = REGISTRY.lock();
    for ops in registry.iter() {
        let current = current_sites(ops);
        let (gone, kept): (Vec<u64>, Vec<u64>) = current.iter().partition(|address| range.contains(address));
        if gone.is_empty() {
            continue;
        }
        let indices: Vec<usize> = gone.iter().filter_map(|&address| sites::index_of(address)).collect();
        if let Err(error) = sites::apply(&indices, ops.demand(), false) {
            report_failed_undo("the sites of a going module", &apply_error(&registry, error));
        }
        ops.sites.replace(kept);
        forget_direct(ops, |site| range.contains(&site));
    }
    // Still under the registry's lock: no registration finds the range's
    // sites between their leaving every ops and what `then` does (the
    // module table's removal).
    then()
}

/// Says on the console that undoing part of a failed change failed too, so
/// the text and ftrace's tables now disagree about `what`: never dropped
/// silently. Cannot happen while nothing else writes kernel text (every
/// change is checked before it is made), which is why it is only reported.
#[notrace]
pub(super) fn report_failed_undo(what: &str, error: &dyn fmt::Display) {
    crate::println!("ftrace: undoing {what} after an error failed too ({error}): text and tables disagree");
}

/// Turns every traced site off (`on == false`: each becomes a nop, as if
/// nothing traced it) or back on (Linux's `sysctl kernel.ftrace_enabled`).
/// Refused, with nothing changed, while a PERMANENT ops is registered
/// (`FtraceError::Permanent`). While ftrace is off, registration goes on as
/// Linux's does: a PERMANENT ops is refused (`FtraceError::Disabled`); any
/// other ops registers, updates and unregisters as usual (filters, IPMODIFY
/// ownership and `trace sites` follow it) but its sites stay nops, so its
/// handler is not called until ftrace is on again, when every site gets the
/// stub its users need. Turning on what is on, or off what is off, changes
/// nothing. All or nothing, like `sites::apply`.
#[notrace]
pub fn set_enabled(on: bool) -> Result<(), FtraceError> {
    // A live patch enabled whose functions are all in modules not loaded
    // (or with callbacks only) has no PERMANENT registration yet, and its
    // module's load would then fail: refused too, before any lock (the
    // livepatch lock comes before this registry's).
    if !on && crate::livepatch::any_enabled() {
        return Err(FtraceError::Permanent(crate::livepatch::LIVEPATCH_OPS_NAME));
    }
    let _preempt = thread::preempt_disable();
    // The registry's lock orders this against every registration: none is
    // half done while the sites switch, and a PERMANENT ops cannot slip in
    // between the check and the switch.
    let registry = REGISTRY.lock();
    if !on && let Some(permanent) = registry.iter().find(|ops| ops.flags.contains(OpsFlags::PERMANENT)) {
        return Err(FtraceError::Permanent(permanent.name));
    }
    sites::set_enabled(on).map_err(|error| apply_error(&registry, error))
}

/// Whether ftrace is on (`set_enabled`); it is at boot.
#[notrace]
pub fn enabled() -> bool {
    sites::enabled()
}

/// Names of the registered ops.
#[notrace]
pub fn registered() -> Vec<&'static str> {
    REGISTRY.lock().iter().map(|ops| ops.name).collect()
}

/// The registered ops themselves (the test runner unregisters what a failed test left).
#[notrace]
pub fn registered_ops() -> Vec<&'static FtraceOps> {
    REGISTRY.lock().clone()
}

#[notrace]
fn apply_error(registry: &[&'static FtraceOps], error: ApplyError) -> FtraceError {
    match error {
        ApplyError::Site(function, SiteError::IpModifyBusy { owner }) => FtraceError::Busy {
            function,
            owner: registry
                .iter()
                .find(|ops| **ops as *const FtraceOps as usize == owner)
                .map_or("unknown", |ops| ops.name),
        },
        ApplyError::Site(function, _) => FtraceError::NotTraceable(function),
        ApplyError::Text(error) => FtraceError::Text(error),
    }
}

#[notrace]
fn resolve(filter: &Filter) -> Result<Vec<usize>, FtraceError> {
    let mut indices = match filter {
        Filter::Glob(glob) => {
            let indices = sites::matching(glob);
            if indices.is_empty() {
                return Err(FtraceError::NoMatch(String::from(*glob)));
            }
            indices
        }
        Filter::Names(names) => {
            let mut indices = Vec::new();
            for name in names.iter() {
                let found = sites::named(name);
                if found.is_empty() {
                    return Err(FtraceError::UnknownFunction(String::from(*name)));
                }
                indices.extend(found);
            }
            indices
        }
        Filter::Addresses(addresses) => sites::indices_of(addresses).map_err(FtraceError::NotTraceable)?,
    };
    indices.sort_unstable();
    indices.dedup();
    Ok(indices)
}

/// The function `ftrace_call` branches to for `list`, and whether it uses `FUNCTION_TRACE_OP`.
#[notrace]
fn call_target(list: &[&'static FtraceOps]) -> (u64, bool) {
    // Only a single ops is called straight from ftrace_call (alone or through
    // the recursion guard); the stub and the list walker ignore the op.
    let target = match list {
        [] => ftrace_stub as *const () as u64,
        [only] if only.flags.contains(OpsFlags::RECURSION_SAFE) => only.handler as *const () as u64,
        [_] => ftrace_ops_assist as *const () as u64,
        _ => ftrace_ops_list as *const () as u64,
    };
    (target, list.len() == 1)
}

/// The function `ftrace_call` branches to now.
#[notrace]
fn current_call_target() -> u64 {
    match CALL_TARGET.load(Ordering::Acquire) {
        0 => ftrace_stub as *const () as u64,
        current => current,
    }
}

/// Checks, writing nothing, that `set_call_target(list)` would succeed now.
#[notrace]
fn validate_call_target(list: &[&'static FtraceOps]) -> Result<(), TextError> {
    ftrace_validate_ftrace_func(current_call_target(), call_target(list).0)
}

/// Points `ftrace_call` and `ftrace_regs_call` at the right function for `list`.
///
/// The stubs pass `FUNCTION_TRACE_OP` to whatever `ftrace_call` reaches, so it
/// must name the right ops at every instant a handler (or `ftrace_ops_assist`)
/// can be reached directly, on every CPU. As in Linux's
/// `ftrace_modify_all_code`: the new op is stored before the branch to a
/// handler is written, and a branch away from a handler is written (and
/// every CPU synchronised: `modify_all`) before the op changes. Between the
/// op's store and the branch's write, a grace period (`synchronize_sched`):
/// a stub loads the op two instructions before `ftrace_call`, so another CPU
/// interrupted between the two could hold the old op in r5 and then meet the
/// new branch; a stub is a read-side section, so after the grace period no
/// CPU is between its load and its branch with the old op
/// (`tests::smp::a_handler_reached_directly_always_gets_its_own_op`). The registry grows or shrinks
/// by one ops at a time, so one side of every switch is `ftrace_stub` or
/// `ftrace_ops_list`, which ignore the op (Linux passes through the list
/// function for a switch between two handlers; none happens here, and an
/// assertion says so). The list `ftrace_ops_list` walks is replaced last, as
/// before: an ops joining has no site patched yet, and one leaving still has
/// its site set until the caller releases it.
#[notrace]
fn set_call_target(list: &[&'static FtraceOps]) -> Result<(), TextError> {
    let (target, target_uses_op) = call_target(list);
    let op = list.first().map_or(0, |ops| *ops as *const FtraceOps as usize);
    assert!(
        !(target_uses_op && CALL_TARGET_USES_OP.load(Ordering::Acquire)),
        "ftrace_call would switch from one op user to another without the list walker"
    );
    if target_uses_op {
        let previous = FUNCTION_TRACE_OP.swap(op, Ordering::AcqRel);
        if crate::arch::text::log::recording() {
            crate::arch::text::log::record(crate::arch::text::log::Step::OpStored, 0);
        }
        // No CPU still between its load of the previous op and the branch.
        crate::sync::synchronize_sched();
        if let Err(error) = branch_call_sites(target, target_uses_op) {
            // Nothing was written (both words or neither): the op goes back too.
            FUNCTION_TRACE_OP.store(previous, Ordering::Release);
            return Err(error);
        }
    } else {
        branch_call_sites(target, target_uses_op)?;
        FUNCTION_TRACE_OP.store(op, Ordering::Release);
    }
    LIST.replace(list.to_vec());
    Ok(())
}

/// Makes the stubs call `target` (`ftrace_update_ftrace_func`) and records
/// it, with whether it uses the op.
#[notrace]
#[inline(always)]
fn branch_call_sites(target: u64, uses_op: bool) -> Result<(), TextError> {
    ftrace_update_ftrace_func(current_call_target(), target)?;
    CALL_TARGET.store(target, Ordering::Release);
    CALL_TARGET_USES_OP.store(uses_op, Ordering::Release);
    Ok(())
}

/// Per-thread recursion guard: true if this thread was not already in a handler.
#[notrace]
#[inline(always)]
fn recursion_enter() -> bool {
    // Safety: the current thread's own thread_info.
    let info = unsafe { &mut *current_thread_info() };
    if info.trace_recursion != 0 {
        return false;
    }
    info.trace_recursion = 1;
    true
}

#[notrace]
#[inline(always)]
fn recursion_exit() {
    // Safety: as in recursion_enter.
    unsafe { (*current_thread_info()).trace_recursion = 0 };
}

/// Traps when the traced call has less than `FTRACE_STACK_ROOM` left above
/// the livepatch stack: the stub that passed `regs` sits so low that the
/// deepest handler chain could write below `livepatch_sp`. The exception
/// entry then finds the stack pointer within the guard and reports a stack overflow from the
/// emergency stack. The room is what the ftrace machinery itself needs (the
/// stub's frame and the deepest handler chain, measured), not the whole
/// exception guard: the timer path runs traced functions within the guard
/// (`STACK_GUARD` is sized to hold this room at every one of them), and a
/// healthy thread taking a tick near the guard must pass. Every call that
/// reaches a guarded handler passes here, so a handler that recurses through
/// traced functions is stopped at the first level that leaves less than the
/// room, before it writes below `livepatch_sp` (each level must take less
/// than the room: the stub's frame and a function's are far smaller; the
/// stub's stack pointer is taken from `regs`, so where the caller's prologue put its
/// own frame does not matter). Recursion through untraced code only meets
/// the timer's check (docs/ARCHITECTURE.md).
#[notrace]
#[inline(always)]
pub(crate) fn check_stack_room(regs: &FtraceRegs) {
    // Safety: the current thread's own thread_info.
    let limit = unsafe { (*current_thread_info()).livepatch_sp } + FTRACE_REGS_LOWEST as u64;
    trap_if_below(regs as *const FtraceRegs as u64, limit);
}

/// One ops that is not RECURSION_SAFE: the guard, then its handler.
#[notrace]
extern "C" fn ftrace_ops_assist(ip: u64, parent_ip: u64, ops: &FtraceOps, regs: &mut FtraceRegs) {
    check_stack_room(regs);
    if recursion_enter() {
        (ops.handler)(ip, parent_ip, ops, regs);
        recursion_exit();
    }
}

/// Several ops: call each one that traces `ip`.
#[notrace]
extern "C" fn ftrace_ops_list(ip: u64, parent_ip: u64, _ops: &FtraceOps, regs: &mut FtraceRegs) {
    check_stack_room(regs);
    // Safety: a handler, which the scheduler does not preempt: a read-side
    // section (`NonPreemptibleReaders`).
    let list = unsafe { LIST.read() };
    let mut index = 0;
    while index < list.len() {
        let ops = list[index];
        // Safety: as for LIST above.
        if unsafe { traces(ops, ip) } {
            if ops.flags.contains(OpsFlags::RECURSION_SAFE) {
                (ops.handler)(ip, parent_ip, ops, regs);
            } else if recursion_enter() {
                (ops.handler)(ip, parent_ip, ops, regs);
                recursion_exit();
            }
        }
        index += 1;
    }
}
