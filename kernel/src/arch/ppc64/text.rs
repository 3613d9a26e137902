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
/// then makes instruction fetch see it, on every CPU: the store, the flush
/// on this CPU, then an `isync` run by every other online CPU
/// (`smp::synchronize_other_cpus`) before it returns. On a mismatch nothing
/// is written. Other CPUs may be executing the word meanwhile: every word
/// changed after boot is of the ISA's patch class (`nop`, `b`, `bl`), and a
/// single aligned store of one is seen whole by every fetch, on any CPU: the
/// old instruction or the new one. Writers are serialised by their callers'
/// locks (ftrace's registry), so nothing changes a word between its check
/// and its store. Changes of more than one word go in an order that is
/// correct at every instant (docs/ftrace.md), or all-or-nothing with `modify_all`.
#[notrace]
pub fn modify_code(address: u64, old: u32, new: u32) -> Result<(), TextError> {
    modify_code_local(address, old, new)?;
    end_batch(address);
    Ok(())
}

/// `modify_code` without the cross-CPU step: checks, stores and flushes on
/// this CPU. For a batch of words (a bulk enable), each written this way,
/// then one `end_batch`: one IPI round trip per batch, not per word, as
/// Linux synchronises once per batch. Until the batch ends, another CPU may
/// still run a word's old instruction (prefetched) or already its new one:
/// callers write batches whose words are independent (each site alone is
/// correct either way).
#[notrace]
pub fn modify_code_local(address: u64, old: u32, new: u32) -> Result<(), TextError> {
    validate(address, old)?;
    // Safety: aligned kernel text; the caller owns the change (see `modify_code`).
    unsafe { (address as *mut u32).write_volatile(new) };
    // One load of the log's switch for both steps: every word of a bulk
    // enable pays for it (the log exists for the protocol's test).
    let recording = log::recording();
    if recording {
        log::record(log::Step::Written, address);
    }
    cache::synchronize_instructions(address, 4);
    if recording {
        log::record(log::Step::Flushed, address);
    }
    Ok(())
}

/// Ends a change of text (one word, or a batch written by
/// `modify_code_local`): every other online CPU runs its context-synchronising
/// `isync` before this returns (`smp::synchronize_other_cpus`). `address` is
/// what the log records for the return (the last word changed).
#[notrace]
pub fn end_batch(address: u64) {
    super::smp::synchronize_other_cpus();
    if log::recording() {
        log::record(log::Step::Returned, address);
    }
}

/// `modify_code_local` for a block of consecutive words (a livepatch
/// trampoline's entry half, or a pristine slot whole): every word at
/// `address` checked against `old` first, nothing written on a mismatch;
/// then every word of `new` stored and the block flushed once on this CPU
/// (not word by word). No one executes the block's words meanwhile (a
/// trampoline no site branches to and no CPU is in: the callers' grace
/// period), so their order does not matter; the caller ends the batch
/// (`end_batch`) before anything branches to them.
/// The check and the copy go eight bytes at a time when `address` and both
/// slices are 8-byte aligned (a trampoline's slot and its patterns are), in
/// volatile accesses of the text (never a library `memcmp`/`memcpy`, which
/// go a byte at a time here): a 100-function patch writes 100 blocks.
#[notrace]
pub fn modify_block_local(address: u64, old: &[u32], new: &[u32]) -> Result<(), TextError> {
    assert_eq!(old.len(), new.len(), "a block's old and new words");
    if !address.is_multiple_of(4) {
        return Err(TextError::Misaligned { address });
    }
    let text = address as *mut u32;
    // Safety: aligned kernel text, `old.len()` words; the caller owns the
    // block (nothing else reads or writes it meanwhile). Volatile: text is
    // read and written as it is, word for word, never by a library call.
    let pairs = address.is_multiple_of(8)
        && (old.as_ptr() as usize).is_multiple_of(8)
        && (new.as_ptr() as usize).is_multiple_of(8)
        && old.len().is_multiple_of(2);
    let same = if pairs {
        let (text, old) = (text as *const u64, old.as_ptr() as *const u64);
        (0..new.len() / 2).all(|index| unsafe { text.add(index).read_volatile() == old.add(index).read() })
    } else {
        (0..old.len()).all(|index| unsafe { text.add(index).read_volatile() } == old[index])
    };
    if !same {
        // The first word that differs, for the error (the slow path).
        let (index, found) = (0..old.len())
            .map(|index| (index, unsafe { text.add(index).read_volatile() }))
            .find(|&(index, found)| found != old[index])
            .unwrap_or((0, old[0]));
        return Err(TextError::Mismatch { address: address + 4 * index as u64, expected: old[index], found });
    }
    if pairs {
        let (text, new) = (text as *mut u64, new.as_ptr() as *const u64);
        for index in 0..old.len() / 2 {
            // Safety: as above.
            unsafe { text.add(index).write_volatile(new.add(index).read()) };
        }
    } else {
        for (index, &word) in new.iter().enumerate() {
            // Safety: as above.
            unsafe { text.add(index).write_volatile(word) };
        }
    }
    let recording = log::recording();
    if recording {
        log::record(log::Step::Written, address);
    }
    cache::synchronize_instructions(address, 4 * new.len() as u64);
    if recording {
        log::record(log::Step::Flushed, address);
    }
    Ok(())
}

