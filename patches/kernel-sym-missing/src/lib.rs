//! Live patch module `kernel-sym-missing`: refused on purpose, it refers to a kernel static that does not exist through `.klp.sym.vmlinux.NAME,0`.

#![no_std]

klp_patch::klp_patch!(name = "kernel-sym-missing", replace = ["klp_vmlinux_target" => kernel_sym_missing_target]);

unsafe extern "C" {
    /// No kernel symbol has this name: the kernel refuses the patch, naming it.
    #[link_name = ".klp.sym.vmlinux.KLP_VMLINUX_NO_SUCH_STATIC,0"]
    static MISSING: u64;
}

/// A well-formed replacement of `klp_vmlinux_target`; the kernel refuses the patch before it could run.
#[unsafe(no_mangle)]
pub fn kernel_sym_missing_target(value: u64) -> u64 {
    // Safety: never runs (the patch is refused at its link).
    value.wrapping_add(unsafe { core::ptr::read_volatile(&raw const MISSING) })
}
