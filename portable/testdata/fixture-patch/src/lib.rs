//! A tiny patch module: the test fixture of `portable::module`'s loader.
//!
//! It exercises every relocation a real patch module needs: calls to kernel
//! functions (through the loader's stubs), a kernel static read through the
//! TOC, a module static, a table of function pointers, a call with ten
//! arguments and the `.klp.patch` description.

#![no_std]

use core::sync::atomic::{AtomicU64, Ordering};

unsafe extern "C" {
    /// A kernel function the replacement calls.
    fn klp_test_kernel_function(x: u64) -> u64;
    /// A second kernel function the replacement calls.
    fn klp_test_other(x: u64) -> u64;
    /// A kernel static the replacement reads.
    static klp_test_kernel_static: u64;
}

/// How many times the replacement ran: a module static.
static CALLS: AtomicU64 = AtomicU64::new(0);

/// A table of two function pointers (relocated with R_PPC64_ADDR64).
static TABLE: [fn(u64) -> u64; 2] = [double, triple];

#[inline(never)]
fn double(x: u64) -> u64 {
    x.wrapping_mul(2) ^ 0x5a
}

#[inline(never)]
fn triple(x: u64) -> u64 {
    x.wrapping_mul(3) ^ 0xa5
}

/// Counts a call: a module function that needs the module TOC, called directly
/// (R_PPC64_REL24 to a module symbol with a local entry point).
#[inline(never)]
fn count_call() -> u64 {
    CALLS.fetch_add(1, Ordering::Relaxed)
}

/// The replacement of `kernel::example`.
#[unsafe(no_mangle)]
pub fn fixture_replacement(x: u64) -> u64 {
    let calls = count_call();
    let table = core::hint::black_box(&TABLE);
    let picked = table[(calls & 1) as usize](x);
    // SAFETY: the kernel defines these with the declared signatures.
    unsafe {
        let a = klp_test_kernel_function(x ^ picked);
        let b = klp_test_other(a.wrapping_add(core::ptr::read_volatile(&raw const klp_test_kernel_static)));
        a.wrapping_add(b).wrapping_add(calls)
    }
}

/// A function with ten arguments: the 9th and 10th come in the caller's parameter save area.
#[unsafe(no_mangle)]
pub fn fixture_ten(a: u64, b: u64, c: u64, d: u64, e: u64, f: u64, g: u64, h: u64, i: u64, j: u64) -> u64 {
    a ^ b.rotate_left(1)
        ^ c.rotate_left(2)
        ^ d.rotate_left(3)
        ^ e.rotate_left(4)
        ^ f.rotate_left(5)
        ^ g.rotate_left(6)
        ^ h.rotate_left(7)
        ^ i.rotate_left(8)
        ^ j.rotate_left(9)
}

/// The patch description the loader reads.
#[used]
#[unsafe(link_section = ".klp.patch")]
static PATCH: [u8; 69] = *b"klp-patch 1\nname fixture\nreplace kernel::example fixture_replacement\n";
