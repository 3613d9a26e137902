//! A patch built into the kernel, for the shell demo: it changes what `hello` prints.
use super::{Function, Object, Patch, add};
use alloc::string::String;
use alloc::vec;

/// The replacement of `kernel::shell::greeting`.
#[inline(never)]
fn patched_greeting() -> &'static str {
    core::hint::black_box("hello from the livepatched greeting")
}

/// Adds the built-in patches (disabled).
pub fn register_builtin() {
    let greeting = Patch {
        name: String::from("builtin-greeting"),
        objects: vec![Object {
            module: None,
            functions: vec![Function {
                old_name: String::from("kernel::shell::greeting"),
                old_position: None,
                new_address: patched_greeting as *const () as u64,
                allow_inlined: false,
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    add(greeting).expect("built-in patches have unique names and #[livepatchable] targets");
}
