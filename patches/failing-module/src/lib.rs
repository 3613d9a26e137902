//! Target module `failing-module`: its init fails, so its load is refused with nothing left (a test fixture).

#![no_std]

klp_patch::klp_module!(
    name = "failing-module",
    init = failing_module_init,
    exit = failing_module_exit,
    livepatchable = [failing_module_value],
);

/// What the init returns: the load is refused with this status.
pub const STATUS: i32 = -22;

/// A function with a site, which the kernel registers before the init runs
/// and must release when the init fails.
#[unsafe(no_mangle)]
#[inline(never)]
pub fn failing_module_value() -> u64 {
    core::hint::black_box(6)
}

/// Fails (after logging that it ran).
#[unsafe(no_mangle)]
pub extern "C" fn failing_module_init() -> i32 {
    klp_patch::kernel::log(b"failing-module: init fails");
    STATUS
}

/// Never runs: a module whose init failed is not loaded.
#[unsafe(no_mangle)]
pub extern "C" fn failing_module_exit() {
    klp_patch::kernel::log(b"failing-module: exit");
}
