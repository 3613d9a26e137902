//! Live patch module `callbacks`: the four per-object callbacks, which print when they run.
//!
//! It replaces `kernel::shell::greeting` and gives the kernel object
//! (`vmlinux`) a pre-patch, post-patch, pre-unpatch and post-unpatch
//! callback; each prints its name and the object's. The kernel runs them in
//! Linux's order around the transitions (docs/livepatch.md, "Callbacks"):
//! `klp load callbacks` prints the first two, `klp unload callbacks` the others.

#![no_std]

use klp_patch::kernel;

klp_patch::klp_patch!(
    name = "callbacks",
    replace = ["kernel::shell::greeting" => callbacks_greeting],
    callbacks = [
        "vmlinux" pre_patch => callbacks_pre_patch,
        "vmlinux" post_patch => callbacks_post_patch,
        "vmlinux" pre_unpatch => callbacks_pre_unpatch,
        "vmlinux" post_unpatch => callbacks_post_unpatch,
    ],
);

/// Replaces `kernel::shell::greeting`.
#[unsafe(no_mangle)]
pub fn callbacks_greeting() -> &'static str {
    kernel::intern("hello from the callbacks patch module")
}

/// Prints "callbacks: KIND OBJECT".
fn report(kind: &[u8], object: *const u8, length: usize) {
    kernel::print(b"callbacks: ");
    kernel::print(kind);
    kernel::print(b" ");
    // Safety: the kernel passes the object's name, valid for the call.
    kernel::print(unsafe { core::slice::from_raw_parts(object, length) });
    kernel::print(b"\n");
}

/// Before the enable transition starts: a nonzero return would refuse the enable.
#[unsafe(no_mangle)]
pub extern "C" fn callbacks_pre_patch(object: *const u8, length: usize) -> i32 {
    report(b"pre_patch", object, length);
    0
}

/// Once every thread runs the patch.
#[unsafe(no_mangle)]
pub extern "C" fn callbacks_post_patch(object: *const u8, length: usize) -> i32 {
    report(b"post_patch", object, length);
    0
}

/// Before the disable transition starts.
#[unsafe(no_mangle)]
pub extern "C" fn callbacks_pre_unpatch(object: *const u8, length: usize) -> i32 {
    report(b"pre_unpatch", object, length);
    0
}

/// Once no thread runs the patch.
#[unsafe(no_mangle)]
pub extern "C" fn callbacks_post_unpatch(object: *const u8, length: usize) -> i32 {
    report(b"post_unpatch", object, length);
    0
}
