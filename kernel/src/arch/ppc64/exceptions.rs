//! Exception entry and exit: the full register save in `PtRegs` layout, and dispatch to Rust.
//!
//! Every vector slot (see `vectors.rs`) holds `mtsprg2 r12; li r12,VECTOR;
//! b exception_common`. `exception_common` builds an `InterruptFrame`, saves
//! every register into its `PtRegs`, calls `exception_dispatch(&mut PtRegs)`
//! with the kernel TOC, and returns with rfid to the possibly changed NIP/MSR.
//!
//! Where the frame goes (docs/ARCHITECTURE.md, "The exception stack budget"):
//! - the decrementer, the only handler that switches threads and comes back,
//!   stays on the thread's stack, below the red zone; everything it calls
//!   (measured by `tests::stack`) must fit in the `STACK_GUARD` bytes left
//!   above `livepatch_sp`;
//! - every other vector (BUG, Oops: they report and kill) moves to the per-CPU
//!   emergency stack, so a report never eats into the thread's stack;
//! - r1 already within the guard (overflow): the emergency stack, with
//!   `result` saying which stack overflowed.
use super::thread_info::ThreadInfo;
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
    /// Set by the entry code: 0, THREAD_STACK_OVERFLOW or EMERGENCY_STACK_OVERFLOW.
    pub result: u64,
}

/// What the entry code pushes: an ELFv2 frame header, then the registers.
#[repr(C)]
pub struct InterruptFrame {
    pub header: [u64; MINIMAL_FRAME / 8],
    pub regs: PtRegs,
}

/// `PtRegs::result` when the interrupted thread's r1 was within the guard.
pub const THREAD_STACK_OVERFLOW: u64 = 1;
/// `PtRegs::result` when r1 was within the guard of the emergency stack itself.
pub const EMERGENCY_STACK_OVERFLOW: u64 = 2;

/// ELFv2 red zone below r1 that leaf functions may use without a frame.
pub const RED_ZONE: usize = 288;
/// Free space kept between the livepatch stack top and the lowest exception
/// frame on a thread's stack: room for what the timer path
/// (`exception_dispatch` -> `time::tick` -> `schedule` -> `switch_context`,
/// then `reap`) uses below its frame, ftrace included. Measured
/// (docs/ARCHITECTURE.md, "The exception stack budget") by `cargo xtask
/// test`'s stack budget check, which sums frame sizes along the path's calls,
/// counts `ftrace::FTRACE_STACK_ROOM` (1,024) at the entry of every function
/// there with an ftrace site, adds the red zone, and fails if the sum exceeds
/// this: 2,112 bytes (the deepest traced function, a `BTreeMap` merge in
/// `reap`, is entered 1,088 bytes below the frame). The sum rounded up to the
/// next 512, with 448 bytes for the code to grow. Without tracing,
/// 1,000-1,130 bytes are written in
/// `tests::stack::timer_ticks_just_above_the_guard_touch_nothing_below_it`,
/// which fails if that path ever writes below the guard (also with every
/// tracer on: `traced_timer_ticks_just_above_the_guard_touch_nothing_below_it`).
pub const STACK_GUARD: usize = 2560;
/// STACK_GUARD in the image, where `cargo xtask test` reads it to check that the
/// timer path's frames, summed along its calls, fit (xtask/src/stack.rs).
#[used]
#[unsafe(no_mangle)]
static EXCEPTION_STACK_GUARD: u64 = STACK_GUARD as u64;
/// Bytes the entry pushes for an `InterruptFrame`.
pub const FRAME_SIZE: usize = size_of::<InterruptFrame>().next_multiple_of(16);
/// The lowest r1, above `livepatch_sp`, at which an exception may stay on the
/// thread's stack: red zone, frame, then the guard for what the handler calls.
pub const EXCEPTION_STACK_ROOM: usize = STACK_GUARD + RED_ZONE + FRAME_SIZE;
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
    # On exit (rfid): every register but r13 restored from PtRegs, NIP = regs.nip,
    # MSR = regs.msr. Per-CPU scratch words 0-2 clobbered. CR is saved before
    # the stack check's compare, which would otherwise corrupt the
    # interrupted code's CR0.
    # The frame: below the red zone of the interrupted r1 for the decrementer
    # and for exceptions nested on the emergency stack; at the top of the
    # per-CPU emergency stack for every other vector and whenever r1 was
    # within the guard above livepatch_sp (regs.result says which stack
    # overflowed). EE is 0 from the vector to rfid, so no interrupt can
    # arrive in between; RI stays 0 until SRR0/1 are saved. A synchronous
    # exception here (a store through a wild r1 before the mtmsrd) would
    # overwrite SRR0/1 and scratch: unrecoverable, and RI = 0 says so.
    .globl exception_common
    .type exception_common, @function
