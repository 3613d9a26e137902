//! The panic handler: print the message, location and backtrace, then end QEMU with a failure status.
use crate::arch::{interrupts, rtas};
use crate::println;
use core::panic::PanicInfo;
use core::sync::atomic::{AtomicBool, Ordering};

static PANICKING: AtomicBool = AtomicBool::new(false);

/// Lets a later panic print again (the test runner survives panics in test threads).
#[cfg(feature = "ktest")]
pub fn end_panic() {
    PANICKING.store(false, Ordering::SeqCst);
}

#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    let _ = interrupts::disable();
    core::mem::forget(interrupts::disable());
    if PANICKING.swap(true, Ordering::SeqCst) {
        // A panic while panicking: do not print again, just stop the machine.
        rtas::terminate(b"double panic\0");
        loop {}
    }
    // Whoever holds the console lock never runs again; the report starts on a line of its own.
    crate::console::begin_report();
    println!("kernel panicked at {}: {}", DisplayLocation(info), info.message());
    crate::backtrace::print_current();
    #[cfg(feature = "ktest")]
    crate::ktest::on_panic();
    rtas::terminate(b"kernel panic\0");
    // Without RTAS tokens (very early panics) there is nothing left to do.
    loop {
        crate::arch::interrupts::wait();
    }
}

struct DisplayLocation<'a>(&'a PanicInfo<'a>);

impl core::fmt::Display for DisplayLocation<'_> {
    fn fmt(&self, formatter: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0.location() {
            Some(location) => write!(formatter, "{}:{}:{}", location.file(), location.line(), location.column()),
            None => write!(formatter, "unknown location"),
        }
    }
}
