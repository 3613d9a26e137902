//! `livepatch_handler`: the seed's trampoline between a caller and a replacement function.
//!
//! When a function A calls B and B is replaced by C, `ftrace_caller` leaves
//! through here instead of jumping to C. Two facts shape it (see
//! docs/livepatch.md): A may have called B's local entry without saving its
//! TOC, and C may run with another TOC, so A's r2 must be kept and restored
//! around the call; and A may have stored C's arguments 9 and up (or variadic
//! ones) in its own frame at r1+96.., so no stack frame can be pushed below
//! r1 while C runs. The TOC and the return address therefore go on the
//! per-thread livepatch stack, which grows up from just above
//! `STACK_END_MAGIC` in `thread_info`.
use super::bug::{bug_entry_end, bug_entry_macro};
use super::ftrace::FtraceRegs;
use super::thread_info::ThreadInfo;
use boot::{PerCpu, THREAD_SIZE};
use core::mem::{offset_of, size_of};

/// One frame on the livepatch stack, pushed per call of a replaced function.
#[repr(C)]
pub struct LivepatchFrame {
    /// A's r2 at the call.
    pub toc: u64,
    /// The return address into A (or `return_to_handler` under the graph tracer).
    pub link: u64,
    /// STACK_END_MAGIC: checked on the way back.
    pub marker: u64,
}

/// Bytes the livepatch stack must leave free below r1 when it grows: an
/// exception entry needs its red zone, frame and guard above the livepatch
/// stack (EXCEPTION_STACK_ROOM), and the replacement its own frames below r1
/// (1 KiB), so that runaway recursion through a patched function meets this
/// check (a BUG naming livepatch.rs) before a tick finds the stack overflowed.
pub const LIVEPATCH_STACK_MARGIN: usize = super::exceptions::EXCEPTION_STACK_ROOM + 1024;

/// Bytes of one livepatch frame.
pub(super) const FRAME: usize = size_of::<LivepatchFrame>();

unsafe extern "C" {
    /// The trampoline below; the livepatch core's ftrace handler sets nip to it.
    pub fn livepatch_handler();
    /// The label just after it (for backtraces and debuggers).
    pub static livepatch_handler_end: u8;
    /// Where this call's livepatch frame exists, for debuggers (gdb/kernel.py).
    pub static livepatch_handler_windows: LivepatchHandlerWindows;
}

/// Offsets from `livepatch_handler` of the stretch in which the call's own
/// livepatch frame is on the livepatch stack and complete: from `pushed` (the
/// first instruction after the frame is written) up to `popped` (the first
/// instruction after `livepatch_sp` is lowered again). Before `pushed` and from
/// `popped` on, LR and r2 hold A's return address and TOC and the newest
/// livepatch frame, if any, belongs to an outer call. Computed by the assembler
/// from labels, so they follow any change to the code.
#[repr(C)]
pub struct LivepatchHandlerWindows {
    pub pushed: u64,
    pub popped: u64,
    /// Where C returns to: the instruction after the `bctrl`. From the first
    /// instruction up to here the handler is not preemptible (`entering`).
    pub returned: u64,
}

/// Whether `nip` lies in `livepatch_handler` before C is called: from its
/// first instruction up to and including the `bctrl`. There C's address is
/// only in r11 or CTR, and for the first five instructions the livepatch
/// frame is not even pushed, so nothing on the thread's stacks shows that it
/// is about to run module code. The timer does not preempt there (see
/// `ftrace::in_ftrace`): a thread is switched out either before
/// `ftrace_caller`'s handler chose C (and then chooses again when it
/// resumes) or inside C (and then its saved NIP or a return address shows
/// it), never in between. Unloading relies on it.
/// The same holds for a direct-call trampoline before its `bl` of C
/// (`trampoline::entering`), where freeing it relies on it.
#[macros::notrace]
#[inline(always)]
pub fn entering(nip: u64) -> bool {
    let start = livepatch_handler as *const () as u64;
    // Safety: a table the assembler wrote, never changed.
    let returned = unsafe { livepatch_handler_windows.returned };
    (start..start + returned).contains(&nip) || super::trampoline::entering(nip)
}

