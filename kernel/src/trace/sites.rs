//! The entry sites: every `__patchable_function_entries` record, validated and named once at boot
//! (`portable::site_table::SiteTable`), the sites of loaded target modules beside them
//! (`module_sites`), and who traces each one now.
use super::module_sites::{self, MODULE_STRIDE, ModuleSites, SiteRefused};
use crate::arch::ftrace::{SiteChange, ftrace_caller, ftrace_init_nop, ftrace_prepare_change, ftrace_regs_caller};
use crate::arch::text::TextError;
use crate::sync::Mutex;
use crate::{println, symbols};
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};
use macros::notrace;
use portable::ftrace::{Caller, Demand, SiteError, SiteState};
use portable::site_table::NameError;
pub use portable::site_table::{Site, SiteTable};
use spin::Once;

/// The sites, published once by `init` and never changed afterwards.
///
/// Readers take no lock, and that is sound: `Once::get` returns the table
/// only after `call_once` has finished building it (its state is stored with
/// Release and loaded with Acquire, so the table's contents are visible), and
/// it hands out only shared references to a type with no interior mutability,
/// so nothing writes the table while anyone reads it. `init` runs once, at
/// boot, before any other thread, ops or module exists. A reader that runs
/// before (or, as an interrupt, during) publication finds `Once::get`
/// returning `None` without spinning, and so reads `NO_SITES`: every lookup
/// finds nothing, which is also the truth then, as no site calls a stub yet.
static TABLE: Once<SiteTable> = Once::new();
static NO_SITES: SiteTable = SiteTable::EMPTY;

/// What changes: who traces each site, in the tables' order. The kernel's
/// are filled before its table is published, a module's before its table
/// is, so every index a table gives is valid here. Its lock also serialises
/// the changes of the module tables (`module_sites`).
static STATES: Mutex<States> =
    Mutex::new(States { kernel: Vec::new(), modules: BTreeMap::new(), next_base: MODULE_STRIDE });

struct States {
    kernel: Vec<SiteState>,
    /// Per module table, by its base index.
    modules: BTreeMap<usize, Vec<SiteState>>,
    /// The base the next module table gets (never reused).
    next_base: usize,
}

impl States {
    fn get(&self, index: usize) -> Option<&SiteState> {
        if index < MODULE_STRIDE {
            return self.kernel.get(index);
        }
        let base = index - index % MODULE_STRIDE;
        self.modules.get(&base)?.get(index - base)
    }

    fn get_mut(&mut self, index: usize) -> Option<&mut SiteState> {
        if index < MODULE_STRIDE {
            return self.kernel.get_mut(index);
        }
        let base = index - index % MODULE_STRIDE;
        self.modules.get_mut(&base)?.get_mut(index - base)
    }
}

/// The site at global index `index` (kernel or module). Caller: in a
/// read-side section (preemption off, a lock held, or a handler).
#[notrace]
#[inline(always)]
fn site(index: usize) -> Option<Site> {
    if index < MODULE_STRIDE {
        // The kernel's, the common case: no module list to look at.
        return table().sites().get(index).copied();
    }
    // Safety: the caller's read-side section.
    let (table, local) = unsafe { module_sites::locate(index) }?;
    table.sites().get(local).copied()
}

/// Each table with the global index of its first site: the kernel's, then each module's.
///
/// # Safety
///
/// The caller is in a read-side section for as long as it uses the result.
#[notrace]
unsafe fn every_table() -> impl Iterator<Item = (usize, &'static SiteTable)> {
    // Safety: the caller's promise.
    let modules = unsafe { module_sites::tables() };
    core::iter::once((0, table())).chain(modules.iter().map(|module| (module.base, &module.table)))
}

/// Whether ftrace is on: sites with users call their stub. Off, every site
/// is a nop whatever its state says. Written only with `STATES` locked (by
/// `set_enabled`), and `apply` reads it with the lock held, so a
/// registration never sees it change halfway; `enabled()` may read it
/// without the lock (an answer that can be stale by the time it is used,
/// which its callers allow for: they decide again under the registry lock).
static ENABLED: AtomicBool = AtomicBool::new(true);

/// Whether ftrace is on.
#[notrace]
pub(super) fn enabled() -> bool {
    ENABLED.load(Ordering::Acquire)
}

