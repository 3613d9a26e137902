//! Loadable target module `hello-module`: adds the shell command `hello-module`, whose output comes from a livepatchable function.

#![no_std]

use klp_patch::kernel::{self, CommandOutput};

klp_patch::klp_module!(
    name = "hello-module",
    init = hello_module_init,
    exit = hello_module_exit,
    livepatchable = [hello_module_message],
);

/// The shell command this module adds.
const COMMAND: &str = "hello-module";

/// What the command prints: the function a live patch replaces
/// (`hello-module-fix`). `#[inline(never)]` and the result through
/// `black_box`: every call reaches its ftrace site, and no caller assumes
/// what it returns (what `#[livepatchable]` does for the kernel's functions).
#[unsafe(no_mangle)]
#[inline(never)]
pub fn hello_module_message() -> &'static str {
    core::hint::black_box("hello from the hello-module target module")
}

/// The command: prints the message on a line of its own.
extern "C" fn hello_module_command(_arguments: *const u8, _length: usize, output: *mut CommandOutput) {
    kernel::shell_write(output, hello_module_message().as_bytes());
    kernel::shell_write(output, b"\n");
}

/// Adds the command; a non-zero result refuses the load.
#[unsafe(no_mangle)]
pub extern "C" fn hello_module_init() -> i32 {
    if !kernel::shell_register(COMMAND, "print the hello-module's message (a loadable module)", hello_module_command) {
        return -1;
    }
    kernel::log(b"hello-module: init");
    0
}

/// Removes the command (waiting for calls of it in progress).
#[unsafe(no_mangle)]
pub extern "C" fn hello_module_exit() {
    kernel::shell_unregister(COMMAND);
    kernel::log(b"hello-module: exit");
}
