//! How a BUG is placed (Linux: asm/bug.h): a trap instruction and a `BugEntry` record in `.bug_table`.
//!
//! `bug!()` in Rust and the `bug_entry` assembler macro both emit the trap
//! and the record; the generic `bug` module reads the table and the exception code
//! reports a program check at a recorded address as `kernel BUG at FILE:LINE!`.

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

/// An unconditional BUG: traps; the handler prints the location and kills the thread.
#[macro_export]
macro_rules! bug {
    () => {{
        static LOCATION: $crate::arch::bug::BugLocation = $crate::arch::bug::BugLocation {
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

/// Assembler macro `bug_entry TRAP_LABEL, "FILE", LINE` for `global_asm!` code:
/// records the trap instruction at TRAP_LABEL. Pass `bug_entry_macro!()`
/// (`use super::bug::bug_entry_macro`) as the first template string of each
/// `global_asm!` block that uses it, and `bug_entry_end!()` as its last (the
/// blocks may be assembled as one, where a macro can be defined only once).
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
pub(crate) use bug_entry_macro;

/// Ends the use of `bug_entry` in a `global_asm!` block (see `bug_entry_macro`).
macro_rules! bug_entry_end {
    () => {
        "\n    .purgem bug_entry\n"
    };
}
pub(crate) use bug_entry_end;