/// Whether `address` lies in code that calls a replacement without a stack
/// frame of its own, keeping the caller's return address on the livepatch
/// stack: `livepatch_handler` or a direct-call trampoline (any slot of the
/// pool, whatever it holds now).
#[macros::notrace]
#[inline(always)]
pub fn in_livepatch_code(address: u64) -> bool {
    (livepatch_handler as *const () as u64..&raw const livepatch_handler_end as u64).contains(&address)
        || super::trampoline::pool().contains(&address)
}

/// Whether `address` is where a replacement returns to in such code (after
/// `livepatch_handler`'s `bctrl` or a trampoline's `bl`): the return that
/// the newest unused livepatch frame's link stands for.
#[macros::notrace]
#[inline(always)]
pub fn is_livepatch_return(address: u64) -> bool {
    // Safety: a table the assembler wrote, never changed.
    let returned = unsafe { livepatch_handler_windows.returned };
    address == livepatch_handler as *const () as u64 + returned || super::trampoline::is_return_point(address)
}

/// Makes the traced call continue in `replacement` (a global entry) instead
/// of the traced function (Linux: `klp_arch_set_pc`): through
/// `livepatch_handler`, which keeps the caller's TOC and return address on
/// the livepatch stack around the call. The stub hands the replacement to
/// the handler in r11 (`FtraceRegs::target`). Inlined into the livepatch
/// core's handler, which stays a leaf.
#[macros::notrace]
#[inline(always)]
pub fn klp_arch_set_pc(regs: &mut FtraceRegs, replacement: u64) {
    regs.regs.nip = livepatch_handler as *const () as u64;
    regs.target = replacement;
}

/// log2 of THREAD_SIZE: `clrrdi` by it turns r1 into its thread_info.
pub(super) const THREAD_SHIFT: u32 = THREAD_SIZE.trailing_zeros();

/// The return half that `livepatch_handler` and every direct-call
/// trampoline share, as one assembler template string: checks the newest
/// livepatch frame's marker (a BUG, recorded at the invoking line, if C
/// overwrote it), gives LR and r2 back from it and pops it.
///
/// On entry (C has just returned): r3/r4 = C's results; r2 = C's TOC or
/// anything; r0, r11, r12 free; r13 = the per-CPU area; the newest frame
/// on the livepatch stack is this call's.
/// On exit: LR = the frame's link (the return into A), r2 = A's TOC, the
/// frame popped (`livepatch_sp` lowered); r0, r11, r12 clobbered; r3/r4,
/// r1, CTR untouched. The invoking block must define the operands
/// thread_shift, livepatch_sp, frame, toc, link, marker and magic (as
/// `livepatch_handler`'s does) and `bug_entry` (`bug_entry_macro!`).
macro_rules! livepatch_frame_pop {
    () => {
        concat!(
            r#"
    # Back from C: r3/r4 = results; r2 = C's TOC or anything; r0, r11, r12 free.
    clrrdi  12, 1, {thread_shift}     # r12 = thread_info
    ld      11, {livepatch_sp}(12)    # r11 = top of the livepatch stack
    ld      0, {marker}-{frame}(11)   # r0 = frame.marker
    ld      2, {magic}(13)            # r2 = STACK_END_MAGIC (r2 is restored below)
2:  tdne    0, 2                      # BUG: the frame's marker was overwritten while C ran
"#,
            "    bug_entry 2b, \"",
            file!(),
            "\", ",
            line!(),
            r#"
    ld      0, {link}-{frame}(11)     # r0 = frame.link
    mtlr    0                         # LR = return address into A (an interrupt frame keeps it: still busy)
    ld      2, {toc}-{frame}(11)      # r2 = A's TOC
    addi    11, 11, -{frame}
    std     11, {livepatch_sp}(12)    # livepatch_sp -= frame
"#
        )
    };
}
pub(super) use livepatch_frame_pop;

