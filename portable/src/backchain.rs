//! The back-chain walk: an ELFv2 stack's frames, newest first, each found from the one below it.
//!
//! Every ELFv2 frame starts with the address of the frame above it (its
//! caller's: the back chain), and keeps at `LINK_SAVE` the return address a
//! function it called saved there, that is an address inside the frame's own
//! function (or a stale one, if that callee has returned). The walk reads
//! memory only through a closure, so the kernel hands it plain loads and the
//! tests below a fake stack. It never reads outside the bounds it is given,
//! stops at a frame that does not fit in them or is not 16-byte aligned, and
//! stops after a frame whose back chain does not point higher up the stack
//! (zero, a loop, garbage): a walk over a corrupted stack ends, and ends
//! without a fault.
//!
//! Inlined into its callers (`#[inline(always)]`): the kernel calls it from
//! the timer interrupt, where it must not call anything that has an ftrace
//! site, and generic code instantiated in the kernel crate gets one.

/// Offset of the link register save slot in an ELFv2 frame: after the back
/// chain (8 bytes) and the condition register save word (8).
pub const LINK_SAVE: u64 = 16;

/// One frame of the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// Where the frame starts: the stack pointer while its function runs.
    pub address: u64,
    /// The word at `address + LINK_SAVE`: the return address into this
    /// frame's function saved by a function it called.
    pub saved_link: u64,
}

/// The frames from a stack pointer outwards (an `Iterator` of `Frame`).
pub struct Backchain<Read> {
    next: u64,
    low: u64,
    high: u64,
    remaining: usize,
    read: Read,
}

impl<Read: Fn(u64) -> u64> Backchain<Read> {
    /// Walks from the frame at `stack_pointer`, inside the stack
    /// `[bounds.0, bounds.1)`, at most `limit` frames; `read(address)` loads
    /// the 8-byte word at `address` (always 8-byte aligned and within bounds).
    #[inline(always)]
    pub fn new(stack_pointer: u64, bounds: (u64, u64), limit: usize, read: Read) -> Self {
        Backchain { next: stack_pointer, low: bounds.0, high: bounds.1, remaining: limit, read }
    }
}

impl<Read: Fn(u64) -> u64> Iterator for Backchain<Read> {
    type Item = Frame;

