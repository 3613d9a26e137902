//! Machine state and special purpose registers: MSR bits, timebase, decrementer, SPRGs.
use bitflags::bitflags;
use macros::notrace;

bitflags! {
    /// Machine State Register bits (Power ISA numbering counts from the most significant bit).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Msr: u64 {
        /// 64-bit mode.
        const SF = 1 << 63;
        /// Hypervisor state.
        const HV = 1 << 60;
        /// External and decrementer interrupts enabled.
        const EE = 1 << 15;
        /// Problem (user) state.
        const PR = 1 << 14;
        /// Floating point available (never set: the kernel is soft-float).
        const FP = 1 << 13;
        /// Machine check enabled.
        const ME = 1 << 12;
        /// Instruction relocation (MMU for fetches).
        const IR = 1 << 5;
        /// Data relocation (MMU for loads and stores).
        const DR = 1 << 4;
        /// Recoverable interrupt.
        const RI = 1 << 1;
        /// Little-endian mode.
        const LE = 1 << 0;
    }
}

bitflags! {
    /// SRR1 bits that say why a program check (vector 0x700) was taken.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct ProgramCheckReason: u64 {
        /// Floating point enabled exception.
        const FLOATING_POINT = 1 << 20;
        /// Illegal instruction.
        const ILLEGAL = 1 << 19;
        /// Privileged instruction.
        const PRIVILEGED = 1 << 18;
        /// Trap instruction (`tw`, `td`, `twi`, `tdi`) whose condition held.
        const TRAP = 1 << 17;
    }
}

/// Reads the MSR.
#[notrace]
#[inline(always)]
pub fn msr() -> Msr {
    let value: u64;
    // Safety: mfmsr only reads.
    unsafe { core::arch::asm!("mfmsr {}", out(reg) value, options(nomem, nostack)) };
    Msr::from_bits_retain(value)
}

/// Reads the timebase (512 MHz on QEMU pseries).
#[notrace]
#[inline(always)]
pub fn timebase() -> u64 {
    let value: u64;
    // Safety: mftb only reads.
    unsafe { core::arch::asm!("mftb {}", out(reg) value, options(nomem, nostack)) };
    value
}

/// Sets the decrementer: an interrupt (0x900) follows `ticks` timebase ticks later.
#[notrace]
#[inline(always)]
pub fn set_decrementer(ticks: u32) {
    // Safety: the decrementer only schedules the next timer interrupt.
    unsafe { core::arch::asm!("mtdec {}", in(reg) ticks as u64, options(nomem, nostack)) };
}

/// The current stack pointer.
#[notrace]
#[inline(always)]
pub fn stack_pointer() -> u64 {
    let value: u64;
    // Safety: reads r1.
    unsafe { core::arch::asm!("mr {}, 1", out(reg) value, options(nomem, nostack)) };
    value
}

/// The current TOC pointer (r2).
#[notrace]
#[inline(always)]
pub fn toc_pointer() -> u64 {
    let value: u64;
    // Safety: reads r2.
    unsafe { core::arch::asm!("mr {}, 2", out(reg) value, options(nomem, nostack)) };
    value
}

/// This CPU's per-CPU area (r13).
#[notrace]
#[inline(always)]
pub fn per_cpu() -> &'static boot::PerCpu {
    let value: u64;
    // Safety: r13 always points at this CPU's area in the kernel (boot sets it).
    unsafe {
        core::arch::asm!("mr {}, 13", out(reg) value, options(nomem, nostack));
        &*(value as *const boot::PerCpu)
    }
}

/// This CPU's per-CPU area, for updating it.
///
/// # Safety
/// The caller runs with interrupts off or otherwise owns the fields it writes.
#[notrace]
#[inline(always)]
pub unsafe fn per_cpu_mut() -> *mut boot::PerCpu {
    per_cpu() as *const boot::PerCpu as *mut boot::PerCpu
}
