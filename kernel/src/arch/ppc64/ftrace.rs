//! The -mprofile-kernel ftrace stubs: `ftrace_caller`, `ftrace_regs_caller`, `ftrace_stub`,
//! the function-graph hooks, the record they hand to handlers, and the hooks
//! that patch sites and stubs (named as Linux names them: `ftrace_init_nop`,
//! `ftrace_prepare_change` with `SiteChange` (the per-site steps of
//! `ftrace_replace_code`), `ftrace_update_ftrace_func`, `ftrace_enable_ftrace_graph_caller`,
//! `ftrace_disable_ftrace_graph_caller`).
//!
//! A traced function B starts, after its local entry point, with the site
//! `mflr r0; bl ftrace_caller` (or `bl ftrace_regs_caller`). B has not built
//! a frame yet: r1 is still its caller A's stack pointer, and A may have put
//! arguments 9 and up in its own parameter save area above r1. The stubs
//! build their frame below r1, so they never touch those.
use super::exceptions::PtRegs;
use super::text::{self, TextError};
use boot::{MINIMAL_FRAME, PerCpu, THREAD_SIZE};
use core::mem::{offset_of, size_of};
use core::sync::atomic::AtomicUsize;
use macros::notrace;
use portable::backchain::Backchain;
use portable::instruction::{self, MFLR_R0, NOP};

/// What a handler gets: the registers of the traced call. After the light
/// stub only r2-r10, `link` (the return address into the caller) and `nip`
/// (where execution resumes) are valid; an ops with SAVE_REGS is always called
/// from `ftrace_regs_caller`, which fills every field of `regs`.
#[repr(C)]
pub struct FtraceRegs {
    pub regs: PtRegs,
    /// The traced site (the `bl` word): stays put when a handler changes `regs.nip`.
    pub ip: u64,
    /// Handed to `livepatch_handler` in r11 when `nip` is set to it: the
    /// replacement's global entry. Only the livepatch core sets nip to
    /// `livepatch_handler`, so another NIP-modifying handler is never taken
    /// for a livepatch: the decision is by who changed nip, not whether.
    pub target: u64,
}

/// Always inlined (a method cannot be `#[notrace]`): handlers call them, and
/// they must have no ftrace site of their own.
impl FtraceRegs {
    /// The return address into the traced function's caller (`link`): where
    /// the traced function returns.
    #[inline(always)]
    pub fn return_address(&self) -> u64 {
        self.regs.link
    }

    /// Makes the traced function return to `address` instead (the graph
    /// tracer's `return_to_handler`).
    #[inline(always)]
    pub fn set_return_address(&mut self, address: u64) {
        self.regs.link = address;
    }
}

/// The ops the stubs pass to what `ftrace_call` calls (Linux:
/// `function_trace_op`): the stubs read it, `trace::ops` sets it when it
/// points `ftrace_call` at a single ops's handler.
#[unsafe(no_mangle)]
pub static FUNCTION_TRACE_OP: AtomicUsize = AtomicUsize::new(0);

/// The frame both stubs push: an ELFv2 header, then the record.
#[repr(C)]
struct FtraceFrame {
    header: [u64; MINIMAL_FRAME / 8],
    record: FtraceRegs,
}

/// Bytes of the frame both stubs push below the traced function's entry r1.
pub const FRAME_SIZE: usize = size_of::<FtraceFrame>().next_multiple_of(16);
const RECORD: usize = offset_of!(FtraceFrame, record);

