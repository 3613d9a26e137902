//! Per-test deadline: a test still running at its deadline is reported by name from the timer tick, and the machine powers off so xtask runs the rest in a fresh boot.
use super::KernelTest;
use crate::arch::registers::timebase;
use crate::println;
use core::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use macros::notrace;

/// Seconds a test may run when the boot arguments name no `ktest.deadline`.
pub const DEFAULT_SECONDS: u64 = 20;

/// Timebase value at which the running test has hung (0: no test is running).
static DEADLINE: AtomicU64 = AtomicU64::new(0);
/// Its deadline in seconds, for the report.
static SECONDS: AtomicU64 = AtomicU64::new(0);
/// The test the deadline belongs to.
static RUNNING: AtomicPtr<KernelTest> = AtomicPtr::new(core::ptr::null_mut());

/// Starts `test`'s clock: it must end within `seconds`.
pub fn arm(test: &'static KernelTest, seconds: u64) {
    RUNNING.store(test as *const KernelTest as *mut KernelTest, Ordering::SeqCst);
    SECONDS.store(seconds, Ordering::SeqCst);
    DEADLINE.store(timebase() + seconds * crate::time::frequency(), Ordering::SeqCst);
}

/// The test ended in time.
pub fn disarm() {
    DEADLINE.store(0, Ordering::SeqCst);
    RUNNING.store(core::ptr::null_mut(), Ordering::SeqCst);
}

/// Called on every timer tick (interrupts off, any thread): past the
/// deadline, finishes the hung test's line with FAILED, names it, and powers
/// off. Nothing else in this boot can be trusted to run (the test may hold a
/// lock or keep preemption off); xtask sees no `ktest: finished` and starts a
/// fresh boot with `ktest.after=NAME` for the tests that follow.
#[notrace]
pub fn check() {
    let deadline = DEADLINE.load(Ordering::Relaxed);
    if deadline == 0 || timebase() < deadline {
        return;
    }
    DEADLINE.store(0, Ordering::SeqCst);
    let test = RUNNING.load(Ordering::SeqCst);
    // Safety: points at a KernelTest in `.ktests` while armed.
    let name = if test.is_null() { "(unknown)" } else { unsafe { (*test).name } };
    println!("FAILED");
    println!("ktest: watchdog: {name} still running after its {} s deadline", SECONDS.load(Ordering::Relaxed));
    crate::backtrace::print_current();
    println!("ktest: watchdog: powering off; the remaining tests need a fresh boot");
    crate::arch::rtas::power_off();
    loop {
        crate::arch::interrupts::wait();
    }
}
