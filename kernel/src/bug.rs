//! The BUG table: trap addresses recorded with the source location that placed them.
//!
//! `bug!()` in Rust and the `bug_entry` assembler macro (`arch::bug`, where
//! the record's layout is defined) both emit a trap instruction and a
//! `BugEntry` in the `.bug_table` section. A program check at a recorded
//! address prints `kernel BUG at FILE:LINE!` and kills only the current thread.
use macros::notrace;

pub use crate::arch::bug::{BugEntry, BugLocation};

unsafe extern "C" {
    static __bug_table_start: BugEntry;
    static __bug_table_end: BugEntry;
}

/// All recorded BUG sites.
#[notrace]
pub fn entries() -> &'static [BugEntry] {
    // Safety: the linker script brackets `.bug_table` with these symbols and
    // the section holds only `BugEntry` records (8-byte aligned).
    unsafe { crate::section::records(&raw const __bug_table_start, &raw const __bug_table_end) }
}

/// The most recent BUG taken, for tests and the shell.
static LAST: core::sync::atomic::AtomicPtr<BugLocation> = core::sync::atomic::AtomicPtr::new(core::ptr::null_mut());

/// Remembers `location` as the most recent BUG.
#[notrace]
pub fn record_last(location: &'static BugLocation) {
    LAST.store(location as *const BugLocation as *mut BugLocation, core::sync::atomic::Ordering::SeqCst);
}

/// The most recent BUG taken, if any.
pub fn last() -> Option<&'static BugLocation> {
    // Safety: only `record_last` stores, with a 'static location.
    unsafe { LAST.load(core::sync::atomic::Ordering::SeqCst).as_ref() }
}

/// The location recorded for a trap at `address`. A trap in a direct-call
/// trampoline is its template's (the trampolines are copies of it, and
/// only the template's traps are in the table).
#[notrace]
pub fn find(address: u64) -> Option<&'static BugLocation> {
    let address = crate::arch::trampoline::template_address(address).unwrap_or(address);
    entries().iter().find(|entry| entry.trap_address == address).map(|entry| entry.location)
}

/// BUG if `condition` holds.
#[macro_export]
macro_rules! bug_on {
    ($condition:expr) => {
        if $condition {
            $crate::bug!();
        }
    };
}
