//! Tests of exceptions: BUG traps, unexpected exceptions, the decrementer, panics, stack overflow.
use crate::thread::{self, ExitStatus};
use crate::{bug, time};
use core::sync::atomic::{AtomicBool, Ordering};
use macros::ktest;

#[ktest]
fn bug_prints_location_and_kills_only_its_thread() {
    static OTHER_FINISHED: AtomicBool = AtomicBool::new(false);
    let other = thread::spawn("bystander", || {
        thread::sleep_milliseconds(30);
        OTHER_FINISHED.store(true, Ordering::SeqCst);
    })
    .unwrap();
    let victim = thread::spawn("bug", || bug!()).unwrap();
    assert_eq!(victim.join(), ExitStatus::Killed("BUG"));
    assert_eq!(other.join(), ExitStatus::Returned);
    assert!(OTHER_FINISHED.load(Ordering::SeqCst));
}

#[ktest]
fn bug_table_records_file_and_line() {
    let entries = crate::bug::entries();
    assert!(!entries.is_empty());
    let here = entries.iter().find(|entry| entry.location.file().ends_with("tests/exceptions.rs"));
    let location = here.expect("the bug!() above is recorded").location;
    assert!(location.line > 1);
}

#[ktest]
fn illegal_instruction_is_reported_and_kills_its_thread() {
    let victim = thread::spawn("illegal", || {
        // Safety: deliberately executes an illegal instruction (word 0).
        unsafe { core::arch::asm!(".long 0") };
    })
    .unwrap();
    assert_eq!(victim.join(), ExitStatus::Killed("Oops"));
}

#[ktest]
fn decrementer_ticks_advance() {
    let before = time::ticks();
    thread::sleep_milliseconds(50);
    let after = time::ticks();
    assert!(after >= before + 3, "ticks {before} -> {after}");
}

#[ktest(should_panic)]
fn panic_prints_and_ends_the_kernel() {
    panic!("this panic is expected");
}

/// Recurses with a 512-byte frame, each level lasting longer than a timer
/// tick, so that an exception entry sees r1 at every depth.
#[inline(never)]
fn descend(depth: u64) -> u64 {
    let mut frame = [depth; 64];
    core::hint::black_box(&mut frame);
    let start = crate::arch::ppc64::registers::timebase();
    let level = time::milliseconds_to_timebase(1000 / time::TICK_HZ * 3 / 2);
    while crate::arch::ppc64::registers::timebase() - start < level {}
    frame[depth as usize % 64] + descend(depth + 1)
}

#[ktest(isolated)]
fn stack_overflow_is_detected_before_thread_info() {
    let victim = thread::spawn("overflow", || {
        descend(0);
    })
    .unwrap();
    assert_eq!(victim.join(), ExitStatus::Killed("stack overflow"));
}