/// Bytes a call through an ftrace site may use below the traced function's
/// entry r1 (its caller's r1): the stub's frame (400), the deepest chain of
/// what the stub calls (a handler, `ftrace_ops_assist` or `ftrace_ops_list`
/// and a handler, the graph hook), and the red zone of the deepest function;
/// or the graph tracer's `return_to_handler` path, which runs at the same
/// depth. Measured by `cargo xtask test`'s stack budget check from the
/// disassembly: 816 (stub 400, `ftrace_ops_list` 96, `function_handler` 32,
/// red zone 288); it fails if the measure exceeds this figure, and it counts
/// this figure at every ftrace site on the timer path against `STACK_GUARD`.
/// The handlers' room check traps only when less than this is left
/// (docs/ARCHITECTURE.md, "The exception stack budget").
pub const FTRACE_STACK_ROOM: usize = 1024;
/// FTRACE_STACK_ROOM in the image, where `cargo xtask test` reads it (xtask/src/stack.rs).
#[used]
#[unsafe(no_mangle)]
static FTRACE_STACK_ROOM_BYTES: u64 = FTRACE_STACK_ROOM as u64;
/// The lowest address, above `livepatch_sp`, at which a handler's
/// `&FtraceRegs` leaves FTRACE_STACK_ROOM below the traced function's entry
/// r1 (the record lies RECORD bytes above the stub's r1, which is FRAME_SIZE
/// below the entry r1).
pub const FTRACE_REGS_LOWEST: usize = FTRACE_STACK_ROOM - FRAME_SIZE + RECORD;
// The room holds at least the stub's frame; and a trap from the room check
// has r1 below the stub's frame, within the exception guard, so the entry
// reports it as a stack overflow from the emergency stack.
const _: () = assert!(FTRACE_STACK_ROOM > FRAME_SIZE && FTRACE_STACK_ROOM <= super::exceptions::STACK_GUARD);
const REGS: usize = RECORD + offset_of!(FtraceRegs, regs);
const IP: usize = RECORD + offset_of!(FtraceRegs, ip);
const TARGET: usize = RECORD + offset_of!(FtraceRegs, target);

/// Frame of `return_to_handler`: a header and the three registers it keeps.
#[repr(C)]
struct ReturnFrame {
    header: [u64; MINIMAL_FRAME / 8],
    toc: u64,
    results: [u64; 2],
    padding: u64,
}
/// Bytes of the frame `return_to_handler` pushes below the returning function's caller's r1.
pub const RETURN_FRAME_SIZE: usize = size_of::<ReturnFrame>();

macro_rules! gpr {
    ($number:expr) => {
        REGS + offset_of!(PtRegs, gpr) + 8 * $number
    };
}