/// Switches every site with users to a nop (`on == false`) or back to the
/// stub its state asks for, all or nothing (as `apply`: every word checked
/// and every change encoded before the first write; a failed write undoes
/// the ones before it). The states do not change. Another CPU executing a
/// site meanwhile runs either word, each a whole call or none (the text
/// protocol, docs/ftrace.md): a call that went into a stub before its site
/// became a nop completes normally, and the registered handlers stay valid.
#[notrace]
pub(super) fn set_enabled(on: bool) -> Result<(), ApplyError> {
    let states = STATES.lock();
    if ENABLED.load(Ordering::Acquire) == on {
        return Ok(());
    }
    let mut planned = Vec::new();
    // The kernel's sites and every module's (no module table comes or goes
    // while the states' lock is held).
    // Safety: the states' lock is held: preemption is off, a read-side section.
    for (base, table) in unsafe { every_table() } {
        for (offset, site) in table.sites().iter().enumerate() {
            let Some(stub) = states.get(base + offset).and_then(|state| stub(state.caller())) else { continue };
            let (old, new) = if on { (None, Some(stub)) } else { (Some(stub), None) };
            planned.push(ftrace_prepare_change(site.address, old, new).map_err(ApplyError::Text)?);
        }
    }
    commit_all(&planned)?;
    ENABLED.store(on, Ordering::Release);
    Ok(())
}

/// Writes every change in `planned`, then has the other CPUs synchronise
/// once for the batch; a failed write undoes the ones before it (an undo that
/// fails too is reported, as text and states then disagree).
#[notrace]
fn commit_all(planned: &[SiteChange]) -> Result<(), ApplyError> {
    for (done, change) in planned.iter().enumerate() {
        if let Err(error) = change.commit() {
            for written in planned[..done].iter().rev() {
                if let Err(undo_error) = written.revert() {
                    super::ops::report_failed_undo("a site", &undo_error);
                }
            }
            SiteChange::end_batch(change);
            return Err(ApplyError::Text(error));
        }
    }
    if let Some(last) = planned.last() {
        SiteChange::end_batch(last);
    }
    Ok(())
}

/// The site table (empty before `init`).
#[notrace]
pub fn table() -> &'static SiteTable {
    TABLE.get().unwrap_or(&NO_SITES)
}

/// (address of the site table, entries, bytes per entry), for the debugger:
/// each entry is a `Site`: the function, the site word's address, then the
/// name as a pointer and a length.
pub fn debug_table() -> (u64, u64, u64) {
    let sites = table().sites();
    (sites.as_ptr() as u64, sites.len() as u64, core::mem::size_of::<Site>() as u64)
}

unsafe extern "C" {
    static __patchable_entries_start: u64;
    static __patchable_entries_end: u64;
}

#[notrace]
fn records() -> &'static [u64] {
    // Safety: the linker script brackets the compiler's records, one u64 each.
    unsafe { crate::section::records(&raw const __patchable_entries_start, &raw const __patchable_entries_end) }
}

/// The stub a site in state `caller` calls, if any.
#[notrace]
fn stub(caller: Caller) -> Option<u64> {
    match caller {
        Caller::None => None,
        Caller::Light => Some(ftrace_caller as *const () as u64),
        Caller::Regs => Some(ftrace_regs_caller as *const () as u64),
        Caller::Direct(target) => Some(target),
    }
}

/// Validates every record and prepares its site (`ftrace_init_nop`).
/// Returns (valid, rejected).
#[notrace]
pub(super) fn init() -> (usize, usize) {
    let mut sites = Vec::with_capacity(records().len());
    let mut rejected = 0;
    for &function in records() {
        let address = match ftrace_init_nop(function) {
            Ok(address) => address,
            Err(error) => {
                println!("ftrace: rejected site of {}: {error}", symbols::Symbolized(function));
                rejected += 1;
                continue;
            }
        };
        let name = symbols::table().and_then(|table| table.lookup(function)).map_or("?", |(symbol, _)| symbol.name);
        sites.push(Site { function, address, name });
    }
    let valid = sites.len();
    STATES.lock().kernel = vec![SiteState::default(); valid];
    TABLE.call_once(|| SiteTable::new(sites));
    (valid, rejected)
}

