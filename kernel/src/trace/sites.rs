//! The entry sites: every `__patchable_function_entries` record, validated and named once at boot
//! (`portable::site_table::SiteTable`), and who traces each one now.
use crate::arch::ftrace::{SiteChange, ftrace_caller, ftrace_init_nop, ftrace_prepare_change, ftrace_regs_caller};
use crate::arch::text::TextError;
use crate::sync::Mutex;
use crate::{println, symbols};
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};
use macros::notrace;
use portable::ftrace::{Caller, Demand, SiteError, SiteState};
use portable::site_table::{Site, SiteTable};
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

/// What changes: who traces each site, in the table's order. Filled before
/// the table is published, so every index the table gives is valid here.
static STATES: Mutex<Vec<SiteState>> = Mutex::new(Vec::new());

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
    let sites = table().sites();
    let states = STATES.lock();
    if ENABLED.load(Ordering::Acquire) == on {
        return Ok(());
    }
    let mut planned = Vec::new();
    for (site, state) in sites.iter().zip(states.iter()) {
        let Some(stub) = stub(state.caller()) else { continue };
        let (old, new) = if on { (None, Some(stub)) } else { (Some(stub), None) };
        planned.push(ftrace_prepare_change(site.address, old, new).map_err(ApplyError::Text)?);
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
    *STATES.lock() = vec![SiteState::default(); valid];
    TABLE.call_once(|| SiteTable::new(sites));
    (valid, rejected)
}

/// The change of one site's word that moving it from `state` to `new_state`
/// needs, checked against the word there now; `None` if the stub it calls
/// stays the same.
#[notrace]
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
    let sites = table().sites();
    let mut states = STATES.lock();
    let on = ENABLED.load(Ordering::Acquire);
    let mut planned = Vec::with_capacity(indices.len());
    let mut changes = Vec::with_capacity(indices.len());
    for &index in indices {
        let mut state = states[index];
        let checked = if adding { state.add(demand) } else { state.remove(demand) };
        checked.map_err(|error| ApplyError::Site(sites[index].function, error))?;
        if on && let Some(change) = prepare(&sites[index], states[index], state).map_err(ApplyError::Text)? {
            changes.push(change);
        }
        planned.push(state);
    }
    // Every word written and flushed here, then the other CPUs synchronise
    // once for the batch (`SiteChange::end_batch`), also after an undo; a
    // batch that writes nothing asks nothing of them.
    commit_all(&changes)?;
    for (&index, &state) in indices.iter().zip(&planned) {
        states[index] = state;
    }
    Ok(())
}

// The table's lookups that `ops` resolves its filters with.

/// Indices of the sites whose function name matches `glob` (see `SiteTable::matching`).
#[notrace]
pub(super) fn matching(glob: &str) -> Vec<usize> {
    table().matching(glob)
}

/// Indices of the sites of the functions named exactly `name` (`*` and `?` are
/// plain characters here; see `SiteTable::named`).
#[notrace]
pub(super) fn named(name: &str) -> Vec<usize> {
    table().named(name)
}

/// Index of the site of the function at `address`, its global entry or site word.
#[notrace]
pub(super) fn index_of(address: u64) -> Option<usize> {
    table().index_of(address)
}

/// Indices of the sites of `addresses`; the first address without a site is the error.
#[notrace]
pub(super) fn indices_of(addresses: &[u64]) -> Result<Vec<usize>, u64> {
    table().indices_of(addresses)
}

/// Site addresses of `indices`, sorted.
#[notrace]
pub(super) fn addresses(indices: &[usize]) -> Vec<u64> {
    table().addresses(indices)
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
    table()
        .sites()
        .iter()
        .zip(states.iter())
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
