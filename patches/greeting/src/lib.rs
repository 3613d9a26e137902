//! Live patch module `greeting`: changes what the shell's `hello` prints.

#![no_std]

klp_patch::klp_patch!(name = "greeting", replace = ["kernel::shell::greeting" => greeting_replacement]);

/// Replaces `kernel::shell::greeting` (`fn() -> &'static str`): same signature,
/// `#[no_mangle]` so the description can name it.
#[unsafe(no_mangle)]
pub fn greeting_replacement() -> &'static str {
    "hello from the greeting patch module"
}
