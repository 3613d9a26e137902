//! Live patch `hello-module-fix`: replaces `hello_module_message` of the target module `hello-module`.

#![no_std]

klp_patch::klp_patch!(
    name = "hello-module-fix",
    object = "hello-module",
    replace = ["hello_module_message" => hello_module_fix_message],
);

/// Replaces `hello_module_message` (`fn() -> &'static str`): the text is a
/// kernel-owned copy, never a pointer into this module.
#[unsafe(no_mangle)]
pub fn hello_module_fix_message() -> &'static str {
    klp_patch::kernel::intern("hello from the hello-module-fix live patch")
}