core::arch::global_asm!(
    r#"
    .text
    # ftrace_entry allregs / ftrace_exit allregs: the two halves of both entry
    # stubs, around their patchable calls. Both push the same frame (an ELFv2
    # header, then FtraceRegs) below the caller A's r1. allregs = 0 is the
    # light stub: the record holds r2-r10, link, nip and ip, and only those
    # come back. allregs = 1 is the full stub: every GPR, CTR, XER, CR and MSR
    # go into pt_regs, and every GPR but r0, r1 and r11, XER and CR come back.
    # Lines inside `.if \allregs` are the full stub's alone; the rest are both
    # stubs'. Each stub's register contract is at its label below.
    # Before popping its frame the exit overwrites the frame's LR save slot,
    # where the handler's (or the graph hook's) prologue saved the return
    # address into this stub, with r1 (a stack address, never code): once the
    # frame is popped that memory is reused by the traced function's frames,
    # and a stale return into a stub left there would make `in_ftrace` take a
    # thread that has long left ftrace for one inside it, and the timer would
    # not preempt it for as long as the slot stays unwritten (a loop that
    # calls nothing). return_to_handler does the same after its call.
    .macro ftrace_entry allregs
    std     0, {link_save}(1)         # A's LR save slot = return address into A
    stdu    1, -{frame}(1)            # push our frame below A's
    .if \allregs
    std     0, {gpr0}(1)              # regs.gpr[0] = return address into A
    .endif
    std     0, {link}(1)              # regs.link = parent ip
    .if \allregs
    addi    0, 1, {frame}             # r0 = A's stack pointer (the return address is in regs.link)
    std     0, {gpr1}(1)              # regs.gpr[1] = A's stack pointer
    .endif
    std     2, {gpr2}(1)              # regs.gpr[2] = caller's TOC
    std     3, {gpr3}(1)              # argument 1
    .irp number, 4,5,6,7,8,9,10
    std     \number, {gprs}+8*\number(1)     # arguments 2-8
    .endr
    .if \allregs
    .irp number, 11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    std     \number, {gprs}+8*\number(1)     # regs.gpr[11..=31]
    .endr
    mfctr   11                        # r11 = CTR (r11 itself is saved above)
    std     11, {ctr}(1)              # regs.ctr
    mfxer   11                        # r11 = XER
    std     11, {xer}(1)              # regs.xer
    mfcr    11                        # r11 = CR
    std     11, {ccr}(1)              # regs.ccr
    mfmsr   11                        # r11 = MSR
    std     11, {msr}(1)              # regs.msr
    .endif
    mflr    12                        # r12 = resume point in B
    std     12, {nip}(1)              # regs.nip = resume point
    addi    3, 12, -4                 # r3 = ip: the site's bl
    std     3, {ip}(1)                # record.ip = ip
    .if \allregs
    ld      4, {link}(1)              # r4 = parent ip (r0 now holds A's r1)
    .else
    mr      4, 0                      # r4 = parent ip
    .endif
    ld      2, {percpu_toc}(13)       # r2 = kernel TOC
    addis   5, 2, {trace_op}@toc@ha   # r5 = r2 + high half of its TOC offset
    ld      5, {trace_op}@toc@l(5)    # r5 = function_trace_op
    addi    6, 1, {record}            # r6 = &FtraceRegs
    .endm

    .macro ftrace_exit allregs
    ld      12, {nip}(1)              # r12 = regs.nip, as the handlers left it
    mtctr   12                        # CTR = where to continue
    .if \allregs
    ld      0, {xer}(1)               # r0 = regs.xer
    mtxer   0                         # XER = regs.xer
    ld      0, {ccr}(1)               # r0 = regs.ccr
    mtcr    0                         # CR = regs.ccr
    .endif
    ld      0, {link}(1)              # r0 = regs.link, as the handlers left it
    mtlr    0                         # LR = r0 = return address into A
    ld      2, {gpr2}(1)              # caller's TOC and B's arguments
    .irp number, 3,4,5,6,7,8,9,10
    ld      \number, {gprs}+8*\number(1)     # B's arguments
    .endr
    .if \allregs
    .irp number, 12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    ld      \number, {gprs}+8*\number(1)     # and the rest but r11, as a handler left them
    .endr
    .endif
    ld      11, {target}(1)           # r11 = the replacement, if nip = livepatch_handler
    std     1, {link_save}(1)         # our LR slot = r1, no code address: erase the stub return a callee saved there
    addi    1, 1, {frame}             # pop our frame
    bctr                              # continue in B, or where a handler sent us
    .endm

    # ftrace_caller: the light entry stub.
    #
    # On entry (from a site in function B): r0 = LR at B's entry, the return
    # address into the caller A; LR = the word after the site's bl; r1 = A's
    # stack pointer (B has no frame); r2 = A's or B's TOC; r3-r10 = B's
    # arguments; r11, r12 free; r13 = per-CPU area.
    # Calls: ftrace_call's target (r3 = ip of the site's bl, r4 = parent ip,
    # r5 = function_trace_op, r6 = &FtraceRegs) with the kernel TOC and
    # the timer never preempting inside (see `in_ftrace`); then ftrace_graph_call.
    # On exit: branches to regs.nip with LR = r0 = regs.link, r1 as on entry,
    # r2-r10 from the record, r11 = record.target (for livepatch_handler when
    # nip is it); r12, CTR clobbered.
    .globl ftrace_stubs_start         # the stubs below, up to ftrace_stubs_end
ftrace_stubs_start:
    .globl ftrace_caller
    .type ftrace_caller, @function
ftrace_caller:
    ftrace_entry 0                    # save r2-r10, link, nip, ip; r3-r6 = the handler's arguments
    .globl ftrace_call
ftrace_call:
    bl      ftrace_stub               # patched: the handler, or the list walker
    .globl ftrace_graph_call
ftrace_graph_call:
    nop                               # patched: bl ftrace_graph_caller
    ftrace_exit 0                     # restore r2-r10, LR, r11 = target; pop; bctr to nip
    .size ftrace_caller, . - ftrace_caller

    # ftrace_regs_caller: the full entry stub (SAVE_REGS).
    #
    # On entry: as ftrace_caller.
    # Calls: ftrace_regs_call's target, as ftrace_caller, with a complete
    # pt_regs; then ftrace_regs_graph_call.
    # On exit: every GPR but r0, r1 and r11 restored from pt_regs (a handler
    # may change any of them), CR and XER restored, LR = r0 = regs.link,
    # r11 = record.target, CTR = regs.nip, continue there.
    .globl ftrace_regs_caller
    .type ftrace_regs_caller, @function
ftrace_regs_caller:
    ftrace_entry 1                    # save pt_regs whole, ip; r3-r6 = the handler's arguments
    .globl ftrace_regs_call
ftrace_regs_call:
    bl      ftrace_stub               # patched: the handler, or the list walker
    .globl ftrace_regs_graph_call
ftrace_regs_graph_call:
    nop                               # patched: bl ftrace_graph_caller
    ftrace_exit 1                     # restore every GPR but r0, r1, r11, XER, CR, LR; r11 = target; pop; bctr to nip
    .size ftrace_regs_caller, . - ftrace_regs_caller

    # ftrace_stub: what ftrace_call and ftrace_regs_call call when no handler is registered.
    .globl ftrace_stub
    .type ftrace_stub, @function
ftrace_stub:
    blr
    .size ftrace_stub, . - ftrace_stub

    # ftrace_graph_caller: target of the graph call sites.
    # On entry: r1 = a stub's frame, r2 = kernel TOC, LR = back into the stub.
    # Tail-calls ftrace_graph_entry(&FtraceRegs), which may replace
    # regs.link with return_to_handler; it returns straight to the stub.
    .globl ftrace_graph_caller
    .type ftrace_graph_caller, @function
ftrace_graph_caller:
    addi    3, 1, {record}            # r3 = &FtraceRegs
    b       {graph_entry}
    .size ftrace_graph_caller, . - ftrace_graph_caller

    # return_to_handler: where a function hooked by the graph tracer returns.
    #
    # On entry: r3, r4 = the function's return values; r1 = its caller's
    # stack pointer; r2 = the TOC the caller expects; LR meaningless.
    # Calls ftrace_return_to_handler() (kernel TOC), which pops the thread's
    # return stack and gives the real return address.
    # On exit: returns there with r2, r3, r4 preserved; r0, r5-r12, CTR clobbered.
    .globl return_to_handler
    .type return_to_handler, @function
return_to_handler:
    stdu    1, -{return_frame}(1)     # a frame below the caller's
    std     2, {return_toc}(1)        # keep the caller's TOC
    std     3, {return_results}(1)    # and the return values
    std     4, {return_results}+8(1)
    ld      2, {percpu_toc}(13)       # r2 = kernel TOC
    bl      {graph_return}            # r3 = the real return address
    .globl return_to_handler_call_return
return_to_handler_call_return:
    mtlr    3                         # LR = real return address
    ld      2, {return_toc}(1)
    ld      3, {return_results}(1)
    ld      4, {return_results}+8(1)
    std     1, {link_save}(1)         # our LR slot = r1: erase the return here ftrace_return_to_handler saved
    addi    1, 1, {return_frame}
    blr
    .size return_to_handler, . - return_to_handler
    .globl ftrace_stubs_end
ftrace_stubs_end:
    "#,
    frame = const FRAME_SIZE,
    record = const RECORD,
    ip = const IP,
    target = const TARGET,
    percpu_toc = const offset_of!(PerCpu, toc),
    trace_op = sym FUNCTION_TRACE_OP,
    graph_entry = sym crate::arch::ftrace_graph_entry,
    graph_return = sym crate::arch::ftrace_return_to_handler,
    return_frame = const RETURN_FRAME_SIZE,
    return_toc = const offset_of!(ReturnFrame, toc),
    return_results = const offset_of!(ReturnFrame, results),
    link_save = const boot::LINK_SAVE,
    nip = const REGS + offset_of!(PtRegs, nip),
    link = const REGS + offset_of!(PtRegs, link),
    ctr = const REGS + offset_of!(PtRegs, ctr),
    xer = const REGS + offset_of!(PtRegs, xer),
    ccr = const REGS + offset_of!(PtRegs, ccr),
    msr = const REGS + offset_of!(PtRegs, msr),
    gprs = const gpr!(0),
    gpr0 = const gpr!(0),
    gpr1 = const gpr!(1),
    gpr2 = const gpr!(2),
    gpr3 = const gpr!(3),
);