/// The change of one site's word that moving it from `state` to `new_state`
/// needs, checked against the word there now; `None` if the stub it calls
/// stays the same.
#[notrace]
#[inline(always)]
fn prepare(site: &Site, state: SiteState, new_state: SiteState) -> Result<Option<SiteChange>, TextError> {
    let (old, new) = (state.caller(), new_state.caller());
    if old == new {
        return Ok(None);
    }
    ftrace_prepare_change(site.address, stub(old), stub(new)).map(Some)
}

/// Applies `demand` (add or remove) to the sites at `indices` (no index
/// twice), patching as needed. All or nothing: every site's new state is
/// computed and every site's word checked before the first write, so a
/// refused demand or a word that is not what its state says (changed behind
/// ftrace's back) fails with nothing changed. A write that fails anyway
/// undoes the writes before it; an undo that fails too is reported on the
/// console (`report_failed_undo`), as text and states then disagree.
/// While ftrace is off (`set_enabled`) only the states change: every site
/// stays a nop until ftrace is on again.
#[notrace]
pub(super) fn apply(indices: &[usize], demand: Demand, adding: bool) -> Result<(), ApplyError> {
    let mut states = STATES.lock();
    let on = ENABLED.load(Ordering::Acquire);
    let mut planned = Vec::with_capacity(indices.len());
    let mut changes = Vec::with_capacity(indices.len());
    for &index in indices {
        // The states' lock is held: preemption is off, and no module table
        // comes or goes meanwhile (their changes take this lock).
        let (Some(site), Some(&mut current)) = (site(index), states.get_mut(index)) else {
            return Err(ApplyError::Site(0, SiteError::NotTraced));
        };
        let mut state = current;
        let checked = if adding { state.add(demand) } else { state.remove(demand) };
        checked.map_err(|error| ApplyError::Site(site.function, error))?;
        if on && let Some(change) = prepare(&site, current, state).map_err(ApplyError::Text)? {
            changes.push(change);
        }
        planned.push(state);
    }
    // Every word written and flushed here, then the other CPUs synchronise
    // once for the batch (`SiteChange::end_batch`), also after an undo; a
    // batch that writes nothing asks nothing of them.
    commit_all(&changes)?;
    for (&index, &state) in indices.iter().zip(&planned) {
        if let Some(slot) = states.get_mut(index) {
            *slot = state;
        }
    }
    Ok(())
}

/// Gives each site in `changes` (index, direct target or `None`) its new
/// direct target on behalf of `ops`, which must be its IPMODIFY owner
/// (`SiteState::set_direct`), and writes the words that changes, all or
/// nothing as `apply`: a site whose owner is its only user goes from the
/// stub to the target, from one target to another, or back, in one word
/// (a call before the write goes through the stub and the owner's handler,
/// one after to the target); a shared site keeps its stub. Every word is
/// flushed and the other CPUs synchronise once for the batch before this
/// returns, so a target written before the call is what every CPU fetches.
#[notrace]
pub(super) fn set_direct(changes: &[(usize, Option<u64>)], ops: usize) -> Result<(), ApplyError> {
    let mut states = STATES.lock();
    let on = ENABLED.load(Ordering::Acquire);
    let mut planned = Vec::with_capacity(changes.len());
    let mut words = Vec::with_capacity(changes.len());
    for &(index, target) in changes {
        let (Some(site), Some(&mut current)) = (site(index), states.get_mut(index)) else {
            return Err(ApplyError::Site(0, SiteError::NotTraced));
        };
        let mut state = current;
        state.set_direct(ops, target).map_err(|error| ApplyError::Site(site.function, error))?;
        if on && let Some(change) = prepare(&site, current, state).map_err(ApplyError::Text)? {
            words.push(change);
        }
        planned.push(state);
    }
    commit_all(&words)?;
    for (&(index, _), &state) in changes.iter().zip(&planned) {
        if let Some(slot) = states.get_mut(index) {
            *slot = state;
        }
    }
    Ok(())
}

/// Stores each site's current word again (checked, flushed; the other CPUs
/// synchronise once), for `ops::restore_words`. A site of no table is
/// left out (its module went: its memory is poisoned, and the poison's
/// stores did the same).
#[notrace]
pub(super) fn restore_words(indices: &[usize]) {
    let _states = STATES.lock();
    let mut last = None;
    for &index in indices {
        let Some(site) = site(index) else { continue };
        let word = crate::arch::text::read(site.address);
        // The states' lock is held, so no registration changes the word
        // between the read and the store.
        if crate::arch::text::modify_code_local(site.address, word, word).is_ok() {
            last = Some(site.address);
        }
    }
    if let Some(address) = last {
        crate::arch::text::end_batch(address);
    }
}

