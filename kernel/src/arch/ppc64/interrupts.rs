//! Enabling and disabling external and decrementer interrupts (MSR[EE]).
use super::registers::{Msr, msr};
use macros::notrace;

/// Restores the previous MSR[EE] when dropped.
pub struct InterruptGuard {
    were_enabled: bool,
}

/// Disables interrupts until the returned guard is dropped; nests.
#[notrace]
#[inline(always)]
pub fn disable() -> InterruptGuard {
    let were_enabled = msr().contains(Msr::EE);
    // Safety: `mtmsrd r,1` writes only MSR[EE] and MSR[RI]: EE off, RI kept on.
    unsafe { core::arch::asm!("mtmsrd {}, 1", in(reg) Msr::RI.bits(), options(nostack)) };
    InterruptGuard { were_enabled }
}

impl Drop for InterruptGuard {
    #[inline(always)]
    fn drop(&mut self) {
        if self.were_enabled {
            enable();
        }
    }
}

/// Enables interrupts.
#[notrace]
#[inline(always)]
pub fn enable() {
    // Safety: `mtmsrd r,1` writes only MSR[EE] and MSR[RI]; the handlers are
    // installed before the first call.
    unsafe { core::arch::asm!("mtmsrd {}, 1", in(reg) (Msr::EE | Msr::RI).bits(), options(nostack)) };
}

/// Gives the CPU to the hypervisor until the next interrupt (H_CEDE), which
/// also enables interrupts.
#[notrace]
pub fn wait() {
    super::hcall::hcall(super::hcall::CEDE, [0; 6]);
}
