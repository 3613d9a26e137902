//! Live patch module `counter`: a replacement with state that calls back into the kernel.
//!
//! It replaces `kernel::shell::greeting` like the `greeting` module (loaded after
//! it, it stacks on top), and on each call counts in a module global, formats a
//! line in a module buffer with the kernel's uptime, thread id and version, prints
//! it through the kernel, and reports the TOC pointer it runs with. No `core::fmt`
//! and no panicking paths: the object's only undefined symbols are kernel exports.

#![no_std]

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU64, Ordering};

use klp_patch::kernel;

klp_patch::klp_patch!(name = "counter", replace = ["kernel::shell::greeting" => counter_greeting]);

/// How often the replacement ran: module data, reached through the module's TOC.
static CALLS: AtomicU64 = AtomicU64::new(0);

/// What the replacement returns, as a kernel-owned copy (`kernel::intern`):
/// the caller may still hold it after this module is unloaded.
static GREETING: &str = "hello from the counter patch module";

/// The line printed on each call, formatted in module memory.
static LINE: LineBuffer = LineBuffer { busy: AtomicU64::new(0), bytes: UnsafeCell::new([0; LINE_CAPACITY]) };

const LINE_CAPACITY: usize = 128;

/// A buffer one caller at a time may fill (the others skip the line).
struct LineBuffer {
    busy: AtomicU64,
    bytes: UnsafeCell<[u8; LINE_CAPACITY]>,
}

// Safety: `bytes` is only touched by the caller that switched `busy` from 0 to 1.
unsafe impl Sync for LineBuffer {}

/// Replaces `kernel::shell::greeting` (`fn() -> &'static str`).
#[unsafe(no_mangle)]
pub fn counter_greeting() -> &'static str {
    let call = CALLS.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
    kernel::report_toc(kernel::toc());
    if LINE.busy.compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed).is_ok() {
        // Safety: the exchange above made this caller the buffer's only user until the store below.
        let bytes = unsafe { &mut *LINE.bytes.get() };
        let mut line = Writer { bytes, length: 0 };
        line.text(b"counter: call ");
        line.number(call);
        line.text(b", tick ");
        line.number(kernel::uptime_ticks());
        line.text(b", thread ");
        line.number(kernel::thread_id());
        line.text(b", kernel version ");
        line.number(kernel::kernel_version());
        line.text(b"\n");
        kernel::print(line.written());
        LINE.busy.store(0, Ordering::Release);
    }
    kernel::intern(GREETING)
}

/// Appends text and decimal numbers to a byte buffer, dropping what does not fit.
struct Writer<'a> {
    bytes: &'a mut [u8; LINE_CAPACITY],
    length: usize,
}

impl Writer<'_> {
    fn byte(&mut self, byte: u8) {
        if let Some(slot) = self.bytes.get_mut(self.length) {
            *slot = byte;
            self.length += 1;
        }
    }

    fn text(&mut self, text: &[u8]) {
        for &byte in text {
            self.byte(byte);
        }
    }

    fn number(&mut self, mut value: u64) {
        // u64::MAX has 20 digits; they are produced last digit first.
        let mut digits = [0u8; 20];
        let mut count = 0;
        for slot in digits.iter_mut() {
            *slot = b'0' + (value % 10) as u8;
            count += 1;
            value /= 10;
            if value == 0 {
                break;
            }
        }
        for &digit in digits.iter().take(count).rev() {
            self.byte(digit);
        }
    }

    fn written(&self) -> &[u8] {
        self.bytes.get(..self.length).unwrap_or(&[])
    }
}
