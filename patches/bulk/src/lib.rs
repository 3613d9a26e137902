//! Live patch module `bulk`: 64 KiB of data, so that loading it measures how fast the patch channel delivers a module.
//!
//! `cargo xtask bench` and the end-to-end test time `patch load bulk`; the
//! replacement reads the table so that the whole of it stays in the module.

#![no_std]

klp_patch::klp_patch!(name = "bulk", replace = ["klp_demo_ten" => bulk_demo_ten]);

/// The table's size: 64 KiB.
const TABLE_BYTES: usize = 64 << 10;

/// Pseudo-random bytes (xorshift64), made at compile time: nothing a transport
/// could compress, and a different byte at every position.
static TABLE: [u8; TABLE_BYTES] = table();

const fn table() -> [u8; TABLE_BYTES] {
    let mut table = [0; TABLE_BYTES];
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut index = 0;
    while index < TABLE_BYTES {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        table[index] = state as u8;
        index += 1;
    }
    table
}

/// Replaces `klp_demo_ten`: the sum of the arguments, like the original, plus
/// the table byte at the first argument's position (modulo the table's size).
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub fn bulk_demo_ten(a: u64, b: u64, c: u64, d: u64, e: u64, f: u64, g: u64, h: u64, i: u64, j: u64) -> u64 {
    let byte = TABLE.get(a as usize % TABLE_BYTES).copied().unwrap_or(0);
    [a, b, c, d, e, f, g, h, i, j].iter().fold(u64::from(byte), |sum, argument| sum.wrapping_add(*argument))
}
