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
    /// No relative branch at `address` reaches `target` (misaligned, or
    /// beyond the 32 MiB a `b`/`bl` reaches); nothing was written.
    OutOfReach { address: u64, target: u64 },
}

impl TextError {
    /// The instruction's address.
    pub fn address(&self) -> u64 {
        match *self {
            TextError::Mismatch { address, .. }
            | TextError::Misaligned { address }
            | TextError::OutOfReach { address, .. } => address,
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
            TextError::OutOfReach { address, target } => {
                write!(formatter, "no branch at {address:#x} reaches {target:#x}")
            }
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

/// Checks, writing nothing, that the instruction at `address` is `expected`.
#[notrace]
pub fn validate(address: u64, expected: u32) -> Result<(), TextError> {
    if !address.is_multiple_of(4) {
        return Err(TextError::Misaligned { address });
    }
    let found = read(address);
    if found != expected {
        return Err(TextError::Mismatch { address, expected, found });
    }
    Ok(())
}

/// Replaces the instruction at `address` with `new` if it currently is `old`,
/// then makes instruction fetch see it. On a mismatch nothing is written.
/// The caller keeps other threads off the instruction (preemption disabled:
/// on one CPU a single aligned store is seen whole by every later fetch;
/// `RUNNING_CPUS` says so at compile time).
#[notrace]
pub fn modify_code(address: u64, old: u32, new: u32) -> Result<(), TextError> {
    validate(address, old)?;
    // Safety: aligned kernel text; the caller owns the change (see above).
    unsafe { (address as *mut u32).write_volatile(new) };
    cache::synchronize_instructions(address, 4);
    Ok(())
}

/// Makes every change `(address, old, new)` or none: checks every old word
/// first and writes only when all match, so a mismatch anywhere (the second
/// of two stub call sites, say) leaves the first as it was. The caller keeps
/// other threads off the instructions, as for `modify_code`, so nothing can
/// change a word between its check and its write.
#[notrace]
pub fn modify_all(changes: &[(u64, u32, u32)]) -> Result<(), TextError> {
    for &(address, old, _) in changes {
        validate(address, old)?;
    }
    for &(address, old, new) in changes {
        modify_code(address, old, new)?;
    }
    Ok(())
}

/// The CPUs this kernel runs code on. Text patching (a checked word, one
/// store, nothing else running while preemption is off) and the grace period
/// of the tables traced calls read without a lock (`NonPreemptibleReaders`)
/// are correct only for one; each asserts this at compile time, so bringing
/// up a second CPU (raising it) fails to build until both are made SMP-safe
/// (Linux: `stop_machine` or `text_poke` with IPIs for the text, RCU for the tables).
pub const RUNNING_CPUS: usize = 1;
const _: () = assert!(RUNNING_CPUS == 1, "modify_code assumes one CPU: make it SMP-safe first");
