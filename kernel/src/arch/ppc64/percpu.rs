//! The per-CPU areas (`boot::PerCpu`, one per CPU, r13 pointing at the running CPU's): which CPU this is, every CPU's area, which are online.
//!
//! r13 is the ELFv2 thread pointer: compiled code never allocates it, the
//! boot code sets it on every CPU before the first Rust instruction, and the
//! exception entry keeps it, so it holds the running CPU's area at all times
//! (checked by `tests::smp`). Fields another CPU reads or writes are atomics;
//! the others are written by the boot CPU before the CPU starts, or by the
//! CPU itself.
use super::registers::per_cpu;
use boot::{CPU_AREAS, MAX_CPUS, PerCpu};
use core::sync::atomic::{AtomicU64, Ordering};
use macros::notrace;
use portable::cpuset::CpuSet;

/// The CPU that boots the kernel and runs its threads.
pub const BOOT_CPU: usize = 0;

/// The running CPU's number (Linux's `smp_processor_id`), read from its area.
#[notrace]
#[inline(always)]
pub fn smp_processor_id() -> usize {
    per_cpu().cpu_id as usize
}

/// The area of CPU `cpu` (< MAX_CPUS), for reading its atomics and the
/// fields fixed before it started.
#[notrace]
#[inline(always)]
pub fn area(cpu: usize) -> &'static PerCpu {
    // Safety: the array is static; fields written while others read them are
    // atomics, and the plain ones are written before the CPU starts or only
    // by the CPU itself, which readers of another CPU's area do not rely on.
    unsafe { &(*CPU_AREAS.0.get())[cpu] }
}

/// The area of CPU `cpu`, for filling it in before that CPU starts.
///
/// # Safety
/// CPU `cpu` is not running yet, and only the caller writes its area.
#[notrace]
pub unsafe fn area_mut(cpu: usize) -> *mut PerCpu {
    // Safety: in bounds (indexing checks); the caller owns the area.
    unsafe { &raw mut (*CPU_AREAS.0.get())[cpu] }
}

/// The online CPUs as one word: every text change reads it (`smp::synchronize_other_cpus`).
static ONLINE: AtomicU64 = AtomicU64::new(0);

/// The CPUs that have come online (the boot CPU once `smp::boot_cpu_online` ran).
#[notrace]
#[inline(always)]
pub fn online_cpus() -> CpuSet {
    CpuSet::from_bits(ONLINE.load(Ordering::Acquire))
}

/// Marks the running CPU online: its area's flag, then the set.
#[notrace]
pub fn mark_online() {
    let cpu = smp_processor_id();
    debug_assert!(cpu < MAX_CPUS);
    per_cpu().online.store(1, Ordering::Release);
    ONLINE.fetch_or(CpuSet::only(cpu).bits(), Ordering::AcqRel);
}
