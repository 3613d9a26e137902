//! Loadable target module `busy-module` (Linux's test_klp_callbacks_busy): its init starts a thread that sleeps in the livepatchable `busy_module_work` until its exit stops it.

#![no_std]

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use klp_patch::kernel;

klp_patch::klp_module!(
    name = "busy-module",
    init = busy_module_init,
    exit = busy_module_exit,
    livepatchable = [busy_module_work],
);

/// Set by the exit: the thread leaves `busy_module_work`.
static STOP: AtomicBool = AtomicBool::new(false);
/// The thread's id.
static THREAD: AtomicU64 = AtomicU64::new(0);

/// Sleeps (10 ms at a time, interruptibly: a livepatch transition's fake
/// signal wakes it) until `stop` is set; returns how many sleeps it took.
/// A thread in here blocks a transition that changes this function.
#[unsafe(no_mangle)]
#[inline(never)]
pub fn busy_module_work(stop: &AtomicBool) -> u64 {
    let stop = core::hint::black_box(stop);
    let mut sleeps: u64 = 0;
    while !stop.load(Ordering::Acquire) {
        kernel::sleep_interruptible(10);
        sleeps = sleeps.wrapping_add(1);
    }
    core::hint::black_box(sleeps)
}

extern "C" fn busy_module_thread(_argument: u64) {
    busy_module_work(&STOP);
}

#[unsafe(no_mangle)]
pub extern "C" fn busy_module_init() -> i32 {
    STOP.store(false, Ordering::Release);
    match kernel::thread_spawn("busy-module", busy_module_thread, 0) {
        Some(id) => THREAD.store(id, Ordering::Release),
        None => return -1,
    }
    kernel::log(b"busy-module: init, its thread sleeps in busy_module_work");
    0
}

#[unsafe(no_mangle)]
pub extern "C" fn busy_module_exit() {
    STOP.store(true, Ordering::Release);
    let id = THREAD.load(Ordering::Acquire);
    kernel::wake_interruptible(id);
    kernel::thread_join(id);
    kernel::log(b"busy-module: exit, its thread stopped");
}
