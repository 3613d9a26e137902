//! Live patch module `shadow`: a replacement that keeps its state in a shadow variable attached to a kernel object.
//!
//! Linux's livepatch-shadow-fix samples in spirit: a fix needs a field the
//! kernel's object lacks, so it attaches a shadow variable to the object
//! instead of changing its layout. Here the object is the kernel's own
//! `klp_kernel_version` static and the field a count of greetings, with the
//! tick of the first one (the constructor's job). The variable is kernel
//! memory: it outlives this module, and a later load of it (or another
//! patch that knows the id) counts on from where it stopped. Whoever retires
//! the feature frees it with `shadow_free_all(GREETING_COUNT, None)`.

#![no_std]

use core::ffi::c_void;
use core::sync::atomic::{AtomicU64, Ordering};

use klp_patch::kernel;

klp_patch::klp_patch!(name = "shadow", replace = ["kernel::shell::greeting" => shadow_greeting]);

/// The shadow variable's id ("shadow" in ASCII): the kernel's tests read it too.
pub const GREETING_COUNT: u64 = 0x7368_6164_6f77;

/// The shadow variable: zeroed by the kernel, then filled by `construct`.
#[repr(C)]
pub struct GreetingCount {
    /// Greetings so far.
    pub calls: AtomicU64,
    /// The uptime tick of the first.
    pub first_tick: AtomicU64,
}

/// What the replacement returns, as a kernel-owned copy (`kernel::intern`).
static GREETING: &str = "hello from the shadow patch module";

/// The kernel object the count is attached to.
fn kernel_object() -> *mut c_void {
    (&raw const kernel::klp_kernel_version).cast_mut().cast()
}

/// The constructor: records the tick that `tick` points at (run once, under the kernel's shadow lock).
extern "C" fn construct(_object: *mut c_void, shadow_data: *mut c_void, tick: *mut c_void) -> i32 {
    // Safety: the kernel hands over size_of::<GreetingCount>() zeroed bytes,
    // aligned for any scalar; `tick` is the u64 `shadow_greeting` passes.
    unsafe {
        let count = &*shadow_data.cast::<GreetingCount>();
        count.first_tick.store(*tick.cast::<u64>(), Ordering::Relaxed);
    }
    0
}

/// Replaces `kernel::shell::greeting` (`fn() -> &'static str`).
#[unsafe(no_mangle)]
pub fn shadow_greeting() -> &'static str {
    let mut tick = kernel::uptime_ticks();
    let data = kernel::shadow_get_or_alloc(
        kernel_object(),
        GREETING_COUNT,
        size_of::<GreetingCount>(),
        Some(construct),
        (&raw mut tick).cast(),
    );
    if !data.is_null() {
        // Safety: the kernel's variable for this id, a GreetingCount (see `construct`), freed by nobody while patched.
        let count = unsafe { &*data.cast::<GreetingCount>() };
        let calls = count.calls.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        let mut line = [0u8; 80];
        let mut length = 0;
        for part in [
            &b"shadow: greeting "[..],
            digits(calls, &mut [0; 20]),
            b" since tick ",
            digits(count.first_tick.load(Ordering::Relaxed), &mut [0; 20]),
            b"\n",
        ] {
            for &byte in part {
                if let Some(slot) = line.get_mut(length) {
                    *slot = byte;
                    length += 1;
                }
            }
        }
        kernel::print(line.get(..length).unwrap_or(&[]));
    }
    kernel::intern(GREETING)
}

/// `value` in decimal, written at the end of `buffer`.
fn digits(mut value: u64, buffer: &mut [u8; 20]) -> &[u8] {
    let mut start = buffer.len();
    loop {
        start -= 1;
        if let Some(slot) = buffer.get_mut(start) {
            *slot = b'0' + (value % 10) as u8;
        }
        value /= 10;
        if value == 0 || start == 0 {
            break;
        }
    }
    buffer.get(start..).unwrap_or(&[])
}
