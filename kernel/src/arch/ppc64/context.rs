//! The context switch: save the callee-saved state of one thread, resume another; and the first switch to a new thread.
use boot::MINIMAL_FRAME;
use core::mem::{offset_of, size_of};

/// What `switch_context` keeps on the stack of a thread that is not running:
/// an ELFv2 frame header, then the non-volatile registers the ABI requires
/// a call to preserve (soft-float kernel: no FP or vector registers).
#[repr(C)]
pub struct SwitchFrame {
    pub header: [u64; MINIMAL_FRAME / 8],
    /// r14..r31.
    pub nonvolatile: [u64; 18],
    pub toc: u64,
    pub condition: u64,
    pub link: u64,
    pub padding: u64,
}

/// Bytes `switch_context` pushes.
pub const SWITCH_FRAME_SIZE: usize = size_of::<SwitchFrame>();
const _: () = assert!(SWITCH_FRAME_SIZE.is_multiple_of(16));

unsafe extern "C" {
    /// Saves the current thread's context on its stack, stores its stack
    /// pointer in `*save_stack_pointer`, then resumes the thread whose saved
    /// stack pointer is `resume_stack_pointer`. Returns when the first thread
    /// is resumed in turn. Interrupts must be off.
    pub fn switch_context(save_stack_pointer: *mut u64, resume_stack_pointer: u64);
}

macro_rules! nonvolatile {
    ($register:expr) => {
        offset_of!(SwitchFrame, nonvolatile) + 8 * ($register - 14)
    };
}

core::arch::global_asm!(
    r#"
    # switch_context(r3 = where to store our r1, r4 = r1 of the thread to resume)
    #
    # On entry: interrupts off; LR = return address in the scheduler.
    # On exit (when this thread is resumed): r1, r2, r14-r31, CR and LR as
    # on entry. Clobbers r0, r3-r12, CTR, XER (volatile by the ABI).
    .text
    .globl switch_context
    .type switch_context, @function
switch_context:
    mflr    0
    stdu    1, -{frame}(1)          # push a SwitchFrame, back chain = our r1
    std     0, {link}(1)            # frame.link = return address
    mfcr    0
    std     0, {condition}(1)       # frame.condition = CR
    std     2, {toc}(1)             # frame.toc = r2
    std     14, {r14}(1)
    std     15, {r15}(1)
    std     16, {r16}(1)
    std     17, {r17}(1)
    std     18, {r18}(1)
    std     19, {r19}(1)
    std     20, {r20}(1)
    std     21, {r21}(1)
    std     22, {r22}(1)
    std     23, {r23}(1)
    std     24, {r24}(1)
    std     25, {r25}(1)
    std     26, {r26}(1)
    std     27, {r27}(1)
    std     28, {r28}(1)
    std     29, {r29}(1)
    std     30, {r30}(1)
    std     31, {r31}(1)
    std     1, 0(3)                 # *save_stack_pointer = r1

    mr      1, 4                    # r1 = the other thread's SwitchFrame
    ld      14, {r14}(1)
    ld      15, {r15}(1)
    ld      16, {r16}(1)
    ld      17, {r17}(1)
    ld      18, {r18}(1)
    ld      19, {r19}(1)
    ld      20, {r20}(1)
    ld      21, {r21}(1)
    ld      22, {r22}(1)
    ld      23, {r23}(1)
    ld      24, {r24}(1)
    ld      25, {r25}(1)
    ld      26, {r26}(1)
    ld      27, {r27}(1)
    ld      28, {r28}(1)
    ld      29, {r29}(1)
    ld      30, {r30}(1)
    ld      31, {r31}(1)
    ld      2, {toc}(1)             # r2 = its TOC
    ld      0, {condition}(1)
    mtcr    0                       # CR = its CR
    ld      0, {link}(1)
    mtlr    0                       # LR = where it called switch_context (or thread_start)
    addi    1, 1, {frame}           # pop the SwitchFrame
    blr
    .size switch_context, . - switch_context

    # thread_start: where a new thread's first switch_context returns to.
    # On entry: r14 = entry function (kernel TOC in r2 already), r15 = its argument.
    .globl thread_start
    .type thread_start, @function
thread_start:
    mr      3, 15                   # r3 = argument
    mr      12, 14                  # r12 = entry (global entry point convention)
    mtctr   14
    bctrl                           # entry(argument); it never returns
.Lthread_start_called:              # the outermost frame resumes here (thread_start_returns)
0:  b       0b
    .size thread_start, . - thread_start

    # Where a thread's outermost frame resumes: thread_start itself (the
    # first switch_context to a new thread returns there) and the
    # instruction after its bctrl (where the entry function would return):
    # the reliable stack walk's end. As data, so the label stays local.
    .pushsection .rodata.thread_start_returns, "a"
    .balign 8
    .globl thread_start_returns
    .type thread_start_returns, @object
thread_start_returns:
    .quad   thread_start
    .quad   .Lthread_start_called
    .size thread_start_returns, . - thread_start_returns
    .popsection
    "#,
    frame = const SWITCH_FRAME_SIZE,
    link = const offset_of!(SwitchFrame, link),
    condition = const offset_of!(SwitchFrame, condition),
    toc = const offset_of!(SwitchFrame, toc),
    r14 = const nonvolatile!(14), r15 = const nonvolatile!(15), r16 = const nonvolatile!(16),
    r17 = const nonvolatile!(17), r18 = const nonvolatile!(18), r19 = const nonvolatile!(19),
    r20 = const nonvolatile!(20), r21 = const nonvolatile!(21), r22 = const nonvolatile!(22),
    r23 = const nonvolatile!(23), r24 = const nonvolatile!(24), r25 = const nonvolatile!(25),
    r26 = const nonvolatile!(26), r27 = const nonvolatile!(27), r28 = const nonvolatile!(28),
    r29 = const nonvolatile!(29), r30 = const nonvolatile!(30), r31 = const nonvolatile!(31),
);

