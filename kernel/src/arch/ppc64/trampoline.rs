//! Direct-call livepatch trampolines: the template every one copies, the pool of slots they live in, and writing them.
//!
//! A function B whose live patch is final (no transition in progress) and
//! which nothing else traces has its ftrace site branch straight to a
//! trampoline made for its replacement C, instead of to `ftrace_caller`
//! and `livepatch_handler` (docs/livepatch.md, "Two paths"). A trampoline
//! does `livepatch_handler`'s work with C built in: the caller A's TOC and
//! return address go on the livepatch stack (no stack frame: A may have
//! put C's arguments 9 and up in its own frame), then r2 = C's TOC and a
//! `bl` to C's local entry, then the pop.
//!
//! Every trampoline is a copy of `livepatch_trampoline_template` in which
//! only the three call words differ (`portable::trampoline::call_words`),
//! so one set of windows (`TrampolineWindows`) describes them all. They live
//! in `livepatch_trampolines`, a pool of `SLOTS` slots of `SLOT_SIZE` bytes
//! in the kernel's text, within a `bl` of every kernel site and of module
//! code loaded near the kernel. A slot is pristine (every word `trap`),
//! live (a whole trampoline), or free: its entry half (the words before the
//! return point) is `trap` again but its return half stays, identical in
//! every slot, so a thread that entered the trampoline before it was freed,
//! and is still in C, returns through the same code it left (see `free`).
//! Every word is written through `text`.
use super::bug::{bug_entry_end, bug_entry_macro};
use super::livepatch::{FRAME, LIVEPATCH_STACK_MARGIN, LivepatchFrame, THREAD_SHIFT, livepatch_frame_pop};
use super::text::{self, TextError};
use super::thread_info::ThreadInfo;
use boot::PerCpu;
use core::mem::offset_of;
use macros::notrace;
use portable::instruction::TRAP;
use portable::trampoline::{CALL_WORDS, CallError, call_words};

/// Bytes of one slot: one cache block, so a slot is flushed with one `dcbst`/`icbi`.
pub const SLOT_SIZE: usize = 128;
/// Slots in the pool: functions that can be called directly at once (the
/// others keep the generic path).
pub const SLOTS: usize = 256;
const SLOT_WORDS: usize = SLOT_SIZE / 4;

/// Offsets in the template (and so in every trampoline), computed by the
/// assembler from its labels.
#[repr(C)]
pub struct TrampolineWindows {
    /// The first instruction after the livepatch frame is complete.
    pub pushed: u64,
    /// The first of the `CALL_WORDS` call words.
    pub call: u64,
    /// Where C returns to: the word after the `bl`. Before it the
    /// trampoline is not preemptible (`entering`).
    pub returned: u64,
    /// The first instruction after the frame is popped (the `blr`).
    pub popped: u64,
    /// One past the last instruction.
    pub end: u64,
}

unsafe extern "C" {
    /// The template (never called: only copied).
    pub fn livepatch_trampoline_template();
    pub static livepatch_trampoline_windows: TrampolineWindows;
    /// The pool's first byte and one past its last.
    pub static livepatch_trampolines: u8;
    pub static livepatch_trampolines_end: u8;
}

