//! Whether any thread is inside a module: the code addresses each live thread may still return or resume to.
//!
//! Per module, not per thread: a thread is inside module M when one of these
//! addresses lies in M's memory:
//! - the return address of every frame on its normal stack (the LR save
//!   slots along the back chain), and for a thread the timer interrupted, the
//!   NIP and LR saved in its `InterruptFrame`;
//! - the return target (`link`) of every frame on its livepatch stack: a
//!   replacement running on behalf of a caller in M returns into M;
//! - every hooked return address on its function-graph return stack.
//!
//! The replacement address "in flight" (in r11 or CTR between
//! `ftrace_caller` and `livepatch_handler`'s `bctrl`) is never seen in a
//! thread that is switched out: that window is not preemptible
//! (`livepatch::entering`). Should the timer ever stop there anyway, the
//! event is recorded in
//! `PARKED_ENTERING`, which tests require to stay 0; r11, r12 and CTR are
//! then visited (`about_to_branch`), as they are for a context about to
//! branch through CTR anywhere in the kernel.
//!
//! A thread running on another CPU cannot be read while it runs: the scan
//! stops the machine (`arch::smp::stop_machine`), so every other CPU waits
//! in an IPI handler, and such a thread is seen in the registers its CPU was
//! interrupted in (the registers and the LR slot below, as for an interrupt
//! frame) and its stack from that r1. No thread switches or
//! moves between CPUs meanwhile.
//!
//! Dead threads are not looked at (they never run again), nor is a frame
//! that lies outside its thread's stack. The innermost frame of each walk
//! (the scanning function's own, or `switch_context`'s) has an LR slot its
//! owner has not written yet; it is skipped. For an interrupt frame, the
//! saved NIP, LR, r0, r1, r2 and r14-r31 are visited (`interrupted_registers`
//! says why not r3-r12 and CTR), and the LR slot of the interrupted r1's
//! frame when the interrupted code is about to reload its return address
//! from there (`slot_live`): a function interrupted in its epilogue, after
//! popping its frame, holds its return address only there, then in r0
//! (`a_tick_in_a_callees_epilogue_still_shows_the_caller_is_inside`).
//! Elsewhere that slot is stale, and a stale module address there or in a
//! volatile register kept a looping thread's module busy for good. This
//! scan is the last check of `module::unload`, after the patch's disable
//! transition completed (docs/modules.md, "Unloading").
use crate::arch::exceptions::{InterruptFrame, PtRegs, is_interrupt_frame};
use crate::arch::interrupts::ceded_at;
use crate::arch::livepatch::{LivepatchFrame, entering};
use crate::arch::registers::stack_pointer;
use crate::arch::smp::{parked_registers, stop_machine};
use crate::thread::{self, LIVEPATCH_STACK_OFFSET, LiveStack, ThreadInfo};
use crate::trace::graph::{RETURN_STACK_DEPTH, ReturnStack};
use boot::THREAD_SIZE;
use core::mem::{offset_of, size_of};
use core::ops::Range;
use core::sync::atomic::{AtomicU64, Ordering};
use macros::notrace;
use portable::backchain::Backchain;

/// Times a scan found a thread switched out inside `livepatch_handler` before
/// its call of the replacement (it must never happen; tests check it).
pub static PARKED_ENTERING: AtomicU64 = AtomicU64::new(0);

/// Who keeps a module busy: the thread, where it runs, and the address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holder {
    pub thread: u64,
    /// The CPU it runs on, if it is running elsewhere; None if switched out (or the caller).
    pub cpu: Option<usize>,
    /// The address inside the module; 0 when the thread's registers could not be read.
    pub address: u64,
}

/// The first thread that can still run and holds a code address inside
/// `memory`, on any CPU; None if there is none. Stops the machine while it looks.
pub fn inside(memory: Range<u64>) -> Option<Holder> {
    stop_machine(|| {
        let mut holder = None;
        for stack in thread::live_stacks(stack_pointer()) {
            let (base, cpu) = match stack {
                LiveStack::Caller { base, .. } | LiveStack::SwitchedOut { base, .. } => (base, None),
                LiveStack::RunningOn { base, cpu } => (base, Some(cpu)),
            };
            // Safety: a live thread's stack base holds its thread_info.
            let thread = unsafe { (*(base as *const ThreadInfo)).thread_id };
            let mut found = None;
            let visit = &mut |address: u64| {
                if found.is_none() && memory.contains(&address) {
                    found = Some(address);
                }
            };
            match stack {
                LiveStack::Caller { base, stack_pointer } | LiveStack::SwitchedOut { base, stack_pointer } => {
                    code_addresses(base, stack_pointer, visit)
                }
                LiveStack::RunningOn { base, cpu } => match parked_registers(cpu) {
                    Some(registers) => {
                        interrupted(registers, base, visit);
                        code_addresses(base, registers.gpr[1], visit);
                    }
                    // Running, yet not parked: cannot happen while the
                    // machine is stopped; if it did, the thread counts as inside.
                    None => found = Some(0),
                },
            }
            if let Some(address) = found {
                holder = Some(Holder { thread, cpu, address });
                break;
            }
        }
        holder
    })
}

