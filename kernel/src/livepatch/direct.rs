//! Direct calls for final patches: which patched functions branch straight to a trampoline, and the pool's slots.
//!
//! A function whose topmost replacement C belongs to a patch not in
//! transition has one answer for every thread, so its site can branch to a
//! trampoline made for C (`arch::trampoline`) instead of going through
//! `ftrace_caller`, the handler's table and `livepatch_handler`. The
//! livepatch ops owns the site (IPMODIFY) either way and its handler's table
//! keeps the function's entry, so a call that meets the site's old word (the
//! stub) ends in the same C as one that meets the new (the trampoline); and
//! when another ops traces the function too, ftrace keeps the site on the
//! stub (`trace::set_direct`) and the handler does the work, per thread.
//!
//! `redirect::apply` and `redirect::publish` call `leave` before they
//! publish a new table (a site whose C changes, that goes into transition,
//! or whose patch goes, is back on the stub while the old table, which
//! agrees with its trampoline, is still the one the handler reads) and
//! `enter` after (the new table already agrees with the new trampoline).
//! Direct calls can be switched off (`set_enabled`; the boot argument
//! `livepatch.direct=off`): every function then keeps the generic path.
use super::redirect::LIVEPATCH_OPS;
use crate::arch::text;
use crate::arch::trampoline::{self, SLOTS};
use crate::sync::Mutex;
use crate::trace::{self, FtraceError};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use portable::trampoline::CALL_WORDS;

/// Whether final patches use direct calls.
static ENABLED: AtomicBool = AtomicBool::new(true);
/// Functions that wanted a direct call and could not have one (no free
/// slot, or a replacement no trampoline can call): they keep the generic path.
static REFUSED: AtomicU64 = AtomicU64::new(0);

/// What a slot of the pool holds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// Never written: every word `trap`.
    Pristine,
    /// Freed: the entry half `trap`, the return half the template's.
    Free,
    /// The trampoline for `replacement`, the site that branches to it, and its call words.
    Live { site: u64, replacement: u64, call: [u32; CALL_WORDS] },
    /// Its site no longer branches here, but a CPU may still be in its entry
    /// half until a grace period passes (`reclaim`).
    Retired { call: [u32; CALL_WORDS] },
    /// Its words are not what this table says (a failed write): never used again.
    Lost,
}

struct Pool {
    slots: [Slot; SLOTS],
    /// (site, slot) of each site that has a trampoline, sorted by site, in
    /// `by_site[..live]` (one entry per live slot at most: no heap, so
    /// nothing here outlives the trampolines in the heap's figures).
    by_site: [(u64, usize); SLOTS],
    live: usize,
    /// Slots in the Retired state (`reclaim` frees them).
    retired: usize,
    /// Where the search for an available slot starts: one past the slot
    /// taken last, so the pool is used round, and a slot freed is taken
    /// again only after every other (a stray branch into a freed
    /// trampoline meets `trap` rather than another function's replacement
    /// for as long as possible).
    cursor: usize,
}

impl Pool {
    /// (site, slot) of each site that has a trampoline, by site.
    fn by_site(&self) -> &[(u64, usize)] {
        &self.by_site[..self.live]
    }

    /// The first pristine or free slot from the cursor on, round the pool.
    fn next_available(&self) -> Option<usize> {
        (0..SLOTS)
            .map(|step| (self.cursor + step) % SLOTS)
            .find(|&slot| matches!(self.slots[slot], Slot::Free | Slot::Pristine))
    }

    /// The slot of `site`'s trampoline.
    fn slot_of(&self, site: u64) -> Option<usize> {
        let by_site = self.by_site();
        by_site.binary_search_by_key(&site, |&(site, _)| site).ok().map(|found| by_site[found].1)
    }
}

/// The pool's bookkeeping; changed only under the livepatch lock (by
/// `redirect`), this lock orders readers (`summary`, tests).
static POOL: Mutex<Pool> =
    Mutex::new(Pool { slots: [Slot::Pristine; SLOTS], by_site: [(0, 0); SLOTS], live: 0, retired: 0, cursor: 0 });

/// Whether final patches use direct calls.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Acquire)
}

