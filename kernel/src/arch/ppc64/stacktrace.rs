//! The reliable stack walk of a thread (Linux: `arch_stack_walk_reliable`): the machine's side of `portable::reliable_stack`.
//!
//! The portable walk follows the back chain and applies the rules; this file
//! gives it what only the machine knows: where a thread's stack and its
//! outermost frame are, its livepatch stack (read here, since its layout is
//! the arch's), and what each return address is. The classifier, in the
//! order it asks:
//! - `exception_dispatch_return`: an interrupt frame lies above (unreliable:
//!   the interrupted function may be anywhere, in its prologue or epilogue,
//!   its return address in LR or r0 rather than in a frame). Except one that
//!   interrupted the hypervisor cede of the idle loop (`interrupts::ceded_at`):
//!   there the interrupted code is the leaf `cede`, at its one instruction
//!   after `sc 1`, with no frame of its own; its return address is the saved
//!   LR and its caller's frame the saved r1, and the walk goes on from there
//!   (`interrupted_leaf`). The idle thread is switched out that way whenever
//!   a tick wakes a sleeper on its CPU;
//! - the return point into `livepatch_handler` (after its `bctrl`) or into
//!   a direct-call trampoline (after its `bl`): the real return is on the
//!   livepatch stack; any other address in the handler or in the
//!   trampolines' pool is unreliable (before the push the replacement is
//!   only in r11 or CTR or the call words, after the pop the caller's return
//!   only in LR);
//! - `return_to_handler`: the real return is on the graph return stack; any
//!   other address in the ftrace stubs is unreliable (a handler or the
//!   graph's return path is running, with the caller's return in a stub frame);
//! - `thread_start` and the return from a thread's entry function, and the
//!   boot code's calls of `boot_main` and `secondary_main` (the boot thread
//!   and the idle threads): the outermost frame;
//! - kernel text (`__kernel_start` up to `__text_end`) or, by the caller's
//!   closure, a loaded module's memory: an ordinary return;
//! - anything else: unknown, unreliable.
//!
//! Generic code supplies what arch may not know (docs/ARCHITECTURE.md, "The
//! arch seam"): whether an address is module memory, and the real return
//! addresses on the thread's graph return stack (its layout is the graph
//! tracer's), oldest first.
//!
//! A walked thread must stay where it is for the whole walk: the caller
//! walks either itself (`walk_reliable_current`) or a thread that is
//! switched out and cannot be switched in meanwhile (`walk_reliable`, for
//! instance under `smp::stop_machine`, or with the thread's CPU held).
use super::context::{SWITCH_FRAME_SIZE, SwitchFrame, thread_start_returns};
use super::exceptions::{InterruptFrame, PtRegs, is_interrupt_frame};
use super::ftrace::{ftrace_stubs_end, ftrace_stubs_start, return_to_handler};
use super::interrupts::ceded_at;
use super::livepatch::{LivepatchFrame, in_livepatch_code, is_livepatch_return};
use super::thread_info::{LIVEPATCH_STACK_OFFSET, STACK_END_MAGIC, ThreadInfo};
use alloc::vec::Vec;
use boot::{MINIMAL_FRAME, THREAD_SIZE, boot_entry_returns};
use core::mem::{offset_of, size_of};
use macros::notrace;
pub use portable::reliable_stack::{Kind, Reason, Unreliable};
use portable::reliable_stack::{Stack, Start, walk};

unsafe extern "C" {
    /// The first byte of the kernel image and one past its text (the linker script's).
    static __kernel_start: u8;
    static __text_end: u8;
}

/// Whether `address` lies in the kernel's text (`__kernel_start` up to `__text_end`).
#[notrace]
pub fn is_kernel_text(address: u64) -> bool {
    (&raw const __kernel_start as u64..&raw const __text_end as u64).contains(&address)
}

/// What the return address `address` is (see the module comment).
#[notrace]
pub fn classify(address: u64, module_text: &dyn Fn(u64) -> bool) -> Kind {
    // Safety: tables the assembler wrote, never changed.
    let (thread_entries, boot_entries) = unsafe { (thread_start_returns, boot_entry_returns) };
    let stubs = &raw const ftrace_stubs_start as u64..&raw const ftrace_stubs_end as u64;
    let kernel_text = &raw const __kernel_start as u64..&raw const __text_end as u64;
    if is_interrupt_frame(address) {
        Kind::ExceptionReturn
    } else if is_livepatch_return(address) {
        Kind::LivepatchReturn
    } else if in_livepatch_code(address) {
        // Before the trampolines' general kernel-text case: the pool is text.
        Kind::LivepatchWindow
    } else if address == return_to_handler as *const () as u64 {
        Kind::GraphReturn
    } else if stubs.contains(&address) {
        Kind::Ftrace
    } else if thread_entries.contains(&address) || boot_entries.contains(&address) {
        Kind::ThreadEntry
    } else if kernel_text.contains(&address) || module_text(address) {
        Kind::Text
    } else {
        Kind::Unknown
    }
}