/// Every register of an interrupted context, and the LR slot of its r1's
/// frame when it is live there (`slot_live`), if inside the stack at `base`.
#[notrace]
fn interrupted(registers: &PtRegs, base: u64, visit: &mut dyn FnMut(u64)) {
    interrupted_registers(registers, visit);
    if !slot_live(registers.nip) {
        return;
    }
    let slot = registers.gpr[1] + boot::LINK_SAVE as u64;
    let word = size_of::<u64>() as u64;
    if registers.gpr[1].is_multiple_of(word) && (base..base + THREAD_SIZE as u64 - word).contains(&slot) {
        // Safety: an aligned word inside the thread's stack, checked above.
        visit(unsafe { *(slot as *const u64) });
    }
}

/// Calls `visit` with every code address the thread whose stack starts at
/// `base`, with r1 = `stack_pointer`, may still return or resume to.
#[notrace]
fn code_addresses(base: u64, stack_pointer: u64, visit: &mut dyn FnMut(u64)) {
    // Safety: `base` is a live thread's stack base, holding its thread_info.
    let info = unsafe { &*(base as *const ThreadInfo) };
    livepatch_links(base, info.livepatch_sp, visit);
    if info.graph_stack != 0 {
        // Safety: thread_info.graph_stack points at the thread's own return stack.
        let returns = unsafe { &*(info.graph_stack as *const ReturnStack) };
        let depth = (info.graph_depth as usize).min(RETURN_STACK_DEPTH);
        returns.0.iter().take(depth).for_each(|entry| visit(entry.return_address));
    }
    stack_frames(base, stack_pointer, visit);
}

/// The `link` of every frame on the livepatch stack between its start and `top`.
#[notrace]
fn livepatch_links(base: u64, top: u64, visit: &mut dyn FnMut(u64)) {
    let frame_size = size_of::<LivepatchFrame>() as u64;
    let mut frame = base + LIVEPATCH_STACK_OFFSET as u64;
    while frame + frame_size <= top && top <= base + THREAD_SIZE as u64 {
        // Safety: between the livepatch stack's start and its top, inside the stack.
        visit(unsafe { (*(frame as *const LivepatchFrame)).link });
        frame += frame_size;
    }
}

/// The return addresses along the back chain from `stack_pointer`, and the
/// saved NIP and LR of every interrupt frame on the way.
#[notrace]
fn stack_frames(base: u64, stack_pointer: u64, visit: &mut dyn FnMut(u64)) {
    let high = base + THREAD_SIZE as u64;
    let regs_offset = offset_of!(InterruptFrame, regs) as u64;
    // Safety: the walk reads only aligned words inside the thread's stack.
    let read = |address: u64| unsafe { *(address as *const u64) };
    // Whether the next frame is an interrupted context's r1 frame whose LR
    // slot is dead (`slot_live`).
    let mut skip_next_link = false;
    for (index, frame) in Backchain::new(stack_pointer, (base, high), THREAD_SIZE / 32, read).enumerate() {
        let link = frame.saved_link;
        if index > 0 && !core::mem::take(&mut skip_next_link) {
            visit(link);
        }
        if is_interrupt_frame(link) && frame.address + regs_offset + size_of::<PtRegs>() as u64 <= high {
            // Safety: an InterruptFrame inside the stack, checked above.
            let regs = unsafe { &*((frame.address + regs_offset) as *const PtRegs) };
            interrupted_registers(regs, visit);
            if entering(regs.nip) {
                PARKED_ENTERING.fetch_add(1, Ordering::Relaxed);
            }
            // The next frame is the interrupted r1's: its LR slot counts
            // only where it is live.
            skip_next_link = !slot_live(regs.nip);
        }
    }
}

/// `ld r0,16(r1)`: the epilogue's reload of the return address from the LR
/// slot of the caller's frame.
const LOAD_RETURN_ADDRESS: u32 = 0xe801_0010;

/// Whether the LR slot of the frame at an interrupted context's r1 holds a
/// return address the context will use. Only in one place: a function's
/// epilogue after it popped its frame (r1 = its caller's frame) and before
/// `ld r0,16(r1)` reloaded its return address from that slot, i.e. with
/// NIP at that load or a few instructions before it. Anywhere else the slot belongs to the calls the
/// function at r1 makes and is stale between them; a thread that once
/// called a module's replacement and then loops without calling anything
/// at that depth keeps the module's address there for good (the SMP stress
/// test's workers did, and every unload was `Busy`). In its prologue the
/// return address is still in LR (and r0), and once the frame is made it is
/// in the caller's slot, which the back chain visits. A NIP outside the
/// kernel's text (a module's, whose list the stopped machine may not lock)
/// counts as live.
#[notrace]
fn slot_live(nip: u64) -> bool {
    if !nip.is_multiple_of(4) || !crate::arch::stacktrace::is_kernel_text(nip) {
        return true;
    }
    // The reload at NIP or a few instructions on (an epilogue may restore
    // other registers between the pop and it), before the return itself.
    for word in text_words(nip, BRANCH_LOOKAHEAD_WORDS) {
        if word == LOAD_RETURN_ADDRESS {
            return true;
        }
        if word == MOVE_TO_LINK_FROM_R0 || word >> 26 == 18 || word >> 26 == 16 || word >> 26 == 19 {
            return false;
        }
    }
    false
}

