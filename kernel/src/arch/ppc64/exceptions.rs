//! Exception entry and exit: the full register save in `PtRegs` layout, and dispatch to Rust.
//!
//! Every vector slot (see `vectors.rs`) holds `mtsprg2 r12; li r12,VECTOR;
//! b exception_common`. `exception_common` builds an `InterruptFrame` below
//! the interrupted stack's red zone (or on the per-CPU emergency stack when
//! the thread's stack has run into its livepatch stack), saves every register
//! into its `PtRegs`, calls `exception_dispatch(&mut PtRegs)` with the kernel
//! TOC, and returns with rfid to the possibly changed NIP/MSR.
use crate::thread::ThreadInfo;
use boot::{MINIMAL_FRAME, PerCpu, THREAD_SIZE};
use core::mem::{offset_of, size_of};
use portable::instruction::spr;

/// The register state of an interrupted context, laid out as Linux's ppc64
/// `pt_regs` (the ftrace_regs_caller stub builds the same layout).
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct PtRegs {
    pub gpr: [u64; 32],
    pub nip: u64,
    pub msr: u64,
    pub orig_gpr3: u64,
    pub ctr: u64,
    pub link: u64,
    pub xer: u64,
    pub ccr: u64,
    pub softe: u64,
    /// The vector (0x700, 0x900, ...).
    pub trap: u64,
    pub dar: u64,
    pub dsisr: u64,
    /// Set by the entry code to 1 when it had to move to the emergency stack.
    pub result: u64,
}

/// What the entry code pushes: an ELFv2 frame header, then the registers.
#[repr(C)]
pub struct InterruptFrame {
    pub header: [u64; MINIMAL_FRAME / 8],
    pub regs: PtRegs,
}

/// ELFv2 red zone below r1 that leaf functions may use without a frame.
pub const RED_ZONE: usize = 288;
/// Free space kept between the livepatch stack top and the lowest exception frame.
pub const STACK_GUARD: usize = 256;
const FRAME_SIZE: usize = size_of::<InterruptFrame>().next_multiple_of(16);
const REGS: usize = offset_of!(InterruptFrame, regs);
const THREAD_SHIFT: u32 = THREAD_SIZE.trailing_zeros();

macro_rules! gpr {
    ($number:expr) => {
        REGS + offset_of!(PtRegs, gpr) + 8 * $number
    };
}