unsafe extern "C" {
    /// Entry trampoline of new threads (assembly above).
    fn thread_start();
    /// Where the outermost frame of a thread `copy_thread` made resumes:
    /// `thread_start` (before its first run) and the return from its entry
    /// function (for the reliable stack walk).
    pub static thread_start_returns: [u64; 2];
}

/// Prepares the stack of a new thread, whose highest address is `stack_top`
/// (exclusive), so that the first `switch_context` to it "returns" into
/// `thread_start`, which calls `entry(argument)` with the kernel TOC (Linux:
/// `copy_thread`). Returns the stack pointer to resume it with: a
/// `SwitchFrame` below an outermost, empty frame.
///
/// # Safety
/// `stack_top` is the top of a stack nobody uses yet.
#[macros::notrace]
pub unsafe fn copy_thread(stack_top: u64, entry: extern "C" fn(u64) -> !, argument: u64) -> u64 {
    let top_frame = stack_top - MINIMAL_FRAME as u64;
    let frame = top_frame - SWITCH_FRAME_SIZE as u64;
    let mut nonvolatile = [0u64; 18]; // r14..r31
    nonvolatile[0] = entry as *const () as u64; // r14: thread_start's entry
    nonvolatile[1] = argument; // r15: its argument
    let mut header = [0u64; MINIMAL_FRAME / 8];
    header[0] = top_frame; // back chain to the outermost frame
    // Safety: both frames lie inside the new, unused stack (the caller's promise).
    unsafe {
        (top_frame as *mut [u64; MINIMAL_FRAME / 8]).write([0; MINIMAL_FRAME / 8]);
        (frame as *mut SwitchFrame).write(SwitchFrame {
            header,
            nonvolatile,
            toc: super::registers::toc_pointer(),
            condition: 0,
            link: thread_start as *const () as u64,
            padding: 0,
        });
    }
    frame
}