core::arch::global_asm!(
    bug_entry_macro!(),
    r#"
    .text
    # livepatch_handler
    #
    # On entry (from ftrace_caller, whose handler set nip to this address):
    # no stack frame and none may be created; r1 = A's stack pointer;
    # LR = r0 = the return address into A; r11 = C's global entry point;
    # r2 = the TOC at B's entry (A's when A called B's local entry);
    # r3-r10 = the arguments; r0, r12, CTR free; r13 = per-CPU area.
    # Calls C with r12 = CTR (C computes its own TOC from r12).
    # On exit (return to A): r2 and LR as on entry, r3/r4 = C's results,
    # the livepatch frame popped; r0, r11, r12, CTR clobbered; r1 unchanged.
    # Traps (BUG) when the livepatch stack would come within
    # LIVEPATCH_STACK_MARGIN of r1, and when a frame's marker was overwritten.
    # Preemption: from the first instruction up to and including the bctrl
    # the timer never switches this thread out (`entering`, asked by
    # in_ftrace): C's address is only in r11/CTR there, and unloading C's
    # module relies on no switched-out thread holding it like that (a tick
    # is deferred 20 us; a BUG trap kills the thread, whose frames then no
    # longer count). After the bctrl a tick may preempt anywhere: C's NIP,
    # return addresses into C and the frame's link (into A) are what
    # module::busy reads (docs/livepatch.md, "Unloading").
    .globl livepatch_handler
    .type livepatch_handler, @function
livepatch_handler:
    mtctr   11                        # CTR = C's global entry (no frame yet: not preemptible)
    clrrdi  12, 1, {thread_shift}     # r12 = thread_info (CURRENT_THREAD_INFO from r1)
    ld      11, {livepatch_sp}(12)    # r11 = livepatch stack top
    addi    11, 11, {frame}           # r11 = top after pushing one frame
    addi    0, 11, {margin}           # r0 = highest byte the stack may then reach
    "#,
    // BUG: the livepatch stack would meet the normal stack (trap if r0 >= r1, unsigned).
    "1: tdlge 0, 1", concat!("bug_entry 1b, \"", file!(), "\", ", line!()),
    r#"
    std     11, {livepatch_sp}(12)    # livepatch_sp += frame (fields filled below, still not preemptible)
    std     2, {toc}-{frame}(11)      # frame.toc = A's TOC
    mflr    0                         # r0 = LR = return address into A
    std     0, {link}-{frame}(11)     # frame.link = return address into A (A's module is busy from here)
    ld      0, {magic}(13)            # r0 = STACK_END_MAGIC (per-CPU copy: one load)
    std     0, {marker}-{frame}(11)   # frame.marker = STACK_END_MAGIC
.Llivepatch_handler_pushed:           # from here the frame is complete (see LivepatchHandlerWindows)
    mfctr   12                        # r12 = C's global entry
    bctrl                             # C(arguments); r1 untouched, A's frame intact; preemptible in C
.Llivepatch_handler_returned:         # NIP before this label: not preemptible (see `entering`)

    "#,
    livepatch_frame_pop!(),
    r#"
.Llivepatch_handler_popped:           # from here the frame is gone; LR and r2 are A's again
    blr                               # back to A
    .size livepatch_handler, . - livepatch_handler
    .globl livepatch_handler_end      # for debuggers: where the handler ends
livepatch_handler_end:

    # For debuggers: the stretch in which this call's frame is on the
    # livepatch stack, as offsets from livepatch_handler (LivepatchHandlerWindows).
    # Kept in this text section, which the handler's users keep linked.
    .balign 8
    .globl livepatch_handler_windows
    .type livepatch_handler_windows, @object
livepatch_handler_windows:
    .quad   .Llivepatch_handler_pushed - livepatch_handler
    .quad   .Llivepatch_handler_popped - livepatch_handler
    .quad   .Llivepatch_handler_returned - livepatch_handler
    .size livepatch_handler_windows, . - livepatch_handler_windows
    "#,
    bug_entry_end!(),
    thread_shift = const THREAD_SHIFT,
    livepatch_sp = const offset_of!(ThreadInfo, livepatch_sp),
    frame = const FRAME,
    margin = const LIVEPATCH_STACK_MARGIN,
    toc = const offset_of!(LivepatchFrame, toc),
    link = const offset_of!(LivepatchFrame, link),
    marker = const offset_of!(LivepatchFrame, marker),
    magic = const offset_of!(PerCpu, stack_end_magic),
);