core::arch::global_asm!(
    r#"
    .section .text.exception, "ax"
    # exception_common
    #
    # On entry (from a vector slot): r12 = vector number; SPRG2 = the
    # interrupted r12; SRR0/SRR1 = interrupted NIP/MSR; r13 = per-CPU area
    # (always valid in the kernel); every other register is the interrupted
    # context's. MSR[EE] = 0.
    # On exit (rfid): every register restored from PtRegs, NIP = regs.nip,
    # MSR = regs.msr. Per-CPU scratch words 0-2 clobbered. CR is saved before
    # the stack check's compare, which would otherwise corrupt the
    # interrupted code's CR0.
    .globl exception_common
    .type exception_common, @function
exception_common:
    std     11, {scratch}+0(13)           # scratch[0] = interrupted r11
    std     12, {scratch}+8(13)           # scratch[1] = vector
    mfcr    11
    std     11, {scratch}+16(13)          # scratch[2] = interrupted CR, before the compare below
    mr      11, 1                         # r11 = interrupted r1
    clrrdi  12, 1, {thread_shift}         # r12 = thread_info (base of the stack)
    ld      12, {ti_livepatch_sp}(12)     # r12 = top of the livepatch stack
    addi    12, 12, {lowest}              # r12 = lowest r1 that leaves the guard intact
    cmpld   1, 12
    blt-    1f                            # r1 too low: the stack has overflowed
    addi    1, 1, -{below}                # r1 = frame, below the red zone
    li      12, 0                         # r12 = 0: on the thread's own stack
    b       2f
1:  ld      1, {emergency}(13)            # r1 = this CPU's emergency stack top
    addi    1, 1, -{frame}                # r1 = frame
    li      12, 1                         # r12 = 1: stack overflow
2:  std     11, 0(1)                      # back chain = interrupted r1
    std     11, {gpr1}(1)                 # regs.gpr[1] = interrupted r1
    std     12, {result}(1)               # regs.result = overflow flag
    std     0, {gpr0}(1)
    std     2, {gpr2}(1)
    std     3, {gpr3}(1)
    std     3, {orig_gpr3}(1)
    .irp number, 4,5,6,7,8,9,10
    std     \number, {gprs}+8*\number(1)     # regs.gpr[4..=10]
    .endr
    ld      0, {scratch}+0(13)
    std     0, {gpr11}(1)                 # regs.gpr[11] = interrupted r11
    mfspr   0, {sprg2}
    std     0, {gpr12}(1)                 # regs.gpr[12] = interrupted r12
    .irp number, 13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    std     \number, {gprs}+8*\number(1)     # regs.gpr[13..=31]
    .endr
    ld      0, {scratch}+8(13)
    std     0, {trap}(1)                  # regs.trap = vector
    mfsrr0  0
    std     0, {nip}(1)                   # regs.nip = SRR0
    mfsrr1  0
    std     0, {msr}(1)                   # regs.msr = SRR1
    mfctr   0
    std     0, {ctr}(1)
    mflr    0
    std     0, {link}(1)
    mfxer   0
    std     0, {xer}(1)
    ld      0, {scratch}+16(13)
    std     0, {ccr}(1)                   # regs.ccr = interrupted CR
    mfdar   0
    std     0, {dar}(1)
    mfdsisr 0
    std     0, {dsisr}(1)
    li      0, {msr_ri}
    mtmsrd  0, 1                          # MSR[RI] = 1: SRR0/1 are saved; EE stays 0
    ld      2, {percpu_toc}(13)           # r2 = kernel TOC
    addi    3, 1, {regs}                  # r3 = &regs
    bl      {dispatch}                    # exception_dispatch(&mut regs)
    .globl exception_dispatch_return
exception_dispatch_return:                # in the LR slot of every InterruptFrame below a running handler

    li      0, 0
    mtmsrd  0, 1                          # MSR[RI] = 0 while SRR0/1 are live
    ld      0, {nip}(1)
    mtsrr0  0                             # SRR0 = regs.nip
    ld      0, {msr}(1)
    mtsrr1  0                             # SRR1 = regs.msr
    ld      0, {ctr}(1)
    mtctr   0
    ld      0, {link}(1)
    mtlr    0
    ld      0, {xer}(1)
    mtxer   0
    ld      0, {ccr}(1)
    mtcr    0
    ld      0, {gpr0}(1)
    .irp number, 2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    ld      \number, {gprs}+8*\number(1)     # every GPR but r0 and r1 from regs
    .endr
    ld      1, {gpr1}(1)                  # r1 = interrupted r1, last
    rfid
    .size exception_common, . - exception_common
    "#,
    scratch = const offset_of!(PerCpu, exception_scratch),
    emergency = const offset_of!(PerCpu, emergency_stack),
    percpu_toc = const offset_of!(PerCpu, toc),
    thread_shift = const THREAD_SHIFT,
    ti_livepatch_sp = const offset_of!(ThreadInfo, livepatch_sp),
    lowest = const STACK_GUARD + RED_ZONE + FRAME_SIZE,
    below = const RED_ZONE + FRAME_SIZE,
    frame = const FRAME_SIZE,
    regs = const REGS,
    sprg2 = const spr::SPRG2,
    msr_ri = const 2,
    dispatch = sym crate::exception::exception_dispatch,
    gprs = const gpr!(0),
    gpr0 = const gpr!(0),
    gpr1 = const gpr!(1),
    gpr2 = const gpr!(2),
    gpr3 = const gpr!(3),
    gpr11 = const gpr!(11),
    gpr12 = const gpr!(12),
    orig_gpr3 = const REGS + offset_of!(PtRegs, orig_gpr3),
    trap = const REGS + offset_of!(PtRegs, trap),
    nip = const REGS + offset_of!(PtRegs, nip),
    msr = const REGS + offset_of!(PtRegs, msr),
    ctr = const REGS + offset_of!(PtRegs, ctr),
    link = const REGS + offset_of!(PtRegs, link),
    xer = const REGS + offset_of!(PtRegs, xer),
    ccr = const REGS + offset_of!(PtRegs, ccr),
    dar = const REGS + offset_of!(PtRegs, dar),
    dsisr = const REGS + offset_of!(PtRegs, dsisr),
    result = const REGS + offset_of!(PtRegs, result),
);

unsafe extern "C" {
    /// The common exception entry (assembly above); vector slots branch here.
    pub fn exception_common();
    /// Where `exception_dispatch` returns to: the value its prologue saves in
    /// the LR slot of the `InterruptFrame`, which is how a stack walk
    /// recognises that frame.
    pub static exception_dispatch_return: u8;
}

/// Whether a stack frame whose LR save slot holds `saved_link` is an
/// `InterruptFrame` (and so holds the interrupted context's `PtRegs`).
#[macros::notrace]
pub fn is_interrupt_frame(saved_link: u64) -> bool {
    saved_link == &raw const exception_dispatch_return as u64
}