    #[inline(always)]
    fn next(&mut self) -> Option<Frame> {
        let address = self.next;
        let end = address.checked_add(LINK_SAVE + 8);
        let fits = address >= self.low && end.is_some_and(|end| end <= self.high) && address.is_multiple_of(16);
        if self.remaining == 0 || !fits {
            self.remaining = 0;
            return None;
        }
        let back_chain = (self.read)(address);
        let saved_link = (self.read)(address + LINK_SAVE);
        // The chain must climb: anything else is its end (0) or corruption.
        self.remaining = if back_chain > address { self.remaining - 1 } else { 0 };
        self.next = back_chain;
        Some(Frame { address, saved_link })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;
    use core::cell::RefCell;

    const LOW: u64 = 0x1_0000;
    const WORDS: usize = 64;
    const HIGH: u64 = LOW + 8 * WORDS as u64;

    /// A stack of WORDS words at LOW; `frames` gives (frame address, back
    /// chain, saved link) to write, everything else is zero.
    fn stack(frames: &[(u64, u64, u64)]) -> Vec<u64> {
        let mut words = alloc::vec![0; WORDS];
        for &(address, back_chain, saved_link) in frames {
            words[((address - LOW) / 8) as usize] = back_chain;
            words[((address + LINK_SAVE - LOW) / 8) as usize] = saved_link;
        }
        words
    }

    /// Walks `words` from `stack_pointer`; fails the test on a read outside
    /// the bounds or misaligned. Returns the frames and the addresses read.
    fn walk(words: &[u64], stack_pointer: u64, limit: usize) -> (Vec<Frame>, Vec<u64>) {
        let reads = RefCell::new(Vec::new());
        let read = |address: u64| {
            assert!((LOW..HIGH).contains(&address) && address.is_multiple_of(8), "read at {address:#x}");
            reads.borrow_mut().push(address);
            words[((address - LOW) / 8) as usize]
        };
        let frames = Backchain::new(stack_pointer, (LOW, HIGH), limit, read).collect();
        (frames, reads.into_inner())
    }

    fn frame(address: u64, saved_link: u64) -> Frame {
        Frame { address, saved_link }
    }

    #[test]
    fn follows_the_chain_to_a_zero_back_chain() {
        let words = stack(&[(LOW + 0x40, LOW + 0x80, 0xa), (LOW + 0x80, LOW + 0x100, 0xb), (LOW + 0x100, 0, 0xc)]);
        let (frames, _) = walk(&words, LOW + 0x40, 10);
        assert_eq!(frames, [frame(LOW + 0x40, 0xa), frame(LOW + 0x80, 0xb), frame(LOW + 0x100, 0xc)]);
    }

    #[test]
    fn a_loop_ends_at_the_frame_that_points_back() {
        // 0x80 points back to 0x40, and 0xc0 to itself.
        let words = stack(&[(LOW + 0x40, LOW + 0x80, 1), (LOW + 0x80, LOW + 0x40, 2)]);
        let (frames, _) = walk(&words, LOW + 0x40, 10);
        assert_eq!(frames, [frame(LOW + 0x40, 1), frame(LOW + 0x80, 2)]);
        let words = stack(&[(LOW + 0xc0, LOW + 0xc0, 3)]);
        assert_eq!(walk(&words, LOW + 0xc0, 10).0, [frame(LOW + 0xc0, 3)]);
    }

    #[test]
    fn a_misaligned_frame_is_not_read() {
        let words = stack(&[(LOW + 0x40, LOW + 0x88, 1)]);
        let (frames, reads) = walk(&words, LOW + 0x40, 10);
        assert_eq!(frames, [frame(LOW + 0x40, 1)]);
        assert_eq!(reads, [LOW + 0x40, LOW + 0x40 + LINK_SAVE], "nothing read at the misaligned frame");
        assert_eq!(walk(&words, LOW + 0x48, 10).0, [], "a misaligned stack pointer");
    }

    #[test]
    fn nothing_outside_the_bounds_is_read() {
        // The stack pointer below the stack, a back chain above it, and a
        // frame whose link slot would end past the top.
        assert_eq!(walk(&stack(&[]), LOW - 0x10, 10), (Vec::new(), Vec::new()));
        let words = stack(&[(LOW + 0x40, HIGH + 0x40, 1)]);
        assert_eq!(walk(&words, LOW + 0x40, 10).0, [frame(LOW + 0x40, 1)]);
        let words = stack(&[(LOW + 0x40, HIGH - 0x10, 1)]);
        assert_eq!(walk(&words, LOW + 0x40, 10).0, [frame(LOW + 0x40, 1)]);
        // A frame ending exactly at the top is read; and no overflow near 2^64.
        let words = stack(&[(LOW + 0x40, HIGH - 0x20, 1), (HIGH - 0x20, 0, 2)]);
        assert_eq!(walk(&words, LOW + 0x40, 10).0, [frame(LOW + 0x40, 1), frame(HIGH - 0x20, 2)]);
        let reads = Backchain::new(u64::MAX - 15, (0, u64::MAX), 10, |_| panic!("read")).count();
        assert_eq!(reads, 0);
    }

    #[test]
    fn stops_after_the_limit() {
        let words = stack(&[(LOW + 0x40, LOW + 0x80, 1), (LOW + 0x80, LOW + 0xc0, 2), (LOW + 0xc0, 0, 3)]);
        assert_eq!(walk(&words, LOW + 0x40, 2).0, [frame(LOW + 0x40, 1), frame(LOW + 0x80, 2)]);
        assert_eq!(walk(&words, LOW + 0x40, 0).0, []);
    }
}