unsafe extern "C" {
    /// The first byte of the stubs and one past their last (`return_to_handler` is the last).
    pub static ftrace_stubs_start: u8;
    pub static ftrace_stubs_end: u8;
    static return_to_handler_call_return: u8;
    pub fn ftrace_caller();
    pub fn ftrace_regs_caller();
    pub fn ftrace_stub();
    pub fn ftrace_graph_caller();
    pub fn return_to_handler();
    /// The patchable call sites inside the stubs (labels, not functions).
    pub static ftrace_call: u32;
    pub static ftrace_regs_call: u32;
    pub static ftrace_graph_call: u32;
    pub static ftrace_regs_graph_call: u32;
}

// The walk's frame layout is the ABI's the boot code follows.
const _: () = assert!(portable::backchain::LINK_SAVE == boot::LINK_SAVE as u64);

/// Frames `in_ftrace` looks at, at most: every frame a thread's stack can
/// hold, so the bound never ends a walk before the chain does (a fixed 64
/// once let a handler nested 64 frames deep be preempted, which breaks what
/// `unregister` relies on). The walk accepts only 16-byte aligned frames, each
/// above the one before, inside the THREAD_SIZE block r1 is in, so no chain
/// it follows has more than THREAD_SIZE / 16 frames (real ELFv2 frames take at
/// least MINIMAL_FRAME bytes: half as many). A well-formed chain ends at its
/// outermost frame long before; the bound only caps a corrupted one. The cost
/// is the timer's alone: `in_ftrace` runs only when the decrementer
/// interrupts (`exception_dispatch`), never on a traced call, and it is the
/// interrupted thread's depth, about ten instructions a frame.
const WALK_FRAMES: usize = THREAD_SIZE / FRAME_ALIGNMENT;
/// What the walk requires of a frame's address.
const FRAME_ALIGNMENT: usize = 16;
const _: () = assert!(MINIMAL_FRAME >= FRAME_ALIGNMENT && THREAD_SIZE.is_multiple_of(FRAME_ALIGNMENT));