core::arch::global_asm!(
    bug_entry_macro!(),
    r#"
    .text
    # livepatch_trampoline_template: the code of every direct-call trampoline.
    #
    # On entry (from the `bl` at B's ftrace site, or from a stub's exit when
    # the site is shared and a handler sent the call here): no stack frame
    # and none may be created; r0 = the return address into A; r1 = A's
    # stack pointer; r2 = the TOC at B's entry (A's when A called B's local
    # entry); r3-r10 = the arguments; LR = the word after the site (or r0),
    # never used; r11, r12 free; r13 = per-CPU area.
    # Calls C at its local entry with r2 = C's TOC (the call words).
    # On exit (return to A): r2 and LR = A's TOC and the return address into
    # A, r3/r4 = C's results, the livepatch frame popped; r0, r11, r12
    # clobbered; CTR untouched; r1 unchanged.
    # Traps (BUG) when the livepatch stack would come within
    # LIVEPATCH_STACK_MARGIN of r1, and when the frame's marker was
    # overwritten while C ran.
    # Preemption: from the first instruction up to and including the `bl`
    # the timer never switches this thread out (`entering`, asked by
    # in_ftrace): a trampoline is freed after a grace period, which no CPU
    # passes while inside that stretch. From the return point on it may be
    # preempted anywhere: that half never changes once written.
    .globl livepatch_trampoline_template
    .type livepatch_trampoline_template, @function
livepatch_trampoline_template:
    clrrdi  12, 1, {thread_shift}     # r12 = thread_info (from r1)
    ld      11, {livepatch_sp}(12)    # r11 = livepatch stack top
    addi    11, 11, {frame}+{margin}  # r11 = highest byte with one more frame and the margin
    "#,
    // BUG: the livepatch stack would meet the normal stack (trap if r11 >= r1, unsigned).
    "1: tdlge 11, 1", concat!("bug_entry 1b, \"", file!(), "\", ", line!()),
    r#"
    addi    11, 11, -{margin}         # r11 = top after pushing one frame
    std     11, {livepatch_sp}(12)    # livepatch_sp += frame (fields filled below, not preemptible)
    std     2, {toc}-{frame}(11)      # frame.toc = A's TOC
    std     0, {link}-{frame}(11)     # frame.link = return address into A (r0 free from here)
    ld      0, {magic}(13)            # r0 = STACK_END_MAGIC (per-CPU copy)
    std     0, {marker}-{frame}(11)   # frame.marker = STACK_END_MAGIC
.Ltrampoline_pushed:                  # the frame is complete
.Ltrampoline_call:                    # the call words, one set per trampoline:
    lis     2, 0                      # r2 = C's TOC, high half (or nop: C uses no TOC)
    addi    2, 2, 0                   # r2 += low half (or nop)
    bl      livepatch_trampoline_template  # bl C's local entry; r1 untouched, A's frame intact
.Ltrampoline_returned:                # C returns here; preemptible from here on

    "#,
    livepatch_frame_pop!(),
    r#"
.Ltrampoline_popped:                  # the frame is gone; LR and r2 are A's again
    blr                               # back to A
.Ltrampoline_end:
    .size livepatch_trampoline_template, . - livepatch_trampoline_template

    .balign 8
    .globl livepatch_trampoline_windows
    .type livepatch_trampoline_windows, @object
livepatch_trampoline_windows:
    .quad   .Ltrampoline_pushed - livepatch_trampoline_template
    .quad   .Ltrampoline_call - livepatch_trampoline_template
    .quad   .Ltrampoline_returned - livepatch_trampoline_template
    .quad   .Ltrampoline_popped - livepatch_trampoline_template
    .quad   .Ltrampoline_end - livepatch_trampoline_template
    .size livepatch_trampoline_windows, . - livepatch_trampoline_windows

    # The pool: SLOTS slots of SLOT_SIZE bytes, every word `trap` until a
    # trampoline is written there.
    .section .text.livepatch_trampolines, "ax", @progbits
    .balign {slot_size}
    .globl livepatch_trampolines
livepatch_trampolines:
    .fill {pool_words}, 4, {trap}
    .globl livepatch_trampolines_end
livepatch_trampolines_end:
    .text
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
    slot_size = const SLOT_SIZE,
    pool_words = const SLOTS * SLOT_WORDS,
    trap = const TRAP,
);

/// The windows (a table the assembler wrote, never changed).
#[notrace]
#[inline(always)]
pub fn windows() -> &'static TrampolineWindows {
    // Safety: written by the assembler, read-only.
    unsafe { &livepatch_trampoline_windows }
}

/// The pool's address range.
#[notrace]
#[inline(always)]
pub fn pool() -> core::ops::Range<u64> {
    &raw const livepatch_trampolines as u64..&raw const livepatch_trampolines_end as u64
}

/// The address of slot `slot`.
#[notrace]
pub fn slot_address(slot: usize) -> u64 {
    pool().start + (slot * SLOT_SIZE) as u64
}

/// (slot, offset in it) of an address inside the pool.
#[notrace]
#[inline(always)]
pub fn locate(address: u64) -> Option<(usize, u64)> {
    let pool = pool();
    if !pool.contains(&address) {
        return None;
    }
    let offset = address - pool.start;
    Some(((offset / SLOT_SIZE as u64) as usize, offset % SLOT_SIZE as u64))
}

/// Whether `nip` lies in a trampoline before C is called: from its first
/// instruction up to and including the `bl`. The timer does not preempt
/// there (`ftrace::in_ftrace`), so a thread is never switched out with a
/// trampoline about to call C: freeing one after a grace period is safe.
#[notrace]
#[inline(always)]
pub fn entering(nip: u64) -> bool {
    locate(nip).is_some_and(|(_, offset)| offset < windows().returned)
}

/// Whether `address` is the return point of a trampoline (where C returns).
#[notrace]
#[inline(always)]
pub fn is_return_point(address: u64) -> bool {
    locate(address).is_some_and(|(_, offset)| offset == windows().returned)
}

