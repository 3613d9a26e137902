//! Linker-bracketed sections of fixed-size records (`.ktests`, `.bug_table`, `.klp_exports`, ...), read as slices.
use macros::notrace;

/// The records between `start` and `end`, two symbols the linker script
/// places around one section.
///
/// # Safety
/// `start` and `end` bracket a section that holds only `T` records, aligned
/// for `T`, and that nothing writes after the kernel is linked.
#[notrace]
#[inline(always)]
pub unsafe fn records<T>(start: *const T, end: *const T) -> &'static [T] {
    // Safety: the caller's promise: one section of T records from start to end.
    unsafe { core::slice::from_raw_parts(start, end.offset_from(start) as usize) }
}
