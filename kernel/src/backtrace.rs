//! Back-chain stack walking: every ELFv2 frame starts with a pointer to its caller's frame.
//!
//! A replacement function C is called by `livepatch_handler` or by a
//! direct-call trampoline, neither of which has a frame: the return address
//! C saved points into the handler or the trampoline, and the real caller A
//! is only on the thread's livepatch stack. The walk shows both sides: the
//! handler or trampoline, then A from the livepatch frame, newest first.
use crate::arch::livepatch::{LivepatchFrame, in_livepatch_code};
use crate::thread::{LIVEPATCH_STACK_OFFSET, ThreadInfo};
use crate::{println, symbols, thread};
use core::mem::size_of;
use macros::notrace;
use portable::backchain::Backchain;

/// Frames printed at most.
const MAXIMUM_FRAMES: usize = 32;

/// Prints `first` (if any), then the return address of each frame from `stack_pointer` on.
#[notrace]
pub fn print_from(stack_pointer: u64, first: Option<u64>) {
    println!("Call Trace:");
    if let Some(address) = first {
        println!("  [{address:#018x}] {}", symbols::Symbolized(address));
    }
    walk(stack_pointer, |address, from_livepatch_stack| {
        if from_livepatch_stack {
            println!(
                "  [{address:#018x}] {} (caller of the replaced function, from the livepatch stack)",
                symbols::Symbolized(address)
            );
        } else {
            println!("  [{address:#018x}] {}", symbols::Symbolized(address));
        }
    });
}

/// Calls `visit` with each return address from the frame at `stack_pointer`
/// outwards, and whether it came from the livepatch stack.
#[notrace]
pub fn walk(stack_pointer: u64, mut visit: impl FnMut(u64, bool)) {
    let bounds = thread::stack_bounds(stack_pointer);
    // Safety: the walk reads only aligned words inside `bounds`, the current thread's stack.
    let read = |address: u64| unsafe { *(address as *const u64) };
    let mut livepatch_frames_used = 0;
    let mut frames = Backchain::new(stack_pointer, bounds, MAXIMUM_FRAMES + 1, read);
    // The first frame's slot belongs to whatever it last called; each frame
    // above holds the return address into its function from the one below.
    frames.next();
    for frame in frames {
        let address = frame.saved_link;
        if address != 0 {
            visit(address, false);
            if in_livepatch_code(address) {
                if let Some(link) = livepatch_link(bounds.0, livepatch_frames_used) {
                    visit(link, true);
                }
                livepatch_frames_used += 1;
            }
        }
    }
}

/// The return address saved in the `index`th livepatch frame from the top of
/// the livepatch stack of the thread whose stack starts at `base`.
#[notrace]
fn livepatch_link(base: u64, index: usize) -> Option<u64> {
    // Safety: `base` is the current thread's stack base, holding its thread_info.
    let top = unsafe { (*(base as *const ThreadInfo)).livepatch_sp };
    let frame_size = size_of::<LivepatchFrame>() as u64;
    let frame = top.checked_sub(frame_size * (index as u64 + 1))?;
    if frame < base + LIVEPATCH_STACK_OFFSET as u64 {
        return None;
    }
    // Safety: between the livepatch stack's start and its top, inside the stack.
    Some(unsafe { (*(frame as *const LivepatchFrame)).link })
}

/// Prints the calling thread's backtrace.
#[notrace]
pub fn print_current() {
    print_from(crate::arch::registers::stack_pointer(), None);
}
