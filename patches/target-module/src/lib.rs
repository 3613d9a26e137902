//! Loadable target module `target-module` (Linux's test_klp_callbacks_mod, test_klp_mod_target): one livepatchable function, an init and an exit that log that they ran.

#![no_std]

klp_patch::klp_module!(
    name = "target-module",
    init = target_module_init,
    exit = target_module_exit,
    livepatchable = [target_module_value],
);

/// The value `target_module_value` returns unpatched.
pub const VALUE: u64 = 0x007a_49e7;

/// A static a patch reads through a klp relocation
/// (`.klp.sym.target-module.TARGET_MODULE_MARK,0`, patches/klp-sym-reader).
#[unsafe(no_mangle)]
pub static TARGET_MODULE_MARK: u64 = 0x5eed_0000;

/// Returns `VALUE` (through `black_box`: no caller may assume it; a patch replaces it).
#[unsafe(no_mangle)]
#[inline(never)]
pub fn target_module_value() -> u64 {
    core::hint::black_box(VALUE)
}

#[unsafe(no_mangle)]
pub extern "C" fn target_module_init() -> i32 {
    klp_patch::kernel::log(b"target-module: init");
    0
}

#[unsafe(no_mangle)]
pub extern "C" fn target_module_exit() {
    klp_patch::kernel::log(b"target-module: exit");
}
