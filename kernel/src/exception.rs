//! What the kernel does with each exception: timer ticks, BUG traps, and reports of the unexpected.
use crate::arch::exceptions::{self, PtRegs};
use crate::arch::registers::ProgramCheckReason;
use crate::{bug, println, symbols, thread, time};
use macros::notrace;

/// Vector numbers.
pub mod vector {
    pub const SYSTEM_RESET: u64 = 0x100;
    pub const MACHINE_CHECK: u64 = 0x200;
    pub const DATA_STORAGE: u64 = 0x300;
    pub const DATA_SEGMENT: u64 = 0x380;
    pub const INSTRUCTION_STORAGE: u64 = 0x400;
    pub const INSTRUCTION_SEGMENT: u64 = 0x480;
    pub const EXTERNAL: u64 = 0x500;
    pub const ALIGNMENT: u64 = 0x600;
    pub const PROGRAM: u64 = 0x700;
    pub const FLOATING_POINT_UNAVAILABLE: u64 = 0x800;
    pub const DECREMENTER: u64 = 0x900;
    pub const SYSTEM_CALL: u64 = 0xc00;
    pub const TRACE: u64 = 0xd00;
}

/// A readable name for a vector.
pub fn vector_name(trap: u64) -> &'static str {
    match trap {
        vector::SYSTEM_RESET => "system reset",
        vector::MACHINE_CHECK => "machine check",
        vector::DATA_STORAGE => "data storage",
        vector::DATA_SEGMENT => "data segment",
        vector::INSTRUCTION_STORAGE => "instruction storage",
        vector::INSTRUCTION_SEGMENT => "instruction segment",
        vector::EXTERNAL => "external interrupt",
        vector::ALIGNMENT => "alignment",
        vector::PROGRAM => "program check",
        vector::FLOATING_POINT_UNAVAILABLE => "floating point unavailable",
        vector::DECREMENTER => "decrementer",
        vector::SYSTEM_CALL => "system call",
        vector::TRACE => "trace",
        _ => "unknown",
    }
}

/// Entered from `exception_common` with the saved registers; returning resumes them.
///
/// Only the decrementer runs here on the thread's own stack; what it calls
/// must fit in `STACK_GUARD`, which `cargo xtask test` checks by summing frame
/// sizes along the calls (xtask/src/stack.rs). Every other branch runs on the
/// emergency stack and lives in a function of its own, never inlined, that
/// the check leaves out by name: keep it so.
#[notrace]
#[unsafe(no_mangle)]
pub extern "C" fn exception_dispatch(regs: &mut PtRegs) {
    let (base, top) = crate::arch::emergency::bounds();
    if !(base..top).contains(&regs.gpr[1]) && crate::arch::emergency::on_emergency_stack() {
        // Entered the emergency stack afresh: nothing on it belongs to anyone.
        crate::arch::emergency::reset_thread_info();
    }
    match core::mem::take(&mut regs.result) {
        exceptions::THREAD_STACK_OVERFLOW => stack_overflow(regs),
        exceptions::EMERGENCY_STACK_OVERFLOW => emergency_stack_overflow(regs),
        _ => {}
    }
    match regs.trap {
        vector::DECREMENTER => {
            let in_ftrace = crate::arch::ftrace::in_ftrace(regs.nip, regs.link, regs.gpr[1]);
            time::tick(!in_ftrace)
        }
        vector::PROGRAM => program_check(regs),
        _ => unexpected(regs, "unexpected exception"),
    }
}

#[notrace]
#[inline(never)]
fn program_check(regs: &mut PtRegs) {
    // A test's trap that the handler "emulates" by writing pt_regs (the
    // interrupted code must see what a handler writes there).
    #[cfg(feature = "ktest")]
    if crate::tests::exceptions::emulate_trap(regs) {
        return;
    }
    let reason = ProgramCheckReason::from_bits_truncate(regs.msr);
    if reason.contains(ProgramCheckReason::TRAP)
        && let Some(location) = bug::find(regs.nip)
    {
        bug::record_last(location);
        println!("------------[ cut here ]------------");
        println!("kernel BUG at {}:{}!", location.file(), location.line);
        report(regs, "BUG");
        thread::kill_current("BUG");
    }
    unexpected(regs, "program check");
}

#[notrace]
#[inline(never)]
fn emergency_stack_overflow(regs: &PtRegs) -> ! {
    panic!("stack overflow on the emergency stack: r1 {:#x}, NIP {}", regs.gpr[1], symbols::Symbolized(regs.nip))
}

#[notrace]
#[inline(never)]
fn stack_overflow(regs: &PtRegs) -> ! {
    let current = thread::current_id();
    println!("kernel: stack overflow in thread {current}: r1 {:#x} reached its livepatch stack", regs.gpr[1]);
    report(regs, "stack overflow");
    thread::kill_current("stack overflow");
}

/// Reports an exception nobody handles and ends the thread that took it; in
/// the boot thread or an interrupt-critical spot, the kernel panics instead.
#[notrace]
#[inline(never)]
fn unexpected(regs: &PtRegs, what: &str) -> ! {
    println!("Oops: {what}: vector {:#x} ({})", regs.trap, vector_name(regs.trap));
    report(regs, "Oops");
    thread::kill_current("Oops")
}

/// Prints registers and a backtrace.
#[notrace]
#[inline(never)]
pub fn report(regs: &PtRegs, what: &str) {
    println!("{what} in thread {} on CPU {}", thread::current_id(), crate::arch::registers::per_cpu().cpu_id);
    println!("NIP:  {:#018x} {}   (SRR0)", regs.nip, symbols::Symbolized(regs.nip));
    println!("LR:   {:#018x} {}", regs.link, symbols::Symbolized(regs.link));
    println!("MSR:  {:#018x} (SRR1)  CR: {:08x}  XER: {:08x}  CTR: {:#x}", regs.msr, regs.ccr, regs.xer, regs.ctr);
    if matches!(regs.trap, vector::DATA_STORAGE | vector::ALIGNMENT) {
        println!("DAR:  {:#018x}  DSISR: {:08x}", regs.dar, regs.dsisr);
    }
    for row in 0..8 {
        let base = row * 4;
        println!(
            "GPR{:02}: {:016x} {:016x} {:016x} {:016x}",
            base,
            regs.gpr[base],
            regs.gpr[base + 1],
            regs.gpr[base + 2],
            regs.gpr[base + 3]
        );
    }
    crate::backtrace::print_from(regs.gpr[1], Some(regs.nip));
}
