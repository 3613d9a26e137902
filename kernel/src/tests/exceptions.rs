//! Tests of exceptions: BUG traps, unexpected exceptions, the decrementer, panics, stack overflow.
use crate::thread::{self, ExitStatus};
use crate::{bug, time};
use core::sync::atomic::{AtomicBool, Ordering};
use macros::ktest;

#[ktest]
fn bug_prints_location_and_kills_only_its_thread() {
    static OTHER_FINISHED: AtomicBool = AtomicBool::new(false);
    let other = thread::spawn_on(crate::arch::percpu::BOOT_CPU, "bystander", || {
        thread::sleep_milliseconds(30);
        OTHER_FINISHED.store(true, Ordering::SeqCst);
    })
    .unwrap();
    let victim = thread::spawn_on(crate::arch::percpu::BOOT_CPU, "bug", || bug!()).unwrap();
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
    let victim = thread::spawn_on(crate::arch::percpu::BOOT_CPU, "illegal", || {
        // Safety: deliberately executes an illegal instruction (word 0).
        unsafe { core::arch::asm!(".long 0") };
    })
    .unwrap();
    assert_eq!(victim.join(), ExitStatus::Killed("Oops"));
}

#[ktest]
fn decrementer_ticks_advance() {
    let before = time::ticks_here();
    thread::sleep_milliseconds(50);
    let after = time::ticks_here();
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
    let start = crate::arch::registers::timebase();
    let level = time::milliseconds_to_timebase(1000 / time::TICK_HZ * 3 / 2);
    while crate::arch::registers::timebase() - start < level {}
    frame[depth as usize % 64] + descend(depth + 1)
}

#[ktest(isolated)]
fn stack_overflow_is_detected_before_thread_info() {
    let victim = thread::spawn_on(crate::arch::percpu::BOOT_CPU, "overflow", || {
        descend(0);
    })
    .unwrap();
    assert_eq!(victim.join(), ExitStatus::Killed("stack overflow"));
}

core::arch::global_asm!(
    r#"
    .text
    # exceptions_test_trap_probe(r3 = &mut [u64; 18] out)
    #
    # Sets r14-r31 to a pattern, executes a trap that `emulate_trap` handles by
    # writing other values into regs.gpr[14..=31] and stepping over it, then
    # stores r14-r31 into `out`. r14-r31 are saved and restored around it.
    .globl exceptions_test_trap_probe
    .type exceptions_test_trap_probe, @function
exceptions_test_trap_probe:
    stdu    1, -176(1)
    .irp number, 14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    std     \number, 8*(\number-14)+32(1)
    .endr
    .irp number, 14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    li      \number, \number             # before the trap: rN = N
    .endr
    .globl exceptions_test_emulated_trap
exceptions_test_emulated_trap:
    trap                                 # emulate_trap writes regs.gpr[14..=31], nip += 4
    .irp number, 14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    std     \number, 8*(\number-14)(3)
    .endr
    .irp number, 14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    ld      \number, 8*(\number-14)+32(1)
    .endr
    addi    1, 1, 176
    blr
    .size exceptions_test_trap_probe, . - exceptions_test_trap_probe
    "#
);

unsafe extern "C" {
    pub(crate) fn exceptions_test_trap_probe(out: &mut [u64; 18]);
    static exceptions_test_emulated_trap: u8;
}

/// What the emulation writes into regs.gpr[number].
pub(crate) fn emulated_value(number: usize) -> u64 {
    0xe000_0000_0000_0000 | (number as u64) << 32 | 0x5a5a
}

#[macros::notrace]
/// Called first by the program check handler: emulates the probe's trap by
/// writing regs.gpr[14..=31] and stepping over it.
pub fn emulate_trap(regs: &mut crate::arch::exceptions::PtRegs) -> bool {
    if regs.nip != &raw const exceptions_test_emulated_trap as u64 {
        return false;
    }
    for number in 14..=31 {
        regs.gpr[number] = emulated_value(number);
    }
    regs.nip += 4;
    true
}

#[ktest]
fn a_handler_that_writes_nonvolatile_registers_in_pt_regs_is_obeyed() {
    let mut out = [0u64; 18];
    // Safety: the probe keeps the ABI (it saves and restores r14-r31).
    unsafe { exceptions_test_trap_probe(&mut out) };
    for number in 14..=31 {
        assert_eq!(out[number - 14], emulated_value(number), "r{number} after the emulated trap");
    }
}
