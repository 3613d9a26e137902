//! Live patch module `states`: a cumulative patch that declares system state 1 and keeps data in it.
//!
//! Its pre-patch callback takes the state's data over from the newest
//! enabled patch that has state 1 (`klp_get_prev_state`), or records the
//! tick it was first installed at; `hello` then says since when the state
//! has been installed. A second build with `state 1 0` would be refused
//! while this one is enabled (a downgrade), as would a cumulative patch
//! without state 1.

#![no_std]

use core::sync::atomic::Ordering;
use klp_patch::kernel;

/// The state's id and this patch's version of it.
const STATE: u64 = 1;

klp_patch::klp_patch!(
    name = "states",
    replace = ["kernel::shell::greeting" => states_greeting],
    atomic_replace = true,
    states = [(1, 1)],
    callbacks = ["vmlinux" pre_patch => states_pre_patch],
);

/// The patch's name, for the state look-ups.
const NAME: &str = "states";

/// Takes the state over, or starts it at the current tick.
#[unsafe(no_mangle)]
pub extern "C" fn states_pre_patch(_object: *const u8, _length: usize) -> i32 {
    let Some(state) = kernel::get_state(NAME, STATE) else { return -22 };
    let since = match kernel::get_prev_state(NAME, STATE) {
        Some(previous) => previous.data.load(Ordering::Acquire),
        None => kernel::uptime_ticks(),
    };
    state.data.store(since, Ordering::Release);
    0
}

/// Replaces `kernel::shell::greeting`: "hello, state 1 installed at tick N".
#[unsafe(no_mangle)]
pub fn states_greeting() -> &'static str {
    let since = kernel::get_state(NAME, STATE).map_or(0, |state| state.data.load(Ordering::Acquire));
    let mut line = *b"hello, state 1 installed at tick                     ";
    let prefix = b"hello, state 1 installed at tick ".len();
    let mut digits = [0u8; 20];
    let mut count = 0;
    let mut value = since;
    loop {
        digits[count] = b'0' + (value % 10) as u8;
        count += 1;
        value /= 10;
        if value == 0 || count == digits.len() {
            break;
        }
    }
    let mut length = prefix;
    while count > 0 && length < line.len() {
        count -= 1;
        line[length] = digits[count];
        length += 1;
    }
    // Safety: ASCII only.
    kernel::intern(unsafe { core::str::from_utf8_unchecked(line.get(..length).unwrap_or(&[])) })
}
