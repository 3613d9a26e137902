//! Making instruction fetches see freshly written instructions.
use macros::notrace;

/// Cache block size assumed for the flushes (128 bytes on POWER8 and later).
const CACHE_BLOCK: u64 = 128;

/// Pushes `length` bytes at `address` from the data cache and invalidates them
/// in the instruction cache (`dcbst; sync; icbi; isync`), so that written
/// instructions are the ones executed next.
#[notrace]
pub fn synchronize_instructions(address: u64, length: u64) {
    let start = address & !(CACHE_BLOCK - 1);
    let mut block = start;
    while block < address + length {
        // Safety: cache maintenance on memory we own; no data changes.
        unsafe { core::arch::asm!("dcbst 0, {}", in(reg) block, options(nostack)) };
        block += CACHE_BLOCK;
    }
    // Safety: ordering barrier.
    unsafe { core::arch::asm!("sync", options(nostack)) };
    let mut block = start;
    while block < address + length {
        // Safety: as above.
        unsafe { core::arch::asm!("icbi 0, {}", in(reg) block, options(nostack)) };
        block += CACHE_BLOCK;
    }
    // Safety: discards prefetched instructions.
    unsafe { core::arch::asm!("sync", "isync", options(nostack)) };
}