/// Switches direct calls on or off for every patched function at once
/// (`klp direct on|off`): off, every direct function goes back to the
/// generic path and its trampoline is freed; on, every final function that
/// nothing else traces gets one. Calls of the functions meanwhile, on any
/// CPU, run the same replacement throughout.
pub fn set_enabled(on: bool) -> Result<(), FtraceError> {
    super::set_direct_calls(on)
}

/// Reads the boot argument `livepatch.direct=off` (before any patch exists):
/// every patch then keeps the generic path until `klp direct on`.
pub fn configure(arguments: &str) {
    if arguments.split_whitespace().any(|word| word == "livepatch.direct=off") {
        store_enabled(false);
    }
    // Said from the setting itself: `cargo xtask test` requires this line
    // in every boot of its run with direct calls off.
    if !enabled() {
        crate::println!("klp: direct calls off (livepatch.direct=off)");
    }
}

/// Sets the flag (under the livepatch lock: `set_direct_calls`).
pub(super) fn store_enabled(on: bool) {
    ENABLED.store(on, Ordering::Release);
}

/// Functions refused a direct call since boot (they kept the generic path).
pub fn refused() -> u64 {
    REFUSED.load(Ordering::Relaxed)
}

/// (site, replacement, trampoline) of every direct function, by site.
pub fn summary() -> Vec<(u64, u64, u64)> {
    let pool = POOL.lock();
    pool.by_site()
        .iter()
        .filter_map(|&(site, slot)| match pool.slots[slot] {
            Slot::Live { replacement, .. } => Some((site, replacement, trampoline::slot_address(slot))),
            _ => None,
        })
        .collect()
}

/// (live, free or pristine) slots of the pool.
pub fn slots_in_use() -> (usize, usize) {
    let pool = POOL.lock();
    let live = pool.slots.iter().filter(|slot| matches!(slot, Slot::Live { .. })).count();
    let available = pool.slots.iter().filter(|slot| matches!(slot, Slot::Free | Slot::Pristine)).count();
    (live, available)
}

/// Takes every direct site whose (site, replacement) is not in `wanted`
/// back to the generic path (one batch of site words, every CPU
/// synchronised), stores the site words again (`trace::restore_words`:
/// what QEMU's threaded TCG needs), and retires their trampolines: `reclaim`
/// frees them after a grace period (a CPU may still be in a trampoline's
/// entry half until then: it is not preemptible). A site that no longer
/// exists (its target module went, taking its ftrace site along: the site
/// was made a nop then) only has its trampoline retired. On error no site
/// changed and nothing was retired.
pub(super) fn leave(wanted: &[(u64, u64)]) -> Result<(), FtraceError> {
    debug_assert!(wanted.is_sorted(), "wanted is the handler's table's order: by site");
    let mut pool = POOL.lock();
    let stays = |pool: &Pool, site: u64, slot: usize| match pool.slots[slot] {
        Slot::Live { replacement, .. } => wanted.binary_search(&(site, replacement)).is_ok(),
        _ => false,
    };
    // (site, None) of the sites that leave, by site; no allocation when none does.
    let targets: Vec<(u64, Option<u64>)> = pool
        .by_site()
        .iter()
        .filter(|&&(site, slot)| !stays(&pool, site, slot))
        .map(|&(site, _)| (site, None))
        .collect();
    if targets.is_empty() {
        return Ok(());
    }
    // The sites that still exist (a target module's went with its module).
    let existing: Vec<(u64, Option<u64>)> =
        targets.iter().copied().filter(|&(site, _)| trace::has_site(site)).collect();
    trace::set_direct(&LIVEPATCH_OPS, &existing)?;
    // Every CPU has run its `isync` in an IPI since the store: a block it
    // was translating then is linked by now, and this store invalidates it.
    let sites: Vec<u64> = existing.iter().map(|&(site, _)| site).collect();
    trace::restore_words(&sites);
    // Compacts `by_site` over the sites that left, retiring their slots.
    let mut kept = 0;
    for index in 0..pool.live {
        let (site, slot) = pool.by_site[index];
        if targets.binary_search(&(site, None)).is_err() {
            pool.by_site[kept] = (site, slot);
            kept += 1;
            continue;
        }
        if let Slot::Live { call, .. } = pool.slots[slot] {
            pool.slots[slot] = Slot::Retired { call };
            pool.retired += 1;
        }
    }
    pool.live = kept;
    Ok(())
}

