//! The panic handler: print the message, location and backtrace, then end QEMU with a failure status.
use crate::arch::percpu::smp_processor_id;
use crate::arch::{interrupts, rtas};
use crate::println;
use core::panic::PanicInfo;
use core::sync::atomic::{AtomicU64, Ordering};

/// The CPUs that are panicking, one bit each: a second panic on the same CPU
/// (while it reports the first) stops the machine without printing again; a
/// panic on another CPU meanwhile is reported after it (`console::begin_report`).
static PANICKING: AtomicU64 = AtomicU64::new(0);

/// Lets a later panic print again (the test runner survives panics in test
/// threads).
#[cfg(feature = "ktest")]
pub fn end_panic() {
    PANICKING.fetch_and(!(1 << smp_processor_id()), Ordering::SeqCst);
}

#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    // Interrupts stay off until the machine stops (or ktest ends the thread).
    core::mem::forget(interrupts::disable());
    let cpu = smp_processor_id();
    let bit = 1 << cpu;
    if PANICKING.fetch_or(bit, Ordering::SeqCst) & bit != 0 {
        // A panic while this CPU panics: do not print again, just stop the machine.
        rtas::terminate(b"double panic\0");
        loop {}
    }
    // Whoever holds the console lock never runs again; the report starts on a line of its own.
    crate::console::begin_report();
    // The location's fields directly: a Display impl here would have an ftrace site.
    match info.location() {
        Some(at) => println!("kernel panicked at {}:{}:{}: {}", at.file(), at.line(), at.column(), info.message()),
        None => println!("kernel panicked at unknown location: {}", info.message()),
    }
    crate::backtrace::print_current();
    if crate::arch::smp::interrupted_registers().is_some() {
        // In an IPI's call: the interrupted thread is not the one that
        // panicked, and its CPU is in an interrupt handler; nothing to end.
        println!("kernel: panic on CPU {cpu} in an IPI handler: the machine stops");
    } else {
        #[cfg(feature = "ktest")]
        crate::ktest::on_panic();
    }
    rtas::terminate(b"kernel panic\0");
    // Without RTAS tokens (very early panics) there is nothing left to do.
    loop {
        crate::arch::interrupts::wait();
    }
}
