//! Live patch module `ten`: replaces the kernel's ten-argument `klp_demo_ten`.
//!
//! Arguments 9 and 10 arrive in the caller's parameter save area (96(r1) and
//! 104(r1) when the replacement starts), so this module checks that the
//! livepatch path left r1 exactly as the caller set it.

#![no_std]

use klp_patch::kernel;

klp_patch::klp_patch!(name = "ten", replace = ["klp_demo_ten" => ten_demo_ten]);

/// Replaces `klp_demo_ten`: the sum of `position * argument` (1 * a + 2 * b + ... + 10 * j)
/// instead of the original's result. Ten `u64` arguments are passed the same way
/// by the Rust and the C calling conventions (r3-r10, then the stack).
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub fn ten_demo_ten(a: u64, b: u64, c: u64, d: u64, e: u64, f: u64, g: u64, h: u64, i: u64, j: u64) -> u64 {
    kernel::report_toc(kernel::toc());
    (1u64..)
        .zip([a, b, c, d, e, f, g, h, i, j])
        .fold(0, |sum, (position, argument)| sum.wrapping_add(position.wrapping_mul(argument)))
}