/// Whether the context `registers` interrupted could be preempted: its
/// preempt count is 0 and it is not inside ftrace (`in_ftrace`), the two
/// tests the timer makes before it preempts. An IPI asks it for the grace
/// periods of `sync` (the context is outside every read-side section).
#[notrace]
pub fn interrupted_preemptible(registers: &super::exceptions::PtRegs) -> bool {
    let stack_pointer = registers.gpr[1];
    // Safety: r1 of an interrupted kernel context lies in a THREAD_SIZE block
    // (a thread's stack, an idle or emergency stack) whose base holds its thread_info.
    let preempt_count = unsafe { (*super::thread_info::thread_info_of(stack_pointer)).preempt_count };
    preempt_count == 0 && !in_ftrace(registers.nip, registers.link, stack_pointer)
}

/// Whether the interrupted context (its nip, LR and r1) is inside ftrace:
/// in a stub, in a handler called from one, in the graph tracer's return
/// path, or in `livepatch_handler` before it calls the replacement (the
/// stub's handler chose C and C's address is only in r11/CTR:
/// `livepatch::entering`). The timer does not preempt such a context, so no thread is ever
/// parked in a handler (unregistering relies on it) or half way through a
/// ring buffer write; it costs a traced call only the erasure below. Handlers are found by
/// the return addresses of the stubs' calls in LR or in a frame's LR slot.
/// That is exact because no such return address outlives its call: the stubs
/// and `return_to_handler` overwrite the LR slot of their frame, where their
/// callee's prologue saved it, before they pop the frame (see the macros). A
/// stale copy left in memory that the thread's later frames reuse would
/// otherwise hold off preemption for as long as nothing overwrote it: for
/// good, in a loop that calls nothing
/// (`a_thread_spinning_where_a_stub_frame_was_is_still_preempted`).
#[notrace]
pub fn in_ftrace(nip: u64, link: u64, stack_pointer: u64) -> bool {
    let stubs = &raw const ftrace_stubs_start as u64..&raw const ftrace_stubs_end as u64;
    if stubs.contains(&nip) || super::livepatch::entering(nip) {
        return true;
    }
    let returns = [
        &raw const ftrace_graph_call as u64,
        &raw const ftrace_regs_graph_call as u64,
        &raw const ftrace_graph_call as u64 + 4,
        &raw const ftrace_regs_graph_call as u64 + 4,
        &raw const return_to_handler_call_return as u64,
    ];
    if returns.contains(&link) {
        return true;
    }
    let bounds = super::thread_info::stack_bounds(stack_pointer);
    // Safety: the walk reads only aligned words inside `bounds`, the interrupted thread's stack.
    let read = |address: u64| unsafe { *(address as *const u64) };
    for frame in Backchain::new(stack_pointer, bounds, WALK_FRAMES, read) {
        if returns.contains(&frame.saved_link) {
            return true;
        }
    }
    false
}

