//! The entry-site table: every `__patchable_function_entries` record, validated and named.
use crate::arch::ftrace::{
    ftrace_caller, ftrace_init_nop, ftrace_make_call, ftrace_make_nop, ftrace_modify_call, ftrace_regs_caller,
};
use crate::arch::text::TextError;
use crate::sync::Mutex;
use crate::{println, symbols};
use alloc::string::String;
use alloc::vec::Vec;
use macros::notrace;
use portable::ftrace::{Caller, Demand, SiteError, SiteState};
use spin::Once;

/// One traceable function.
#[derive(Clone)]
pub struct Site {
    /// The function's global entry point (its symbol address).
    pub function: u64,
    /// The site's second word, the one that becomes a call of a stub: the ip handlers see.
    pub address: u64,
    /// The function's name from the embedded symbol table, looked up once at boot.
    pub name: &'static str,
    pub state: SiteState,
}

pub(super) static SITES: Mutex<Vec<Site>> = Mutex::new(Vec::new());
/// (hash of the name, site index), sorted by hash then address: an exact-name
/// lookup is a binary search over integers and one string comparison, where
/// a search over the names themselves compares long common prefixes
/// ("kernel::...") byte by byte at every step.
static NAMES: Once<Vec<(u64, usize)>> = Once::new();

/// What never changes after boot, per site (same order as SITES): lookups by
/// name or address read it without taking the lock.
#[repr(C)]
pub struct SiteInfo {
    function: u64,
    address: u64,
    name: &'static str,
}

/// (address of the site table, entries, bytes per entry), for the debugger:
/// each entry is the function, the site word's address, then the name as a
/// pointer and a length.
pub fn debug_table() -> (u64, u64, u64) {
    let info = info();
    (info.as_ptr() as u64, info.len() as u64, core::mem::size_of::<SiteInfo>() as u64)
}
static INFO: Once<Vec<SiteInfo>> = Once::new();

#[notrace]
fn info() -> &'static [SiteInfo] {
    INFO.get().map_or(&[], |info| info.as_slice())
}

/// A word-at-a-time multiplicative hash (the FxHash step): eight bytes per
/// round, good enough to spread symbol names, which are verified anyway.
#[notrace]
fn name_hash(name: &str) -> u64 {
    const SEED: u64 = 0x517c_c1b7_2722_0a95;
    let bytes = name.as_bytes();
    let mut hash = bytes.len() as u64;
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let word = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        hash = (hash.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
    // The last 0-7 bytes, gathered without a memcpy call.
    let tail = chunks.remainder().iter().rev().fold(0u64, |word, &byte| (word << 8) | byte as u64);
    (hash.rotate_left(5) ^ tail).wrapping_mul(SEED)
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
        sites.push(Site { function, address, name, state: SiteState::default() });
    }
    sites.sort_by_key(|site| site.address);
    let valid = sites.len();
    let mut names: Vec<(u64, usize)> =
        sites.iter().enumerate().map(|(index, site)| (name_hash(site.name), index)).collect();
    names.sort_unstable();
    NAMES.call_once(|| names);
    INFO.call_once(|| {
        sites.iter().map(|site| SiteInfo { function: site.function, address: site.address, name: site.name }).collect()
    });
    *SITES.lock() = sites;
    (valid, rejected)
}

/// The function (global entry) whose site is at `ip`.
#[notrace]
pub fn function_of(ip: u64) -> Option<u64> {
    let sites = SITES.lock();
    sites.binary_search_by_key(&ip, |site| site.address).ok().map(|index| sites[index].function)
}

/// Moves one site from `state` to `new_state`, rewriting its word if the stub changes.
#[notrace]
pub(super) fn retarget(site: &Site, new_state: SiteState) -> Result<(), TextError> {
    let (old, new) = (site.state.caller(), new_state.caller());
    if old == new {
        return Ok(());
    }
    match (stub(old), stub(new)) {
        (None, Some(new)) => ftrace_make_call(site.address, new),
        (Some(old), None) => ftrace_make_nop(site.address, old),
        (Some(old), Some(new)) => ftrace_modify_call(site.address, old, new),
        (None, None) => Ok(()),
    }
}

/// Applies `demand` (add or remove) to the sites at `indices`, patching as
/// needed; on any failure undoes what it did and reports the first error.
#[notrace]
pub(super) fn apply(indices: &[usize], demand: Demand, adding: bool) -> Result<(), ApplyError> {
    let mut sites = SITES.lock();
    for &index in indices {
        let mut state = sites[index].state;
        let checked = if adding { state.add(demand) } else { state.remove(demand) };
        if let Err(error) = checked {
            return Err(ApplyError::Site(sites[index].function, error));
        }
    }
    for (done, &index) in indices.iter().enumerate() {
        let mut state = sites[index].state;
        let _ = if adding { state.add(demand) } else { state.remove(demand) };
        if let Err(error) = retarget(&sites[index], state) {
            for &undo in indices[..done].iter().rev() {
                let mut previous = sites[undo].state;
                let _ = if adding { previous.remove(demand) } else { previous.add(demand) };
                let current = sites[undo].clone();
                let _ = retarget(&current, previous);
                sites[undo].state = previous;
            }
            return Err(ApplyError::Text(error));
        }
        sites[index].state = state;
    }
    Ok(())
}

