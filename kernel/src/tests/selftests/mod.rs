//! Linux's livepatch selftests (tools/testing/selftests/livepatch/*.sh), one `#[ktest]` per case, and what they share.
//!
//! Linux's cases compare the kernel log with the expected lines; ours
//! record what each callback saw in `EVENTS` and compare that, in order,
//! plus what the patched functions return. docs/livepatch.md maps every
//! Linux case to its test here.
mod callbacks;
mod livepatch;
mod modules;
mod samples;
mod state;
mod sysfs;

use crate::livepatch::{self as klp, Callbacks, Function, Object, Patch, SystemState};
use crate::sync::Mutex;
use alloc::string::String;
use alloc::vec::Vec;

/// What the callbacks did, in order: "LABEL: pre_patch OBJECT" and so on,
/// interleaved with what target modules logged ("target-module: init"), as
/// Linux's selftests read both from one kernel log.
static EVENTS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// How many lines of the module log `EVENTS` has taken in.
static LOG_SEEN: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);

/// Empties the event log (and the module log).
pub fn clear_events() {
    crate::module::log::clear();
    LOG_SEEN.store(0, core::sync::atomic::Ordering::SeqCst);
    EVENTS.lock().clear();
}

/// Takes the module log's new lines into `EVENTS`.
fn take_module_log() {
    let lines = crate::module::log::lines();
    let seen = LOG_SEEN.swap(lines.len(), core::sync::atomic::Ordering::SeqCst);
    EVENTS.lock().extend(lines.into_iter().skip(seen));
}

/// Takes the event log.
pub fn take_events() -> Vec<String> {
    take_module_log();
    core::mem::take(&mut *EVENTS.lock())
}

/// Records one event.
pub fn record(label: &str, what: &str, object: *const u8, length: usize) {
    take_module_log();
    // Safety: the core passes the object's name, valid for the call.
    let object = unsafe { core::str::from_utf8_unchecked(core::slice::from_raw_parts(object, length)) };
    EVENTS.lock().push(alloc::format!("{label}: {what} {object}"));
}

/// Defines `mod $label` with the four callbacks, which record themselves
/// under "$label"; its pre-patch callback returns `$label::PRE_PATCH_RESULT`
/// (Linux's `pre_patch_ret` module parameter).
macro_rules! recording_callbacks {
    ($label:ident) => {
        mod $label {
            use core::sync::atomic::{AtomicI32, Ordering};
            /// What the pre-patch callback returns (0: success).
            pub static PRE_PATCH_RESULT: AtomicI32 = AtomicI32::new(0);
            pub extern "C" fn pre_patch(object: *const u8, length: usize) -> i32 {
                crate::tests::selftests::record(stringify!($label), "pre_patch", object, length);
                PRE_PATCH_RESULT.load(Ordering::SeqCst)
            }
            pub extern "C" fn post_patch(object: *const u8, length: usize) -> i32 {
                crate::tests::selftests::record(stringify!($label), "post_patch", object, length);
                0
            }
            pub extern "C" fn pre_unpatch(object: *const u8, length: usize) -> i32 {
                crate::tests::selftests::record(stringify!($label), "pre_unpatch", object, length);
                0
            }
            pub extern "C" fn post_unpatch(object: *const u8, length: usize) -> i32 {
                crate::tests::selftests::record(stringify!($label), "post_unpatch", object, length);
                0
            }
            pub const CALLBACKS: crate::livepatch::Callbacks = crate::livepatch::Callbacks {
                pre_patch: Some(pre_patch),
                post_patch: Some(post_patch),
                pre_unpatch: Some(pre_unpatch),
                post_unpatch: Some(post_unpatch),
            };
        }
    };
}
pub(crate) use recording_callbacks;

/// A function of a patch: `old` replaced by the function at `new`.
pub fn function(old: &str, new: *const ()) -> Function {
    Function { old_name: String::from(old), old_position: None, new_address: new as u64, allow_inlined: false }
}

/// An object of module `module` with these functions and callbacks.
pub fn module_object(module: &str, functions: Vec<Function>, callbacks: Callbacks) -> Object {
    Object { module: Some(String::from(module)), functions, callbacks }
}

/// A kernel object (`vmlinux`) with these functions and callbacks.
pub fn kernel_object(functions: Vec<Function>, callbacks: Callbacks) -> Object {
    Object { module: None, functions, callbacks }
}

/// A patch of these objects.
pub fn patch(name: &str, objects: Vec<Object>, replace: bool, states: &[(u64, u64)]) -> Patch {
    Patch {
        name: String::from(name),
        objects,
        replace,
        states: states.iter().map(|&(id, version)| SystemState { id, version }).collect(),
        abi_checked: false,
    }
}

/// Enables a patch and waits for its transition (none of these tests sits
/// in a patched function, so nothing holds it open).
pub use super::settle::enable;

/// Disables a patch and waits for its transition.
#[track_caller]
pub fn disable(name: &str) {
    super::settle::disable(name).expect("disables");
}

/// Disables (if enabled) and removes patches, newest first.
pub fn retire(names: &[&str]) {
    for name in names.iter().rev() {
        if klp::list().iter().any(|patch| patch.name == *name && patch.enabled) {
            disable(name);
        }
        klp::remove(name).expect("removes");
    }
}

/// Whether patch `name` is enabled.
pub fn enabled(name: &str) -> bool {
    klp::list().iter().any(|patch| patch.name == name && patch.enabled)
}
