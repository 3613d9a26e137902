//! Enabling and disabling external and decrementer interrupts (MSR[EE]), and waiting for one (H_CEDE).
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

/// Gives the CPU to the hypervisor until the next interrupt (H_CEDE),
/// takes that interrupt (H_CEDE enables them), and returns with interrupts
/// off: whatever interrupts the caller afterwards was interrupted inside
/// `cede` (`ceded_at`), never in the caller's own code.
#[notrace]
#[inline(always)]
pub fn wait() {
    // Safety: `cede` is a function by the ABI (see the assembly below): it
    // clobbers only what a call may.
    unsafe { cede() };
}

unsafe extern "C" {
    /// H_CEDE as a function of its own, so that an interrupt taken inside
    /// it has a known NIP (`ceded_at`).
    fn cede();
    /// The address `cede` resumes at after its `sc 1`.
    static cede_return: u64;
}

core::arch::global_asm!(
    r#"
    # cede(): H_CEDE, then return.
    #
    # On entry: a call by the ELFv2 ABI (r3-r12, r0, CTR, XER, CR0-1 and
    # CR5-7 are the caller's to lose). On exit: r3 = the hcall's status, r0
    # = MSR[RI], MSR[EE] off; the other volatile registers as the hypervisor
    # left them. The interrupt that ends the cede is taken at .Lcede_return
    # (H_CEDE returns with MSR[EE] on), and so is any other one until the
    # mtmsrd: in those two instructions the volatile registers are dead (the
    # caller cannot rely on them after a call) and the caller's context is
    # exactly its frame (r1) and the return address (LR), which is what
    # `ceded_at` tells the unload scan and the reliable stack walker.
    .text
    .globl cede
    .type cede, @function
cede:
    li      3, {cede}              # r3 = H_CEDE
    sc      1                      # to the hypervisor: until an interrupt, with MSR[EE] on
.Lcede_return:                     # the interrupt is taken here (ceded_at)
    li      0, {ri}                # r0 = MSR[RI] alone
    mtmsrd  0, 1                   # MSR[EE] off again (RI kept): nothing interrupts the caller
    blr
    .size cede, . - cede
    .pushsection .rodata.cede_return, "a"
    .balign 8
    .globl cede_return
cede_return:
    .quad .Lcede_return
    .popsection
    "#,
    cede = const super::hcall::CEDE,
    ri = const super::registers::Msr::RI.bits(),
);

/// Whether `nip` is where `wait` (H_CEDE) resumes after an interrupt, up to
/// the instruction that turns interrupts off again: a context interrupted
/// there holds nothing live in its volatile registers, and its caller's
/// frame and return address are its r1 and LR.
#[notrace]
pub fn ceded_at(nip: u64) -> bool {
    // Safety: a word the assembler wrote, never changed.
    let resume = unsafe { cede_return };
    // `li` and `mtmsrd`: after the latter no interrupt is taken.
    (resume..resume + 8).contains(&nip)
}
