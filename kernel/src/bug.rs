//! The BUG table: trap addresses recorded with the source location that placed them.
//!
//! `bug!()` in Rust and the `bug_entry` assembler macro (see `bug_entry_macro!`)
//! both emit a trap instruction and a `BugEntry` in the `.bug_table` section.
//! A program check at a recorded address prints `kernel BUG at FILE:LINE!` and
//! kills only the current thread.
use macros::notrace;

/// Where a BUG was placed.
#[repr(C)]
pub struct BugLocation {
    pub file_pointer: *const u8,
    pub file_length: usize,
    pub line: u32,
    pub flags: u32,
}

// Safety: points at string literals in read-only data.
unsafe impl Sync for BugLocation {}

impl BugLocation {
    /// The source file.
    pub fn file(&self) -> &'static str {
        // Safety: built from a `&'static str` (Rust macro) or an assembler
        // `.ascii` string of the recorded length (asm macro).
        unsafe { core::str::from_utf8_unchecked(core::slice::from_raw_parts(self.file_pointer, self.file_length)) }
    }
}

/// One `.bug_table` record.
#[repr(C)]
pub struct BugEntry {
    pub trap_address: u64,
    pub location: &'static BugLocation,
}

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

/// The location recorded for a trap at `address`.
#[notrace]
pub fn find(address: u64) -> Option<&'static BugLocation> {
    entries().iter().find(|entry| entry.trap_address == address).map(|entry| entry.location)
}

/// An unconditional BUG: traps; the handler prints the location and kills the thread.
#[macro_export]
macro_rules! bug {
    () => {{
        static LOCATION: $crate::bug::BugLocation = $crate::bug::BugLocation {
            file_pointer: file!().as_ptr(),
            file_length: file!().len(),
            line: line!(),
            flags: 0,
        };
        // Safety: `trap` raises a program check that the BUG handler takes; the
        // table entry only adds data.
        unsafe {
            core::arch::asm!(
                "1: trap",
                ".pushsection .bug_table, \"a\"",
                ".balign 8",
                ".quad 1b",
                ".quad {location}",
                ".popsection",
                location = sym LOCATION,
            );
        }
        unreachable!("BUG handler returned")
    }};
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

/// Assembler macro `bug_entry TRAP_LABEL, "FILE", LINE` for `global_asm!` code:
/// records the trap instruction at TRAP_LABEL. Pass `crate::bug_entry_macro!()`
/// as the first template string of each `global_asm!` block that uses it.
#[macro_export]
macro_rules! bug_entry_macro {
    () => {
        r#"
    .macro bug_entry trap_label, file, line
    .pushsection .rodata.bug_location, "a"
    .balign 8
.Lbug_location_\@:
    .quad .Lbug_file_\@
    .quad .Lbug_file_end_\@ - .Lbug_file_\@
    .long \line
    .long 0
.Lbug_file_\@:
    .ascii "\file"
.Lbug_file_end_\@:
    .popsection
    .pushsection .bug_table, "a"
    .balign 8
    .quad \trap_label
    .quad .Lbug_location_\@
    .popsection
    .endm
"#
    };
}