/// (slot, offset, the replacement its call words call now, if any) of an
/// address inside the pool: for reports and backtraces. Reads the slot's
/// `bl` word without a lock (a word, read whole; a slot being rewritten
/// may name the old or the new replacement).
#[notrace]
pub fn describe(address: u64) -> Option<(usize, u64, Option<u64>)> {
    let (slot, offset) = locate(address)?;
    let call = slot_address(slot) + windows().call + 8;
    let replacement = portable::instruction::branch_target(call, text::read(call)).map(|(target, _)| target);
    Some((slot, offset, replacement))
}

/// The template's address for an address in a trampoline (for BUG
/// records: only the template's traps are in the table).
#[notrace]
pub fn template_address(address: u64) -> Option<u64> {
    let (_, offset) = locate(address)?;
    (offset < windows().end).then(|| livepatch_trampoline_template as *const () as u64 + offset)
}

/// The template's words, `[0, end)`.
#[notrace]
fn template() -> &'static [u32] {
    let words = (windows().end / 4) as usize;
    // Safety: the template's own code, `end` bytes long, never changed.
    unsafe { core::slice::from_raw_parts(livepatch_trampoline_template as *const u32, words) }
}

/// Why a trampoline was not written: the replacement cannot be called from the slot.
pub type TrampolineError = CallError;

/// The call words of a trampoline in slot `slot` for `replacement`.
#[notrace]
pub fn call_for(slot: usize, replacement: u64) -> Result<[u32; CALL_WORDS], TrampolineError> {
    let call_address = slot_address(slot) + windows().call;
    // The doubleword before C is read only for the large code model's entry,
    // whose C (kernel or module text, compiled that way) has it there.
    let toc_offset = || {
        // Safety: the 8 aligned bytes before a large-model function's entry are its `.TOC. - C` word.
        unsafe { ((replacement - 8) as *const i64).read_volatile() }
    };
    call_words(call_address, replacement, text::read(replacement), text::read(replacement + 4), toc_offset)
}

/// A slot's words, 8-byte aligned (as the slots are), so they are checked
/// and copied eight bytes at a time (`text::modify_block_local`).
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct Words([u32; SLOT_WORDS]);

/// The words of a pristine slot.
const PRISTINE: Words = Words([TRAP; SLOT_WORDS]);

/// The words of a live trampoline before its call words are set: the
/// template, then `trap`; built once from the template, which never changes.
static LIVE: spin::Once<Words> = spin::Once::new();

#[notrace]
fn live() -> &'static Words {
    LIVE.call_once(|| {
        let template = template();
        let mut live = PRISTINE;
        live.0[..template.len()].copy_from_slice(template);
        live
    })
}

/// The words of a slot's entry half (up to the return point): the only
/// words written after a slot's first use. Free, they are `trap`.
#[notrace]
fn entry_half(words: &Words) -> &[u32] {
    &words.0[..(windows().returned / 4) as usize]
}

/// The words of a trampoline with call words `call` (`call_for`): the
/// template with its call words replaced.
#[notrace]
#[inline(always)]
fn words(call: &[u32; CALL_WORDS]) -> Words {
    let call_index = (windows().call / 4) as usize;
    let mut words = *live();
    words.0[call_index..call_index + CALL_WORDS].copy_from_slice(call);
    words
}

/// Writes the trampoline with call words `call` (`call_for`) into slot
/// `slot`, which must be pristine (`used_before == false`) or free; flushed
/// on this CPU only: the caller ends the batch (`text::end_batch`) before
/// any site branches to it. Returns its address. On error nothing is written.
#[notrace]
pub fn write(slot: usize, call: &[u32; CALL_WORDS], used_before: bool) -> Result<u64, TextError> {
    let address = slot_address(slot);
    let new = words(call);
    if used_before {
        // The return half is there already, and threads may be running it
        // (returning from a replacement the slot called before it was
        // freed): only the entry half is written, over its `trap` words.
        text::modify_block_local(address, entry_half(&PRISTINE), entry_half(&new))?;
    } else {
        text::modify_block_local(address, &PRISTINE.0, &new.0)?;
    }
    Ok(address)
}

/// Frees the trampoline with call words `call` in slot `slot`: its entry half
/// becomes `trap` again (a stray branch there is an Oops, never a call of
/// a stale C); its return half stays, so a thread still inside C returns
/// through it as before. The caller has made sure no site branches here
/// any more and a grace period has passed (no CPU is before the `bl`).
#[notrace]
pub fn free(slot: usize, call: &[u32; CALL_WORDS]) -> Result<(), TextError> {
    // The entry half only: the return half is never written again.
    text::modify_block_local(slot_address(slot), entry_half(&words(call)), entry_half(&PRISTINE))
}
