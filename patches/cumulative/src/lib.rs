//! Live patch module `cumulative`: an atomic replace that takes over from every enabled patch.
//!
//! It replaces only `kernel::shell::greeting`. Loaded while other patches
//! are enabled (say `greeting`, then `ten`), its one transition leaves
//! `hello` printing its text and `klp_demo_ten` back at its original code
//! (Linux's NOP entries); the patches it replaced are disabled, their
//! callbacks do not run, and their modules can be unloaded.

#![no_std]

klp_patch::klp_patch!(
    name = "cumulative",
    replace = ["kernel::shell::greeting" => cumulative_greeting],
    atomic_replace = true,
);

/// Replaces `kernel::shell::greeting`.
#[unsafe(no_mangle)]
pub fn cumulative_greeting() -> &'static str {
    klp_patch::kernel::intern("hello from the cumulative patch module")
}