/// Makes every change `(address, old, new)` or none: checks every old word
/// first and writes only when all match, so a mismatch anywhere (the second
/// of two stub call sites, say) leaves the first as it was. The caller keeps
/// other threads off the instructions, as for `modify_code`, so nothing can
/// change a word between its check and its write. The other CPUs synchronise
/// once, after the last word (`end_batch`).
#[notrace]
pub fn modify_all(changes: &[(u64, u32, u32)]) -> Result<(), TextError> {
    for &(address, old, _) in changes {
        validate(address, old)?;
    }
    let mut last = 0;
    for &(address, old, new) in changes {
        modify_code_local(address, old, new)?;
        last = address;
    }
    end_batch(last);
    Ok(())
}

/// The order of the steps of text changes, for the test that checks the
/// protocol (`tests::smp`): under QEMU's TCG instruction caches stay
/// coherent, so a missing step has no visible effect there, and the test
/// checks the order instead. Records only while started; one word a step.
pub mod log {
    use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use macros::notrace;

    /// Room for the steps of a few changes.
    pub const CAPACITY: usize = 64;

    /// A step of `modify_code`, and on which CPU it ran.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    #[repr(u64)]
    pub enum Step {
        /// The writing CPU stored the new word.
        Written = 1,
        /// It flushed it (`dcbst; sync; icbi; sync; isync`).
        Flushed = 2,
        /// Another CPU ran its `isync` (in its IPI handler).
        Synchronized = 3,
        /// `modify_code` returned.
        Returned = 4,
        /// A grace period began (`sync::synchronize_sched`), on the CPU that waits.
        GracePeriod = 5,
        /// The stubs' op (`function_trace_op`) was stored (`trace::ops`).
        OpStored = 6,
    }

    static RECORDING: AtomicU64 = AtomicU64::new(0);
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    static ENTRIES: [AtomicU64; CAPACITY] = [const { AtomicU64::new(0) }; CAPACITY];
    /// The address each step is about (0 for a CPU's `isync`, which is about every change).
    static ADDRESSES: [AtomicU64; CAPACITY] = [const { AtomicU64::new(0) }; CAPACITY];

    /// Empties the log and starts recording.
    pub fn start() {
        NEXT.store(0, Ordering::Relaxed);
        RECORDING.store(1, Ordering::Release);
    }

    /// Stops recording and returns the steps as (step, CPU), in order.
    pub fn stop() -> alloc::vec::Vec<(Step, usize)> {
        stop_with_addresses().into_iter().map(|(step, cpu, _)| (step, cpu)).collect()
    }

    /// Stops recording and returns the steps as (step, CPU, address), in order.
    pub fn stop_with_addresses() -> alloc::vec::Vec<(Step, usize, u64)> {
        RECORDING.store(0, Ordering::Release);
        let count = NEXT.load(Ordering::Acquire).min(CAPACITY);
        let steps =
            [Step::Written, Step::Flushed, Step::Synchronized, Step::Returned, Step::GracePeriod, Step::OpStored];
        ENTRIES[..count]
            .iter()
            .zip(&ADDRESSES)
            .filter_map(|(entry, address)| {
                let word = entry.load(Ordering::Relaxed);
                let step = steps.into_iter().find(|&step| step as u64 == word >> 32)?;
                Some((step, (word & 0xffff_ffff) as usize, address.load(Ordering::Relaxed)))
            })
            .collect()
    }

    /// Whether the log records. A relaxed load is enough: the CPU that starts
    /// the log is the one that patches, and another CPU records only in the
    /// IPI handler of a call posted (with release) after the start.
    #[notrace]
    #[inline(always)]
    pub fn recording() -> bool {
        RECORDING.load(Ordering::Relaxed) != 0
    }

    /// Appends `step` about `address` on this CPU, if recording.
    #[notrace]
    #[inline(always)]
    pub fn record(step: Step, address: u64) {
        if !recording() {
            return;
        }
        let index = NEXT.fetch_add(1, Ordering::AcqRel);
        if let (Some(entry), Some(slot)) = (ENTRIES.get(index), ADDRESSES.get(index)) {
            let cpu = super::super::percpu::smp_processor_id() as u64;
            slot.store(address, Ordering::Relaxed);
            entry.store((step as u64) << 32 | cpu, Ordering::Release);
        }
    }
}
