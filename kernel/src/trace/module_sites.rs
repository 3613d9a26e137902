//! The ftrace sites of loadable target modules: one table per module, added when it loads and released when it goes.
//!
//! A module's `__patchable_function_entries` records (relocated to its
//! memory) are validated as the kernel's are at boot (each inside the
//! module's text, `ftrace_init_nop`), named from the module's symbols, and
//! published as one more immutable `SiteTable`. Site indices stay plain
//! `usize`s: the kernel's table has 0..N, each module table gets its own base
//! (a multiple of `MODULE_STRIDE`, never reused), so an index names a site
//! of one module only, even after that module went and another came.
//!
//! # Concurrency
//!
//! The list of module tables is a `Published<Vec<Arc<ModuleSites>>>`:
//! readers (the lookups `ops` resolves filters with, the tracers naming an
//! ip, `module::resolve_function`) run in read-side sections (preemption
//! off, or in a handler) and see either the list before a change or the list
//! after it, never a half-built one: the new list is complete before the one
//! atomic swap publishes it. Writers are serialised by the states' lock
//! (`sites::STATES`); a removal also holds the ops registry's, taken first
//! (the documented order).
//! - **Adding** a table: a reader that loaded the old list does not find the
//!   module's sites (true a moment ago: no site of it calls a stub yet, and
//!   no ops names it); one that loads the new list finds them all, each in
//!   state "untraced" (its states were inserted, under the same lock, before
//!   the swap). An interrupt or another CPU in between sees one of the two.
//! - **Removing** a table (at unload, after `ops::forget_range` took the
//!   module's sites out of every ops and every site went back to its nop,
//!   under the registry's lock, which the removal still holds: no
//!   registration can pick the sites up again in between):
//!   the swap unpublishes it; a reader still holding the old list (another
//!   CPU in a handler, an interrupted lookup) keeps using it safely, since
//!   the retired list, and with it the last `Arc` of the table and the names
//!   it points at, is freed only after the grace period
//!   (`synchronize_sched`), when no read-side section that could have loaded
//!   it is still running. What it finds there is stale (a module being
//!   unloaded, whose code no thread runs any more: `module::unload` checked),
//!   never freed memory.
//! - A preemption cannot happen inside a read-side section; a thread
//!   preempted between two sections may find a module gone in the second
//!   (its lookups then fail cleanly: no site).
use super::sites::{self, Site, SiteTable};
use crate::sync::{NonPreemptibleReaders, Published};
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use macros::notrace;

/// The distance between the first indices of two module tables (and the kernel's at 0).
pub const MODULE_STRIDE: usize = 1 << 32;

/// One module's sites.
pub struct ModuleSites {
    /// The module's name.
    pub module: String,
    /// The index of its first site.
    pub base: usize,
    /// Its memory, where every one of its sites lies.
    pub memory: core::ops::Range<u64>,
    /// The sites; their names point into `names`.
    pub table: SiteTable,
    /// The names the sites point at: kept as long as the table, never moved
    /// (each `String`'s buffer stays where it is when the vector moves).
    _names: Vec<String>,
}

static NO_MODULES: Vec<Arc<ModuleSites>> = Vec::new();
/// The published module tables.
static TABLES: Published<Vec<Arc<ModuleSites>>> = Published::new(&NO_MODULES, NonPreemptibleReaders);

/// The module tables, for a reader in a read-side section.
///
/// # Safety
///
/// The caller is in a read-side section of `NonPreemptibleReaders`
/// (preemption off, a lock held, or a handler) for as long as it uses the result.
#[notrace]
#[inline(always)]
pub unsafe fn tables() -> &'static [Arc<ModuleSites>] {
    // Safety: the caller's promise. The 'static is a lie the caller's
    // section makes true: the value lives until a grace period after it is replaced.
    unsafe { &*(TABLES.read().as_slice() as *const [Arc<ModuleSites>]) }
}

/// Builds module `module`'s table from its `(function, name)` list: each
/// function must be in one of `text` (the module's executable sections)
/// and have the two nops of a site (`ftrace_init_nop` prepares it, as at
/// boot). Nothing is published here; `publish` does it.
pub fn build(
    module: &str,
    memory: core::ops::Range<u64>,
    text: &[core::ops::Range<u64>],
    functions: Vec<(u64, String)>,
    base: usize,
) -> Result<ModuleSites, SiteRefused> {
    let mut sites = Vec::with_capacity(functions.len());
    let mut names = Vec::with_capacity(functions.len());
    for (function, name) in functions {
        if !function.is_multiple_of(4)
            || !text.iter().any(|range| range.contains(&function) && range.contains(&(function + 15)))
        {
            return Err(SiteRefused::Site { function, reason: String::from("not inside the module's text") });
        }
        let address = crate::arch::ftrace::ftrace_init_nop(function)
            .map_err(|error| SiteRefused::Site { function, reason: alloc::format!("{error}") })?;
        // Safety: `names` keeps the String, whose buffer never moves, for as
        // long as the table that holds this reference (see `ModuleSites`).
        let name_ref: &'static str = unsafe { &*(name.as_str() as *const str) };
        sites.push(Site { function, address, name: name_ref });
        names.push(name);
    }
    Ok(ModuleSites { module: String::from(module), base, memory, table: SiteTable::new(sites), _names: names })
}

/// Why a module's sites were refused (its load is refused with it).
#[derive(Debug)]
pub enum SiteRefused {
    /// A module of that name has sites already.
    Duplicate,
    /// The record of `function` is not a valid site.
    Site { function: u64, reason: String },
}

/// Publishes `sites` (caller: holds the states' lock, states inserted).
pub(super) fn publish(sites: ModuleSites) {
    // Safety: the states' lock is held: preemption is off, a read-side section; copied at once.
    let mut list: Vec<Arc<ModuleSites>> = unsafe { tables() }.to_vec();
    list.push(Arc::new(sites));
    TABLES.replace(list);
}

/// Unpublishes module `module`'s table (caller: holds the states' lock);
/// returns its base and memory. Freed after a grace period.
pub(super) fn unpublish(module: &str) -> Option<(usize, core::ops::Range<u64>)> {
    // Safety: as in `publish`.
    let current = unsafe { tables() };
    let gone = current.iter().find(|sites| sites.module == module)?;
    let found = (gone.base, gone.memory.clone());
    let list: Vec<Arc<ModuleSites>> = current.iter().filter(|sites| sites.module != module).cloned().collect();
    TABLES.replace(list);
    Some(found)
}

/// The table holding global index `index`, and the index inside it.
///
/// # Safety
///
/// As for `tables`.
#[notrace]
pub unsafe fn locate(index: usize) -> Option<(&'static SiteTable, usize)> {
    if index < MODULE_STRIDE {
        return Some((sites::table(), index));
    }
    // Safety: the caller's promise.
    let module = unsafe { tables() }.iter().find(|sites| sites.base == index - index % MODULE_STRIDE)?;
    Some((&module.table, index - module.base))
}