/// Frees every retired trampoline (`leave`) after a grace period: no CPU
/// is in one's entry half any more (a thread still in its replacement
/// returns into the return half, which stays). Its entry half becomes
/// `trap` again.
pub(super) fn reclaim() {
    let mut pool = POOL.lock();
    if pool.retired == 0 {
        return;
    }
    crate::sync::synchronize_sched();
    for slot in 0..SLOTS {
        let Slot::Retired { call } = pool.slots[slot] else { continue };
        pool.slots[slot] = match trampoline::free(slot, &call) {
            Ok(()) => Slot::Free,
            Err(error) => {
                crate::println!("klp: freeing the trampoline at {:#x} failed: {error}", trampoline::slot_address(slot));
                Slot::Lost
            }
        };
    }
    pool.retired = 0;
}

/// Gives every (site, replacement) in `wanted` without a trampoline one:
/// writes them into free slots, synchronises every CPU once, then points
/// the sites at them (`trace::set_direct`, one batch). A function that
/// cannot have one keeps the generic path (counted in `refused`); nothing
/// here can make a call go wrong, so nothing is returned.
pub(super) fn enter(wanted: &[(u64, u64)]) {
    if !enabled() || wanted.is_empty() {
        return;
    }
    debug_assert!(wanted.is_sorted(), "wanted is the handler's table's order: by site");
    let mut pool = POOL.lock();
    // (site, slot) and (site, trampoline) of the trampolines written, by site.
    let room = wanted.len().min(SLOTS);
    let mut written: Vec<(u64, usize)> = Vec::with_capacity(room);
    let mut targets: Vec<(u64, Option<u64>)> = Vec::with_capacity(room);
    for &(site, replacement) in wanted {
        if pool.slot_of(site).is_some() {
            continue;
        }
        let Some(slot) = pool.next_available() else {
            REFUSED.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let address = trampoline::slot_address(slot);
        // The site must reach the slot with its `bl` (a target module's far
        // from the kernel may not): refused alone, the batch goes on.
        let reaches = portable::instruction::branch(site, address, true).is_ok();
        let Some(call) = trampoline::call_for(slot, replacement).ok().filter(|_| reaches) else {
            REFUSED.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        match trampoline::write(slot, &call, pool.slots[slot] == Slot::Free) {
            Ok(address) => {
                pool.slots[slot] = Slot::Live { site, replacement, call };
                pool.cursor = (slot + 1) % SLOTS;
                written.push((site, slot));
                targets.push((site, Some(address)));
            }
            Err(error) => {
                crate::println!("klp: writing the trampoline at {address:#x} failed: {error}");
                pool.slots[slot] = Slot::Lost;
            }
        }
    }
    let Some(&(_, Some(last))) = targets.last() else { return };
    // Every CPU fetches the trampolines before any site branches to them.
    text::end_batch(last);
    match trace::set_direct(&LIVEPATCH_OPS, &targets) {
        Ok(()) => {
            // One slot each: `live + written.len() <= SLOTS`.
            let (start, end) = (pool.live, pool.live + written.len());
            pool.by_site[start..end].copy_from_slice(&written);
            pool.live = end;
            pool.by_site[..end].sort_unstable_by_key(|&(site, _)| site);
        }
        Err(error) => {
            // Nothing changed, but a failed write was undone after the
            // writes before it: another CPU may have taken one of those
            // sites' `bl` into its trampoline meanwhile. So they are
            // retired as `leave` retires them: the words stored again, then
            // freed after a grace period (`reclaim`).
            crate::println!("klp: direct calls refused ({error}); the functions keep the generic path");
            REFUSED.fetch_add(written.len() as u64, Ordering::Relaxed);
            let sites: Vec<u64> = written.iter().map(|&(site, _)| site).collect();
            trace::restore_words(&sites);
            for (_, slot) in written {
                if let Slot::Live { call, .. } = pool.slots[slot] {
                    pool.slots[slot] = Slot::Retired { call };
                    pool.retired += 1;
                }
            }
            drop(pool);
            reclaim();
        }
    }
}
