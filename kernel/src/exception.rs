//! What the kernel does with each exception: timer ticks, BUG traps, and reports of the unexpected.
use crate::arch::exceptions::{self, PtRegs};
use crate::arch::registers::ProgramCheckReason;
use crate::arch::vectors;
use crate::{bug, println, symbols, thread, time};
use macros::notrace;

// The entry code calls this function by name (declared in `crate::arch`):
// both must have the same signature.
const _: [unsafe extern "C" fn(&mut PtRegs); 2] = [exception_dispatch, crate::arch::exception_dispatch];

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
        vectors::DECREMENTER => {
            let in_ftrace = crate::arch::ftrace::in_ftrace(regs.nip, regs.link, regs.gpr[1]);
            time::tick(!in_ftrace)
        }
        vectors::EXTERNAL => external_interrupt(regs),
        vectors::PROGRAM => program_check(regs),
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
        crate::console::begin_report();
        println!("------------[ cut here ]------------");
        println!("kernel BUG at {}:{}!", location.file(), location.line);
        report(regs, "BUG");
        thread::kill_current("BUG");
    }
    unexpected(regs, "program check");
}

/// The external interrupt, on the emergency stack: IPIs (`arch::smp`), and a
/// report for any other source, since no device interrupt is enabled.
#[notrace]
#[inline(never)]
fn external_interrupt(regs: &mut PtRegs) {
    if let Err(source) = crate::arch::smp::external_interrupt(regs) {
        println!("Oops: interrupt from source {source:#x}, which no driver enabled");
        unexpected(regs, "unexpected interrupt")
    }
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
    crate::console::begin_report();
    println!("kernel: stack overflow in thread {current}: r1 {:#x} reached its livepatch stack", regs.gpr[1]);
    report(regs, "stack overflow");
    thread::kill_current("stack overflow");
}

/// Reports an exception nobody handles and ends the thread that took it; in
/// the boot thread or an interrupt-critical spot, the kernel panics instead.
#[notrace]
#[inline(never)]
fn unexpected(regs: &PtRegs, what: &str) -> ! {
    crate::console::begin_report();
    println!("Oops: {what}: vector {:#x} ({})", regs.trap, vectors::name(regs.trap));
    report(regs, "Oops");
    thread::kill_current("Oops")
}

/// Prints registers and a backtrace. The caller has called
/// `console::begin_report` (the console may have been held when the exception came).
#[notrace]
#[inline(never)]
pub fn report(regs: &PtRegs, what: &str) {
    println!("{what} in thread {} on CPU {}", thread::current_id(), crate::arch::registers::per_cpu().cpu_id);
    println!("NIP:  {:#018x} {}   (SRR0)", regs.nip, symbols::Symbolized(regs.nip));
    println!("LR:   {:#018x} {}", regs.link, symbols::Symbolized(regs.link));
    println!("MSR:  {:#018x} (SRR1)  CR: {:08x}  XER: {:08x}  CTR: {:#x}", regs.msr, regs.ccr, regs.xer, regs.ctr);
    if matches!(regs.trap, vectors::DATA_STORAGE | vectors::ALIGNMENT) {
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
