//! Back-chain stack walking: every ELFv2 frame starts with a pointer to its caller's frame.
use crate::{println, symbols, thread};
use macros::notrace;

/// Offset of the link register save slot in an ELFv2 frame.
const LINK_SAVE: u64 = 16;
/// Frames printed at most.
const MAXIMUM_FRAMES: usize = 32;

/// Prints `first` (if any), then the return address of each frame from `stack_pointer` on.
#[notrace]
pub fn print_from(stack_pointer: u64, first: Option<u64>) {
    println!("Call Trace:");
    if let Some(address) = first {
        println!("  [{address:#018x}] {}", symbols::Symbolized(address));
    }
    let (low, high) = thread::stack_bounds(stack_pointer);
    let mut frame = stack_pointer;
    for _ in 0..MAXIMUM_FRAMES {
        if frame < low || frame + LINK_SAVE + 8 > high || frame % 16 != 0 {
            break;
        }
        // Safety: `frame` lies within the current thread's stack, checked above.
        let caller = unsafe { *(frame as *const u64) };
        if caller == 0 || caller <= frame || caller + LINK_SAVE + 8 > high {
            break;
        }
        // Safety: as above, for the caller's frame.
        let address = unsafe { *((caller + LINK_SAVE) as *const u64) };
        if address != 0 {
            println!("  [{address:#018x}] {}", symbols::Symbolized(address));
        }
        frame = caller;
    }
}

/// Prints the calling thread's backtrace.
#[notrace]
pub fn print_current() {
    print_from(crate::arch::ppc64::registers::stack_pointer(), None);
}