/// Why `apply` changed nothing.
pub(super) enum ApplyError {
    Site(u64, SiteError),
    Text(TextError),
}

/// Indices of the sites whose function name matches `glob` (a plain name
/// without `*` or `?` is compared exactly, which is much cheaper).
#[notrace]
pub(super) fn matching(glob: &str) -> Vec<usize> {
    if !glob.contains(['*', '?']) {
        return named(glob);
    }
    let sites = SITES.lock();
    sites
        .iter()
        .enumerate()
        .filter(|(_, site)| portable::ftrace::glob_match(glob, site.name))
        .map(|(index, _)| index)
        .collect()
}

/// Index of the site of the function at `address` (its global entry or site
/// word): a binary search, since a site lies 4 or 12 bytes after its entry.
#[notrace]
pub(super) fn index_of(address: u64) -> Option<usize> {
    index_in(info(), address)
}

#[notrace]
fn index_in(sites: &[SiteInfo], address: u64) -> Option<usize> {
    let first = sites.partition_point(|site| site.address < address);
    sites[first..]
        .iter()
        .take(2)
        .position(|site| site.function == address || site.address == address)
        .map(|offset| first + offset)
}

/// Site indices of the functions named exactly `name`, in address order.
#[notrace]
pub fn named(name: &str) -> Vec<usize> {
    let hash = name_hash(name);
    let index = NAMES.get().map_or(&[][..], |names| names.as_slice());
    let sites = info();
    let first = index.partition_point(|(other, _)| *other < hash);
    index[first..]
        .iter()
        .take_while(|(other, _)| *other == hash)
        .filter(|(_, site)| sites[*site].name == name)
        .map(|(_, site)| *site)
        .collect()
}

/// Why `named_entry` found no single function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameError {
    /// No traceable function has the name.
    Missing,
    /// Several have it and no position was given.
    Ambiguous { count: usize },
    /// The position is not in 1..=count.
    BadPosition { count: usize },
}

/// The (global entry, site) of the function named exactly `name`; with a
/// 1-based `position` among several of that name, in address order. No
/// allocation: this runs once per function of a patch being enabled.
#[notrace]
pub fn named_entry(name: &str, position: Option<usize>) -> Result<(u64, u64), NameError> {
    let hash = name_hash(name);
    let index = NAMES.get().map_or(&[][..], |names| names.as_slice());
    let sites = info();
    let first = index.partition_point(|(other, _)| *other < hash);
    // One pass: count the functions of that name, keep the wanted one.
    let wanted = position.unwrap_or(1);
    let (mut count, mut chosen) = (0, None);
    for (other, site) in &index[first..] {
        if *other != hash {
            break;
        }
        if same_bytes(sites[*site].name.as_bytes(), name.as_bytes()) {
            count += 1;
            if count == wanted {
                chosen = Some(*site);
            }
        }
    }
    match (count, position, chosen) {
        (0, _, _) => Err(NameError::Missing),
        (1, None, Some(site)) | (_, Some(_), Some(site)) => Ok((sites[site].function, sites[site].address)),
        (count, None, _) => Err(NameError::Ambiguous { count }),
        (count, Some(_), None) => Err(NameError::BadPosition { count }),
    }
}

/// Byte equality, eight bytes at a time (the compiler_builtins memcmp the
/// kernel links compares one byte per iteration).
#[notrace]
fn same_bytes(left: &[u8], right: &[u8]) -> bool {
    if left.len() != right.len() {
        return false;
    }
    let (left_words, left_tail) = left.split_at(left.len() / 8 * 8);
    let (right_words, right_tail) = right.split_at(left_words.len());
    for (a, b) in left_words.chunks_exact(8).zip(right_words.chunks_exact(8)) {
        if u64::from_ne_bytes(a.try_into().expect("8 bytes")) != u64::from_ne_bytes(b.try_into().expect("8 bytes")) {
            return false;
        }
    }
    left_tail.iter().zip(right_tail).all(|(a, b)| a == b)
}

/// Indices of the sites of `addresses` (global entries or site words); the
/// first address without a site is the error.
#[notrace]
pub(super) fn indices_of(addresses: &[u64]) -> Result<Vec<usize>, u64> {
    let sites = info();
    addresses.iter().map(|&address| index_in(sites, address).ok_or(address)).collect()
}

/// Site addresses of `indices`, sorted.
#[notrace]
pub(super) fn addresses(indices: &[usize]) -> Vec<u64> {
    let sites = SITES.lock();
    let mut addresses: Vec<u64> = indices.iter().map(|&index| sites[index].address).collect();
    addresses.sort_unstable();
    addresses
}

/// A site as the shell and tests see it.
pub struct SiteSummary {
    pub name: String,
    pub function: u64,
    pub address: u64,
    pub caller: Caller,
    pub users: u32,
}

/// Every site with its current state.
#[notrace]
pub fn site_summaries() -> Vec<SiteSummary> {
    SITES
        .lock()
        .iter()
        .map(|site| SiteSummary {
            name: String::from(site.name),
            function: site.function,
            address: site.address,
            caller: site.state.caller(),
            users: site.state.users,
        })
        .collect()
}