exception_common:
    std     11, {scratch}+0(13)           # scratch[0] = interrupted r11
    std     12, {scratch}+8(13)           # scratch[1] = vector
    mfcr    11                            # r11 = interrupted CR
    std     11, {scratch}+16(13)          # scratch[2] = interrupted CR, before the compare below
    mr      11, 1                         # r11 = interrupted r1
    clrrdi  12, 1, {thread_shift}         # r12 = thread_info (base of the stack)
    ld      12, {ti_livepatch_sp}(12)     # r12 = top of the livepatch stack
    addi    12, 12, {lowest}              # r12 = lowest r1 that leaves the guard intact
    cmpld   1, 12                         # CR0 = r1 against that limit (CR was saved above)
    blt-    3f                            # r1 too low: the stack has overflowed
    ld      12, {scratch}+8(13)           # r12 = vector
    cmpldi  12, {decrementer}             # CR0.eq = the timer
    beq+    4f                            # the timer stays on this stack: it may switch threads
    ld      12, {emergency}(13)           # r12 = emergency stack top
    xor     12, 12, 1                     # r12 = the address bits where r1 differs from it
    srdi.   12, 12, {thread_shift}        # CR0.eq = r1 is on the emergency stack already
    beq-    4f                            # a nested exception: stay below r1 there
    ld      1, {emergency}(13)            # r1 = this CPU's emergency stack top
    addi    1, 1, -{frame}                # r1 = frame: the report runs here, not on the thread's stack
    li      12, 0                         # r12 = 0: no overflow
    b       2f
4:  addi    1, 1, -{below}                # r1 = frame, below the red zone
    li      12, 0                         # r12 = 0: no overflow
    b       2f
3:  ld      12, {emergency}(13)           # r12 = emergency stack top
    xor     12, 12, 1                     # r12 = the address bits where r1 differs from it
    srdi.   12, 12, {thread_shift}        # CR0.eq = the emergency stack itself overflowed
    li      12, {thread_overflow}         # r12 = a thread's stack overflowed (li keeps CR0)
    bne+    5f                            # a thread's stack: keep r12
    li      12, {emergency_overflow}      # r12 = the emergency stack overflowed
5:  ld      1, {emergency}(13)            # r1 = this CPU's emergency stack top
    addi    1, 1, -{frame}                # r1 = frame
2:  std     11, 0(1)                      # back chain = interrupted r1
    std     11, {gpr1}(1)                 # regs.gpr[1] = interrupted r1
    std     12, {result}(1)               # regs.result = what overflowed, if anything
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
.Lexception_dispatch_return:              # in the LR slot of every InterruptFrame below a running handler

    # Drop any reservation this CPU holds (as Linux's interrupt return
    # does): the interrupted code may sit between a ldarx and its stdcx.,
    # and the reservation may be another thread's, taken before a switch in
    # the handler or on this CPU before the interrupted thread migrated
    # here; its stdcx. must fail and retry, not succeed on a stale one.
    ld      0, 0(1)                       # r0 = our frame's back chain
    stdcx.  0, 0, 1                       # store it back if reserved: memory unchanged, reservation gone (CR0 is restored below)
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
    # r13 is not reloaded: it is the per-CPU pointer, which the entry relies
    # on and nothing changes (no handler writes regs.gpr[13]); the interrupted
    # kernel code already holds the same value. Linux's kernel-mode interrupt
    # return leaves r13 (the PACA) alone too: only its return to user
    # reloads r13 from pt_regs (arch/powerpc/kernel/interrupt_64.S).
    .irp number, 2,3,4,5,6,7,8,9,10,11,12,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    ld      \number, {gprs}+8*\number(1)     # every GPR but r0, r1 and r13 from regs
    .endr
    ld      1, {gpr1}(1)                  # r1 = interrupted r1, last
    rfid
    .size exception_common, . - exception_common

    # Where exception_dispatch returns to, as data: a local label, so that
    # debuggers and backtraces name every address here exception_common.
    .section .rodata.exception_dispatch_return, "a"
    .balign 8
    .globl exception_dispatch_return
    .type exception_dispatch_return, @object
exception_dispatch_return:
    .quad   .Lexception_dispatch_return
    .size exception_dispatch_return, . - exception_dispatch_return
    "#,
    scratch = const offset_of!(PerCpu, exception_scratch),
    emergency = const offset_of!(PerCpu, emergency_stack),
    decrementer = const super::vectors::DECREMENTER,
    thread_overflow = const THREAD_STACK_OVERFLOW,
    emergency_overflow = const EMERGENCY_STACK_OVERFLOW,
    percpu_toc = const offset_of!(PerCpu, toc),
    thread_shift = const THREAD_SHIFT,
    ti_livepatch_sp = const offset_of!(ThreadInfo, livepatch_sp),
    lowest = const EXCEPTION_STACK_ROOM,
    below = const RED_ZONE + FRAME_SIZE,
    frame = const FRAME_SIZE,
    regs = const REGS,
    sprg2 = const spr::SPRG2,
    msr_ri = const super::registers::Msr::RI.bits(),
    dispatch = sym crate::arch::exception_dispatch,
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
    pub static exception_dispatch_return: u64;
}

/// Whether a stack frame whose LR save slot holds `saved_link` is an
/// `InterruptFrame` (and so holds the interrupted context's `PtRegs`).
#[macros::notrace]
pub fn is_interrupt_frame(saved_link: u64) -> bool {
    // Safety: a word the assembler wrote, never changed.
    saved_link == unsafe { exception_dispatch_return }
}
