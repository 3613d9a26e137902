//! Live patch `kernel-sym-reader`: shaped like a patch made from a diff — it runs on the kernel's TOC base, says `abi-checked`, and reaches a kernel static and function through `.klp.sym.vmlinux.NAME,0`.

#![no_std]

use core::sync::atomic::{AtomicU64, Ordering};

/// Written by hand rather than by `klp_patch!`: the `toc kernel` line is
/// what `cargo xtask patch from-diff` writes (with `abi-checked`, which needs
/// the `build-id` of the kernel whose builds were compared, so a fixture
/// embedded in the test kernel cannot have it).
const KLP_PATCH_TEXT: &str = "klp-patch 1\nname kernel-sym-reader\ntoc kernel\n\
                              replace klp_vmlinux_target kernel_sym_reader_target\n";

/// The description the loader reads (`#[used]`: kept although nothing refers to it).
#[used]
#[unsafe(link_section = ".klp.patch")]
static KLP_PATCH: [u8; KLP_PATCH_TEXT.len()] = klp_patch::bytes(KLP_PATCH_TEXT);

unsafe extern "C" {
    /// The test kernel's `KLP_VMLINUX_MARK` (kernel/src/tests/kernel_symbols.rs), itself, not a copy.
    #[link_name = ".klp.sym.vmlinux.KLP_VMLINUX_MARK,0"]
    static MARK: AtomicU64;
}

unsafe extern "Rust" {
    /// The test kernel's `klp_vmlinux_helper`, called through a stub that leaves r2 alone.
    #[link_name = ".klp.sym.vmlinux.klp_vmlinux_helper,0"]
    fn helper(value: u64) -> u64;
}

/// Replaces `klp_vmlinux_target` (`value + 1`): the kernel's mark (counting
/// the call in it) plus what the kernel's helper makes of `value`.
#[unsafe(no_mangle)]
pub fn kernel_sym_reader_target(value: u64) -> u64 {
    // Safety: the kernel resolved MARK to its own static, which lives as long as the kernel.
    let mark = unsafe { MARK.fetch_add(1, Ordering::SeqCst) };
    // Safety: the kernel resolved `helper` to its function of this signature.
    mark.wrapping_add(unsafe { helper(value) })
}
