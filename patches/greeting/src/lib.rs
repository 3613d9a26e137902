//! Live patch module `greeting`: changes what the shell's `hello` prints.

#![no_std]

klp_patch::klp_patch!(name = "greeting", replace = ["kernel::shell::greeting" => greeting_replacement]);

/// Replaces `kernel::shell::greeting` (`fn() -> &'static str`): same signature,
/// `#[no_mangle]` so the description can name it. It returns a kernel-owned
/// copy of its text, never a reference into this module's memory: the caller
/// may still hold the result after the module is unloaded.
#[unsafe(no_mangle)]
pub fn greeting_replacement() -> &'static str {
    klp_patch::kernel::intern("hello from the greeting patch module")
}