/// The return addresses on the stack of the switched-out thread whose stack
/// starts at `base` and whose saved r1 (its `SwitchFrame`) is
/// `stack_pointer`, innermost first, beginning with the return into the
/// function that called `switch_context`; or why they cannot be known.
/// `graph_returns`: the real return addresses on its graph return stack,
/// oldest first; `module_text`: whether an address is in a loaded module.
#[notrace]
pub fn walk_reliable(
    base: u64,
    stack_pointer: u64,
    graph_returns: &[u64],
    module_text: &dyn Fn(u64) -> bool,
) -> Result<Vec<u64>, Unreliable> {
    let top = base + THREAD_SIZE as u64;
    let link = stack_pointer + offset_of!(SwitchFrame, link) as u64;
    if !stack_pointer.is_multiple_of(16) || stack_pointer < base || stack_pointer + (SWITCH_FRAME_SIZE as u64) > top {
        return Err(Unreliable { reason: Reason::OutsideStack, frame: stack_pointer, address: 0 });
    }
    // Safety: the switch frame lies inside the thread's stack, checked above.
    let return_address = unsafe { *(link as *const u64) };
    walk_stack(base, Start { stack_pointer, return_address }, graph_returns, module_text)
}

/// The return addresses on the calling thread's stack, innermost first,
/// beginning with the return into this function's caller; or why they
/// cannot be known (`walk_reliable`).
#[notrace]
#[inline(never)]
pub fn walk_reliable_current(graph_returns: &[u64], module_text: &dyn Fn(u64) -> bool) -> Result<Vec<u64>, Unreliable> {
    let stack_pointer = super::registers::stack_pointer();
    let (base, _) = super::thread_info::stack_bounds(stack_pointer);
    // Safety: our own frame's back chain, and the LR slot of our caller's
    // frame, where our prologue saved the return into it (this function
    // calls others and uses the result, so it has a frame and saved its LR).
    let return_address = unsafe { *((*(stack_pointer as *const u64) + boot::LINK_SAVE as u64) as *const u64) };
    let walk = walk_stack(base, Start { stack_pointer, return_address }, graph_returns, module_text);
    // Used after the call, so the call is not a tail call: a tail call
    // would leave this function without a frame, and r1 above would be the
    // caller's, whose own function the walk would then leave out.
    core::hint::black_box(&walk);
    walk
}

/// The walk of the stack at `base` from `start`, with its livepatch stack.
#[notrace]
fn walk_stack(
    base: u64,
    start: Start,
    graph_returns: &[u64],
    module_text: &dyn Fn(u64) -> bool,
) -> Result<Vec<u64>, Unreliable> {
    let top = base + THREAD_SIZE as u64;
    let livepatch_links = livepatch_links(base)?;
    let interrupted = |frame: u64| interrupted_leaf(frame, top);
    let stack = Stack {
        low: base,
        high: top,
        outermost: top - MINIMAL_FRAME as u64,
        livepatch_links: &livepatch_links,
        graph_returns,
        interrupted: &interrupted,
    };
    // Safety: the walk reads only aligned words inside [base, top), the thread's stack.
    let read = |address: u64| unsafe { *(address as *const u64) };
    walk(&stack, start, read, |address| classify(address, module_text))
}

/// The interrupted context of the interrupt frame at `frame` (in a stack
/// ending at `top`) if it is the idle loop's cede (see the module comment):
/// the caller's frame (r1) and the return address into it (LR).
#[notrace]
fn interrupted_leaf(frame: u64, top: u64) -> Option<Start> {
    let regs = frame + offset_of!(InterruptFrame, regs) as u64;
    if regs + size_of::<PtRegs>() as u64 > top {
        return None;
    }
    // Safety: the saved registers lie inside the thread's stack, checked above.
    let registers = unsafe { &*(regs as *const PtRegs) };
    ceded_at(registers.nip).then_some(Start { stack_pointer: registers.gpr[1], return_address: registers.link })
}

/// The `link` of every frame on the livepatch stack of the thread at
/// `base`, oldest first; unreliable if its top is not at a frame's end
/// inside the stack or a frame's marker was overwritten.
#[notrace]
fn livepatch_links(base: u64) -> Result<Vec<u64>, Unreliable> {
    let frame_size = size_of::<LivepatchFrame>() as u64;
    let first = base + LIVEPATCH_STACK_OFFSET as u64;
    // Safety: a live thread's stack base holds its thread_info.
    let top = unsafe { (*(base as *const ThreadInfo)).livepatch_sp };
    let corrupt = Err(Unreliable { reason: Reason::LivepatchStackCorrupt, frame: top, address: 0 });
    if top < first || top > base + THREAD_SIZE as u64 || !(top - first).is_multiple_of(frame_size) {
        return corrupt;
    }
    let mut links = Vec::with_capacity(((top - first) / frame_size) as usize);
    let mut frame = first;
    while frame < top {
        // Safety: a whole frame between the livepatch stack's start and its top, inside the stack.
        let LivepatchFrame { link, marker, .. } = unsafe { (frame as *const LivepatchFrame).read() };
        if marker != STACK_END_MAGIC {
            return Err(Unreliable { reason: Reason::LivepatchStackCorrupt, frame, address: link });
        }
        links.push(link);
        frame += frame_size;
    }
    Ok(links)
}
