//! The one way to change kernel text: check the old instruction, write the new one, flush.
use super::cache;
use core::fmt;
use macros::notrace;

/// Why an instruction was not changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextError {
    /// The word in memory is not the one the caller expected; nothing was written.
    Mismatch { address: u64, expected: u32, found: u32 },
    /// The address is not 4-byte aligned.
    Misaligned { address: u64 },
}

impl TextError {
    /// The instruction's address.
    pub fn address(&self) -> u64 {
        match *self {
            TextError::Mismatch { address, .. } | TextError::Misaligned { address } => address,
        }
    }
}

impl fmt::Display for TextError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            TextError::Mismatch { address, expected, found } => {
                write!(formatter, "text at {address:#x}: expected {expected:08x} != found {found:08x}")
            }
            TextError::Misaligned { address } => write!(formatter, "text address {address:#x} is not 4-byte aligned"),
        }
    }
}

/// Reads the instruction at `address`.
#[notrace]
pub fn read(address: u64) -> u32 {
    // Safety: callers pass addresses of kernel text (aligned, mapped: real mode).
    unsafe { (address as *const u32).read_volatile() }
}

/// The local entry point of the function whose global entry is `function`
/// (8 bytes further when it starts with the TOC set-up pair): where a caller
/// that already holds the kernel TOC branches.
#[notrace]
pub fn local_entry(function: u64) -> u64 {
    function + portable::instruction::local_entry_offset(read(function), read(function + 4))
}

/// Replaces the instruction at `address` with `new` if it currently is `old`,
/// then makes instruction fetch see it. On a mismatch nothing is written.
/// The caller keeps other threads off the instruction (preemption disabled:
/// on one CPU a single aligned store is seen whole by every later fetch).
#[notrace]
pub fn modify_code(address: u64, old: u32, new: u32) -> Result<(), TextError> {
    if !address.is_multiple_of(4) {
        return Err(TextError::Misaligned { address });
    }
    let found = read(address);
    if found != old {
        return Err(TextError::Mismatch { address, expected: old, found });
    }
    // Safety: aligned kernel text; the caller owns the change (see above).
    unsafe { (address as *mut u32).write_volatile(new) };
    cache::synchronize_instructions(address, 4);
    Ok(())
}