/// Whether the site at `address` (global entry or site word) is in a table.
#[notrace]
pub(super) fn exists(address: u64) -> bool {
    let _states = STATES.lock();
    index_of(address).is_some()
}

/// Validates and publishes the sites of target module `module` (`module_sites`).
/// On error nothing is published (a site already prepared by
/// `ftrace_init_nop` stays as it is: the module's memory is freed).
pub fn add_module(
    module: &str,
    memory: core::ops::Range<u64>,
    text: &[core::ops::Range<u64>],
    functions: Vec<(u64, String)>,
) -> Result<usize, SiteRefused> {
    let mut states = STATES.lock();
    // Safety: the states' lock is held: preemption is off, a read-side section.
    if unsafe { module_sites::tables() }.iter().any(|sites| sites.module == module) {
        return Err(SiteRefused::Duplicate);
    }
    let base = states.next_base;
    let sites: ModuleSites = module_sites::build(module, memory, text, functions, base)?;
    let count = sites.table.sites().len();
    states.next_base += MODULE_STRIDE;
    states.modules.insert(base, vec![SiteState::default(); count]);
    // States first, then the table: an index the new table gives is valid at once.
    module_sites::publish(sites);
    Ok(count)
}

/// Takes target module `module`'s sites out of every ops (`ops::forget_range`,
/// each traced site back to its nop), then, in the same hold of the ops
/// registry's lock, unpublishes its table and drops its states. Returns
/// whether it had a table. The table itself is freed after a grace period
/// (see `module_sites`).
pub fn remove_module(module: &str) -> bool {
    // Safety: preemption is off while the memory range is read.
    let memory = {
        let _preempt = crate::thread::preempt_disable();
        unsafe { module_sites::tables() }.iter().find(|sites| sites.module == module).map(|sites| sites.memory.clone())
    };
    let Some(memory) = memory else { return false };
    // The table goes under the registry's lock too (registry, then states:
    // the lock order), so a registration cannot pick its sites up again
    // after they left every ops.
    super::ops::forget_range(memory, || {
        let mut states = STATES.lock();
        let Some((base, _)) = module_sites::unpublish(module) else { return false };
        states.modules.remove(&base);
        true
    })
}

/// The (global entry, site) of the function `name` (the `position`th of that
/// name, from 1) in loaded target module `module`'s sites; `Err(None)` when
/// the module has no table.
pub fn module_entry(module: &str, name: &str, position: Option<usize>) -> Result<(u64, u64), Option<NameError>> {
    let _preempt = crate::thread::preempt_disable();
    // Safety: preemption is off for as long as the table is used.
    let tables = unsafe { module_sites::tables() };
    let sites = tables.iter().find(|sites| sites.module == module).ok_or(None)?;
    sites.table.named_entry(name, position).map(|site| (site.function, site.address)).map_err(Some)
}

/// The name of the function whose site is `ip`, in the kernel or a module.
#[notrace]
pub fn name_of(ip: u64) -> Option<String> {
    let _preempt = crate::thread::preempt_disable();
    // Safety: preemption is off for as long as the tables are used.
    unsafe { every_table() }.find_map(|(_, table)| table.at(ip).map(|site| String::from(site.name)))
}

// The table's lookups that `ops` resolves its filters with.

// Every one of these runs in a read-side section: `ops` calls them with
// its registry's lock held (preemption off).

/// Indices of the sites whose function name matches `glob` (see `SiteTable::matching`), kernel and modules.
#[notrace]
pub(super) fn matching(glob: &str) -> Vec<usize> {
    // The kernel's indices are its table's own (base 0): taken as they are.
    let mut indices = table().matching(glob);
    // Safety: the caller's read-side section (above).
    for module in unsafe { module_sites::tables() }.iter() {
        indices.extend(module.table.matching(glob).into_iter().map(|index| module.base + index));
    }
    indices
}

/// Indices of the sites of the functions named exactly `name` (`*` and `?` are
/// plain characters here; see `SiteTable::named`), kernel and modules.
#[notrace]
pub(super) fn named(name: &str) -> Vec<usize> {
    // Safety: as above.
    unsafe { every_table() }
        .flat_map(|(base, table)| table.named(name).into_iter().map(move |index| base + index))
        .collect()
}

