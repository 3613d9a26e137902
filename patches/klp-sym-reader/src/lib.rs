//! Live patch `klp-sym-reader`: replaces the kernel's `klp_demo_ten` with a function that reads a static of the target module `target-module` and calls its function, through klp relocations.

#![no_std]

klp_patch::klp_patch!(name = "klp-sym-reader", replace = ["klp_demo_ten" => klp_sym_reader_ten]);

unsafe extern "C" {
    /// `target-module`'s `TARGET_MODULE_MARK`: its value while the module is
    /// loaded, 0 (the kernel's placeholder) while it is not.
    #[link_name = ".klp.sym.target-module.TARGET_MODULE_MARK,0"]
    static TARGET_MARK: u64;
}

unsafe extern "Rust" {
    /// `target-module`'s `target_module_value` (callable only while it is loaded).
    #[link_name = ".klp.sym.target-module.target_module_value,0"]
    fn target_value() -> u64;
}

/// Replaces `klp_demo_ten` (same signature): the module's mark plus what its
/// function returns while it is loaded; 0 while it is not.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub fn klp_sym_reader_ten(a: u64, b: u64, c: u64, d: u64, e: u64, f: u64, g: u64, h: u64, i: u64, j: u64) -> u64 {
    let _ = core::hint::black_box((a, b, c, d, e, f, g, h, i, j));
    // Safety: the kernel points this at the module's static, or at zeros.
    let mark = unsafe { core::ptr::read_volatile(&raw const TARGET_MARK) };
    if mark == 0 {
        return 0;
    }
    // Safety: a non-zero mark means the module is loaded, so the call reaches its function.
    mark.wrapping_add(unsafe { target_value() })
}