/// `bl target` at `site`: every call the hooks below write links (the
/// stubs return to the word after it). A target out of reach (a module far
/// from the kernel text, say) is an error for the caller, never a panic.
#[notrace]
fn call_word(site: u64, target: u64) -> Result<u32, TextError> {
    instruction::branch(site, target, true).map_err(|_| TextError::OutOfReach { address: site, target })
}

/// The word at a site that calls `target`, or a nop for `None`.
#[notrace]
fn site_word(site: u64, target: Option<u64>) -> Result<u32, TextError> {
    target.map_or(Ok(NOP), |target| call_word(site, target))
}

/// One site's change from a call of `old_target` to a call of `new_target`
/// (a nop for `None`), encoded and checked, not yet written: generic code
/// prepares every site of an operation before it writes any (all or
/// nothing), then commits them, reverting the committed ones if a later
/// write fails. Preparing encodes both words once, so committing a few
/// hundred sites does no encoding. (Linux's powerpc `ftrace_replace_code`
/// works the same way per record: it computes the old and the new
/// instruction, then `ftrace_modify_code` checks the old and writes the new;
/// its `ftrace_make_call`, `ftrace_make_nop` and `ftrace_modify_call` are the
/// single-record forms, which nothing here needs.)
#[derive(Clone, Copy, Debug)]
pub struct SiteChange {
    address: u64,
    old: u32,
    new: u32,
}

impl SiteChange {
    /// Writes the new word, if the old one is still there, and flushes it on
    /// this CPU; the batch ends with `SiteChange::end_batch`. Always inlined,
    /// so it has no ftrace site (`#[notrace]` takes no methods): it runs
    /// while sites are being changed.
    #[inline(always)]
    pub fn commit(&self) -> Result<(), TextError> {
        text::modify_code_local(self.address, self.old, self.new)
    }

    /// Puts the old word back, if the new one is there (inlined, as `commit`).
    #[inline(always)]
    pub fn revert(&self) -> Result<(), TextError> {
        text::modify_code_local(self.address, self.new, self.old)
    }

    /// Ends a batch of commits or reverts: the other CPUs synchronise once
    /// (`text::end_batch`); until then only this CPU is sure to fetch the new
    /// words (the others run no traced code).
    #[inline(always)]
    pub fn end_batch(last: &SiteChange) {
        text::end_batch(last.address);
    }
}

/// Checks, writing nothing, that `site` holds a call of `old_target` (a nop
/// for `None`) and encodes the change to `new_target` (a nop for `None`): a
/// site's `nop` becoming `bl` a stub, back, or moving from one stub to the
/// other. A target out of branch reach is an error here, before anything is
/// written.
#[notrace]
pub fn ftrace_prepare_change(
    site: u64,
    old_target: Option<u64>,
    new_target: Option<u64>,
) -> Result<SiteChange, TextError> {
    let change = SiteChange { address: site, old: site_word(site, old_target)?, new: site_word(site, new_target)? };
    text::validate(site, change.old)?;
    Ok(change)
}