/// Index of the site of the function at `address`, its global entry or site word.
#[notrace]
pub(super) fn index_of(address: u64) -> Option<usize> {
    // Safety: as above.
    unsafe { every_table() }.find_map(|(base, table)| table.index_of(address).map(|index| base + index))
}

/// `index_of` for a batch in address order: (index, site address) of the
/// function at `address` (global entry or site word), searched first in the
/// kernel's table from `hint` (the previous find's index) onwards, doubling
/// the step: a run of neighbouring functions (a patch's) costs a step or two
/// each, not a whole binary search. Anything else (an address before `hint`,
/// a module's) falls back to `index_of`.
#[notrace]
pub(super) fn index_of_near(address: u64, hint: usize) -> Option<(usize, u64)> {
    let sites = table().sites();
    if let Some(start) = sites.get(hint)
        && start.address <= address.saturating_add(8)
        && sites.last().is_some_and(|last| address <= last.address)
    {
        // The first site whose word is at or after `address` is its only candidate (`SiteTable::index_of`).
        let (mut low, mut step) = (hint, 1);
        while low + step < sites.len() && sites[low + step].address < address {
            low += step;
            step *= 2;
        }
        let high = (low + step + 1).min(sites.len());
        let found = low + sites[low..high].partition_point(|site| site.address < address);
        if let Some(site) = sites.get(found)
            && (site.function == address || site.address == address)
        {
            return Some((found, site.address));
        }
    }
    let index = index_of(address)?;
    Some((index, address_of(index)?))
}

/// The site address of index `index`, if it is a site's.
#[notrace]
pub(super) fn address_of(index: usize) -> Option<u64> {
    // Safety: as above.
    site(index).map(|site| site.address)
}

/// Indices of the sites of `addresses`; the first address without a site is the error.
#[notrace]
pub(super) fn indices_of(addresses: &[u64]) -> Result<Vec<usize>, u64> {
    addresses.iter().map(|&address| index_of(address).ok_or(address)).collect()
}

/// Site addresses of `indices`, sorted (an index of no site is left out).
#[notrace]
pub(super) fn addresses(indices: &[usize]) -> Vec<u64> {
    if indices.iter().all(|&index| index < MODULE_STRIDE) {
        // Kernel sites only: the table's own (sorted already, no look-ups).
        return table().addresses(indices);
    }
    let mut addresses: Vec<u64> = indices.iter().filter_map(|&index| site(index)).map(|site| site.address).collect();
    addresses.sort_unstable();
    addresses
}

/// Why `apply` changed nothing.
pub(super) enum ApplyError {
    Site(u64, SiteError),
    Text(TextError),
}

/// A site as the shell and tests see it.
pub struct SiteSummary {
    pub name: String,
    pub function: u64,
    pub address: u64,
    /// The stub its word calls now (`Caller::None` for every site while ftrace is off).
    pub caller: Caller,
    pub users: u32,
    /// The names of the registered ops that trace it, in registration order.
    pub ops: Vec<&'static str>,
}

/// Every site with its current state.
#[notrace]
pub fn site_summaries() -> Vec<SiteSummary> {
    // The registry first, as registration takes it before the states.
    let registered = super::ops::registered_ops();
    let states = STATES.lock();
    let on = ENABLED.load(Ordering::Acquire);
    // Safety: the states' lock is held: preemption is off, a read-side section.
    let modules = unsafe { module_sites::tables() };
    let module_sites = modules.iter().flat_map(|module| {
        module.table.sites().iter().zip(states.modules.get(&module.base).map_or(&[][..], |states| &states[..]))
    });
    table()
        .sites()
        .iter()
        .zip(states.kernel.iter())
        .chain(module_sites)
        .map(|(site, state)| SiteSummary {
            name: String::from(site.name),
            function: site.function,
            address: site.address,
            caller: if on { state.caller() } else { Caller::None },
            users: state.users,
            // Safety: the states' lock is held, so preemption is off: a read-side section.
            ops: registered
                .iter()
                .filter(|ops| unsafe { super::ops::traces(ops, site.address) })
                .map(|ops| ops.name)
                .collect(),
        })
        .collect()
}