/// `mtlr r0`: the return address is in r0 (and then LR) from here on.
const MOVE_TO_LINK_FROM_R0: u32 = 0x7c08_03a6;

/// The registers of an interrupted context that may hold a code address it
/// will use: NIP, LR, r0 (a function in its epilogue has the return into its
/// caller only in r0, loaded from the slot below with LR still stale), r1,
/// r2 and the non-volatile r14-r31 (a function may keep anything there
/// across its calls). Not the other volatile registers (r3-r12, CTR): at an
/// interrupt they hold either what the interrupted code computes now or
/// whatever an earlier call left in them, and the latter stays for good in
/// a loop that does not touch them: `ftrace_caller` hands the replacement's
/// address to `livepatch_handler` in r11 and CTR, and the SMP stress
/// test's workers, which called a module's replacement once and then looped,
/// kept the module `Busy` on every unload. A live module address there
/// would be a function pointer the module handed out, about to be called,
/// which the rules for patch authors forbid (docs/modules.md); the calls the
/// livepatch core makes are covered by the disable transition, and
/// `livepatch_handler`'s window before its `bctrl` is not preemptible
/// (`entering`). After H_CEDE (`arch::interrupts::ceded_at`) the context
/// returns from a call, so r0 is dead too.
#[notrace]
fn interrupted_registers(registers: &PtRegs, visit: &mut dyn FnMut(u64)) {
    visit(registers.nip);
    visit(registers.link);
    if !ceded_at(registers.nip) {
        visit(registers.gpr[0]);
    }
    registers.gpr[1..=2].iter().chain(&registers.gpr[14..]).for_each(|&register| visit(register));
    about_to_branch(registers, visit);
}

/// `bctrl` and `bctr`: a branch to CTR (with and without linking).
const BRANCH_TO_COUNT: [u32; 2] = [0x4e80_0421, 0x4e80_0420];
/// `mtctr rS` with rS's field zero, and the mask that keeps all but rS.
const MOVE_TO_COUNT: u32 = 0x7c09_03a6;
const REGISTER_FIELD_CLEARED: u32 = 0xfc1f_ffff;
/// How far ahead of NIP an indirect branch still counts as about to happen.
const BRANCH_LOOKAHEAD_WORDS: u64 = 4;

/// The volatile registers the interrupted code is about to branch through,
/// which `interrupted_registers` otherwise leaves out as likely stale:
/// inside `livepatch_handler` before its `bctrl` (`entering`: r11, r12 and
/// CTR hold the replacement), and before an indirect call in kernel text
/// (within `BRANCH_LOOKAHEAD_WORDS` of NIP: the register an `mtctr` moves,
/// and CTR when a `bctrl`/`bctr` comes before any other branch). These are
/// passing states, so they cannot keep a module busy for good.
#[notrace]
fn about_to_branch(registers: &PtRegs, visit: &mut dyn FnMut(u64)) {
    if entering(registers.nip) {
        visit(registers.gpr[11]);
        visit(registers.gpr[12]);
        visit(registers.ctr);
        return;
    }
    for word in text_words(registers.nip, BRANCH_LOOKAHEAD_WORDS) {
        if BRANCH_TO_COUNT.contains(&word) {
            visit(registers.ctr);
            return;
        }
        if word & REGISTER_FIELD_CLEARED == MOVE_TO_COUNT {
            visit(registers.gpr[((word >> 21) & 31) as usize]);
        } else if word >> 26 == 18 || word >> 26 == 16 || word >> 26 == 19 {
            // Another branch (b, bc, or one to LR/CTR): the path ends here.
            return;
        }
    }
}

/// Up to `count` instruction words of kernel text from `address` on (none
/// outside the kernel's text, which is all that can be read safely here).
#[notrace]
fn text_words(address: u64, count: u64) -> impl Iterator<Item = u32> {
    (0..count)
        .map(move |index| address + 4 * index)
        .take_while(|&word| word.is_multiple_of(4) && crate::arch::stacktrace::is_kernel_text(word))
        // Safety: aligned words of the kernel's text, never unmapped.
        .map(|word| unsafe { (word as *const u32).read_volatile() })
}

/// What the scan reads of an interrupted context (`interrupted_registers`),
/// and whether its r1's LR slot counts (`slot_live`), for the tests.
#[cfg(feature = "ktest")]
pub fn interrupted_addresses(registers: &PtRegs) -> (alloc::vec::Vec<u64>, bool) {
    let mut seen = alloc::vec::Vec::new();
    interrupted_registers(registers, &mut |address| seen.push(address));
    (seen, slot_live(registers.nip))
}