/// Prepares the two nops the compiler put at the local entry of `function`
/// (its global entry): the first becomes `mflr r0`, which the call in the
/// second expects, and the second stays a nop until a `SiteChange` makes it a call.
/// Returns the site: the address of the second word, the one that becomes
/// the call (and the `ip` handlers see). Either word not being a nop leaves
/// both alone (Linux: `ftrace_init_nop`).
#[notrace]
pub fn ftrace_init_nop(function: u64) -> Result<u64, TextError> {
    let first = text::local_entry(function);
    let site = first + 4;
    let found = text::read(site);
    if found != NOP {
        return Err(TextError::Mismatch { address: site, expected: NOP, found });
    }
    text::modify_code(first, NOP, MFLR_R0)?;
    Ok(site)
}

/// The two words `ftrace_update_ftrace_func(old_function, function)` changes.
#[notrace]
fn ftrace_func_changes(old_function: u64, function: u64) -> Result<[(u64, u32, u32); 2], TextError> {
    let (old, new) = (text::local_entry(old_function), text::local_entry(function));
    let (call, regs_call) = (&raw const ftrace_call as u64, &raw const ftrace_regs_call as u64);
    Ok([
        (call, call_word(call, old)?, call_word(call, new)?),
        (regs_call, call_word(regs_call, old)?, call_word(regs_call, new)?),
    ])
}

/// Makes both stubs call `function` (a global entry) at `ftrace_call` and
/// `ftrace_regs_call`, where they called `old_function` (Linux:
/// `ftrace_update_ftrace_func`). The stubs hold the kernel TOC already, so
/// the calls go to the functions' local entries. Both words or neither: a
/// mismatch at either leaves both as they were.
#[notrace]
pub fn ftrace_update_ftrace_func(old_function: u64, function: u64) -> Result<(), TextError> {
    text::modify_all(&ftrace_func_changes(old_function, function)?)
}

/// Checks, writing nothing, that `ftrace_update_ftrace_func` with the same
/// arguments would succeed now: generic code asks before it changes
/// anything else that the switch would have to undo.
#[notrace]
pub fn ftrace_validate_ftrace_func(old_function: u64, function: u64) -> Result<(), TextError> {
    ftrace_func_changes(old_function, function)?.iter().try_for_each(|&(site, old, _)| text::validate(site, old))
}

/// The two graph call sites' words: (site, nop, `bl ftrace_graph_caller`).
#[notrace]
fn graph_call_words() -> Result<[(u64, u32, u32); 2], TextError> {
    let target = ftrace_graph_caller as *const () as u64;
    let (call, regs_call) = (&raw const ftrace_graph_call as u64, &raw const ftrace_regs_graph_call as u64);
    Ok([(call, NOP, call_word(call, target)?), (regs_call, NOP, call_word(regs_call, target)?)])
}

/// Makes both stubs call `ftrace_graph_caller` after the handler (Linux:
/// `ftrace_enable_ftrace_graph_caller`). Both sites or neither.
#[notrace]
pub fn ftrace_enable_ftrace_graph_caller() -> Result<(), TextError> {
    text::modify_all(&graph_call_words()?)
}

/// Puts the nops back at the stubs' graph call sites (Linux:
/// `ftrace_disable_ftrace_graph_caller`). Both sites or neither.
#[notrace]
pub fn ftrace_disable_ftrace_graph_caller() -> Result<(), TextError> {
    text::modify_all(&graph_call_words()?.map(|(site, nop, call)| (site, call, nop)))
}

/// Traps when `value` lies below `limit` (unsigned): the handlers' stack room
/// check. The trap is not a BUG site: r1 is within the exception guard then,
/// so the entry reports a stack overflow from the emergency stack.
#[notrace]
#[inline(always)]
pub fn trap_if_below(value: u64, limit: u64) {
    // Safety: `td` with TO = 2 (logically less than) only traps.
    unsafe {
        core::arch::asm!("td 2, {value}, {limit}", value = in(reg) value, limit = in(reg) limit, options(nomem, nostack))
    };
}
