//! The call stubs through which module code reaches a kernel function, and their register contracts.
//!
//! A module function calls a kernel function `F` with `bl stub; nop`. The
//! module and the kernel have different TOCs (r2), so the call cannot go to
//! `F` directly: `F`'s global entry must see `r12 = F` to compute the kernel
//! TOC, and the module's r2 must come back after the call. The loader points
//! the `bl` at a stub and rewrites the `nop` into `ld r2,24(r1)`:
//!
//! ```text
//! module:  bl    stub            stub:  std   r2,24(r1)        save the module TOC in the caller's frame
//!          ld    r2,24(r1)  ◄─┐         lis   r12,F[63:48]
//!                             │         ori   r12,r12,F[47:32]
//!                             │         sldi  r12,r12,32
//!                             │         oris  r12,r12,F[31:16]
//!                             │         ori   r12,r12,F[15:0]
//!                             │         mtctr r12
//!                             │         bctr  ─────────────────► F (global entry), returns with blr
//!                             └──────────────────────────────────┘
//! ```
//!
//! Register contract: on entry LR is the return address (the `ld r2,24(r1)`),
//! r1 is the calling module function's stack pointer, whose frame has the
//! ELFv2 TOC save slot at 24(r1), and r2 is the module TOC. The stub writes
//! that slot, clobbers r12 and CTR (both volatile across calls; r12 then holds
//! `F`, as the ELFv2 global entry requires) and touches nothing else: r3-r10,
//! LR, r1 and the caller's parameter save area (arguments 9 and up at 96(r1)
//! onwards) reach `F` unchanged. The target is absolute, so a stub reaches
//! any address, however far from the module.
//!
//! A module whose description says `toc kernel` runs on the kernel's TOC
//! base: its functions compute the kernel's TOC pointer into r2, so a call
//! out has no TOC to save or restore. Its calls are `bl F` with or without
//! a `nop` after (a `nop` stays a `nop`) and tail calls `b F`, each pointed
//! at a kernel-TOC stub ([`kernel_toc_stub_words`]): the same words with a
//! `nop` in place of the TOC save.
//!
//! ```text
//! module:  bl    stub            stub:  nop                     no TOC to save
//!          (nop, or the next          lis   r12,F[63:48] ... ori r12,r12,F[15:0]
//!           instruction)              mtctr r12
//!                                      bctr  ──────────────────► F (global entry), returns with blr
//! ```
//!
//! Register contract of a kernel-TOC stub: on entry r2 is the kernel's TOC
//! pointer (what every function of the module and of the kernel computes
//! from its own entry), LR the return address: after the `bl`, or for a
//! tail call `b` the return address of the module function's caller. The
//! stub clobbers r12 (then `F`, for `F`'s global entry) and CTR, both
//! volatile, and writes no memory: after a tail call the module function's
//! frame is gone and 24(r1) is its caller's, which must not be touched.
//! r1, r2, r3-r10, LR and the parameter save area reach `F` unchanged; `F`'s
//! global entry recomputes r2 to the value it already holds.

use crate::instruction::NOP;

/// Instructions in one stub.
pub const STUB_WORDS: usize = 8;
/// Bytes in one stub.
pub const STUB_SIZE: usize = STUB_WORDS * 4;
/// Alignment of the stub area.
pub const STUB_ALIGNMENT: usize = 16;

/// `std r2,24(r1)`: save the TOC in the ELFv2 TOC save slot.
pub const SAVE_TOC: u32 = 0xf841_0018;
/// `ld r2,24(r1)`: restore the TOC after a call through a stub (replaces the `nop`).
pub const RESTORE_TOC: u32 = 0xe841_0018;
/// The `nop` the compiler leaves after a call that may need a TOC restore.
pub const CALL_NOP: u32 = NOP;

/// `lis r12,0` (`addis r12,0,0`).
const LIS_R12: u32 = 0x3d80_0000;
/// `ori r12,r12,0`.
const ORI_R12: u32 = 0x618c_0000;
/// `oris r12,r12,0`.
const ORIS_R12: u32 = 0x658c_0000;
/// `sldi r12,r12,32` (`rldicr r12,r12,32,31`).
const SLDI_R12_32: u32 = 0x798c_07c6;
/// `mtctr r12`.
const MTCTR_R12: u32 = 0x7d89_03a6;
/// `bctr`.
const BCTR: u32 = 0x4e80_0420;

/// The eight instruction words of a stub that jumps to the global entry `target`.
pub fn stub_words(target: u64) -> [u32; STUB_WORDS] {
    let half = |shift: u32| (target >> shift) as u32 & 0xffff;
    [
        SAVE_TOC,
        LIS_R12 | half(48),
        ORI_R12 | half(32),
        SLDI_R12_32,
        ORIS_R12 | half(16),
        ORI_R12 | half(0),
        MTCTR_R12,
        BCTR,
    ]
}

/// The eight instruction words of a kernel-TOC stub (a `toc kernel`
/// module's, see above) that jumps to the global entry `target`: no TOC save.
pub fn kernel_toc_stub_words(target: u64) -> [u32; STUB_WORDS] {
    let mut words = stub_words(target);
    words[0] = NOP;
    words
}

/// The target a stub's words jump to, if `words` is a stub of either kind (for checks and debuggers).
pub fn stub_target(words: &[u32; STUB_WORDS]) -> Option<u64> {
    let target = (u64::from(words[1] & 0xffff) << 48)
        | (u64::from(words[2] & 0xffff) << 32)
        | (u64::from(words[4] & 0xffff) << 16)
        | u64::from(words[5] & 0xffff);
    (*words == stub_words(target) || *words == kernel_toc_stub_words(target)).then_some(target)
}
