//! The reliable stack walk: every return address a switched-out thread will resume at, or why that cannot be known.
//!
//! A backtrace for a human may guess; this walk may not. The livepatch
//! consistency model switches a thread to a patch only when none of the
//! functions the patch changes is on its stack, so the walk either explains
//! every word it relies on or says the stack is unreliable (and the thread
//! is asked again later). The rules, each one a reason in `Reason`:
//! - every frame is 16-byte aligned, lies inside the thread's stack, and lies
//!   above the frame before it (so the walk ends, and a corrupted chain is
//!   caught rather than followed);
//! - every return address is explained by the caller's classifier (`Kind`):
//!   kernel or module text is an ordinary return; the return point into
//!   `livepatch_handler` stands for the newest livepatch frame not used yet,
//!   whose saved link is the real return; `return_to_handler` stands for the
//!   newest graph return stack entry not used yet; the thread's entry ends
//!   the walk. An exception return (an interrupt frame above), an address in
//!   the ftrace stubs or elsewhere in `livepatch_handler`, or an unknown
//!   address makes the stack unreliable;
//! - the walk ends exactly at the outermost frame (the caller names it: the
//!   frame a new thread's entry runs on, whose back chain is 0), reached
//!   through a return into the thread's entry, with every livepatch frame and
//!   every graph entry used: a frame left over is a call the chain does not
//!   show, which is as unexplained as an unknown address.
//!
//! The frame layout is ELFv2's (see `backchain`): the word at a frame's
//! address is its back chain, the word at `LINK_SAVE` after it is where the
//! frame's own function resumes, saved there by the function it called, on
//! entry. The walk does not read that slot in the first frame above the
//! innermost one: the caller gives the address (`Start`), since
//! `switch_context` keeps it in its switch frame and never writes the slot.
//! Memory is read through a closure, only at 8-byte aligned words inside the
//! bounds, so the tests below hand it crafted stacks and the kernel plain
//! loads.
use crate::backchain::LINK_SAVE;
use alloc::vec::Vec;

/// What a return address is, as the caller's classifier says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Kernel or module text: the function owning the frame above resumes there.
    Text,
    /// The return point into `livepatch_handler` or a direct-call
    /// trampoline (after its call of the replacement): the real return is
    /// the `link` of the newest livepatch frame not used yet.
    LivepatchReturn,
    /// `return_to_handler`: the real return is the newest graph return stack
    /// entry not used yet.
    GraphReturn,
    /// Where a thread's outermost frame resumes: its entry (`thread_start`,
    /// or the boot code an idle thread started from).
    ThreadEntry,
    /// Where an exception handler returns to: the frame above is an interrupt frame.
    ExceptionReturn,
    /// Inside the ftrace stubs or `return_to_handler`'s own call.
    Ftrace,
    /// Inside `livepatch_handler` or a trampoline slot, anywhere but its return point.
    LivepatchWindow,
    /// None of the above.
    Unknown,
}

/// Why a walk is unreliable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A frame not on a 16-byte boundary.
    Misaligned,
    /// A frame (with its back chain and link slot) not inside the thread's stack.
    OutsideStack,
    /// A back chain that does not point higher up the stack (a loop, or going down).
    NotUpwards,
    /// A back chain of 0 before any return into the thread's entry.
    EndsEarly,
    /// A return into the thread's entry whose frame is not the outermost one, or whose back chain is not 0.
    NotOutermost,
    /// A return into an exception handler's caller: the frame above is an interrupt frame.
    ExceptionFrame,
    /// A return address inside the ftrace stubs.
    InFtrace,
    /// A return address inside `livepatch_handler` other than its return point.
    InLivepatchHandler,
    /// A return address that is not text at all.
    UnknownAddress,
    /// A return into `livepatch_handler` with no livepatch frame left.
    LivepatchStackShort,
    /// Livepatch frames that no return into `livepatch_handler` used.
    LivepatchFramesLeft,
    /// A return into `return_to_handler` with no graph entry left.
    GraphStackShort,
    /// Graph return stack entries that no return into `return_to_handler` used.
    GraphEntriesLeft,
    /// The livepatch stack's top is not at the end of a frame inside the
    /// stack, or a frame's marker was overwritten (the kernel's glue checks
    /// it before the walk).
    LivepatchStackCorrupt,
}

/// An unreliable stack: what was wrong, the frame the walk was at (for an
/// address, the frame of the function it returns into), and the address (the
/// return address as found, before any livepatch or graph substitution; 0
/// for a frame's own fault).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unreliable {
    pub reason: Reason,
    pub frame: u64,
    pub address: u64,
}

/// A thread's stack and the side stacks that stand in for return addresses.
pub struct Stack<'a> {
    /// Lowest address of the stack.
    pub low: u64,
    /// One past its highest address.
    pub high: u64,
    /// The frame the thread's entry runs on (its back chain is 0).
    pub outermost: u64,
    /// The `link` of every frame on the thread's livepatch stack, oldest first.
    pub livepatch_links: &'a [u64],
    /// The real return address of every graph return stack entry, oldest first.
    pub graph_returns: &'a [u64],
    /// For the interrupt frame at the given address, where the interrupted
    /// context stands if it is one the arch knows exactly: the frame of the
    /// function that called the interrupted leaf (its r1) and the leaf's
    /// return address (its LR). On ppc64 only the hypervisor cede of the idle
    /// loop is such a context; every other interrupt frame is unreliable.
    pub interrupted: &'a dyn Fn(u64) -> Option<Start>,
}

/// Where the walk starts: the innermost frame, and the address its function
/// returns to (into the function owning the next frame up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Start {
    pub stack_pointer: u64,
    pub return_address: u64,
}

/// Walks `stack` from `start`; `read(address)` loads the 8-byte word at
/// `address` (always 8-byte aligned and inside the stack), `classify` tells
/// what a return address is. Returns every return address on the stack that
/// is text (after livepatch and graph substitution), innermost first; the
/// return into the thread's entry is not among them.
pub fn walk(
    stack: &Stack,
    start: Start,
    read: impl Fn(u64) -> u64,
    classify: impl Fn(u64) -> Kind,
) -> Result<Vec<u64>, Unreliable> {
    let mut livepatch = stack.livepatch_links.len();
    let mut graph = stack.graph_returns.len();
    let mut returns = Vec::new();
    check_frame(stack, start.stack_pointer)?;
    // `below` is the frame checked last, `frame` the one its back chain
    // names, and `address` where the function owning `frame` resumes.
    let mut below = start.stack_pointer;
    let mut address = start.return_address;
    loop {
        let frame = read(below);
        if frame == 0 {
            return Err(Unreliable { reason: Reason::EndsEarly, frame: below, address: 0 });
        }
        if frame <= below {
            return Err(Unreliable { reason: Reason::NotUpwards, frame, address: 0 });
        }
        check_frame(stack, frame)?;
        if below != start.stack_pointer {
            // Saved there by the function `below` belongs to, on its entry.
            address = read(frame + LINK_SAVE);
        }
        let fail = |reason| Err(Unreliable { reason, frame, address });
        // The real return address: livepatch frames and graph entries stand
        // in for the returns their trampolines replaced (a livepatch frame's
        // link may itself be return_to_handler, and a graph entry the return
        // into livepatch_handler); each turn uses one, so this ends.
        let mut resolved = address;
        let kind = loop {
            match classify(resolved) {
                Kind::LivepatchReturn if livepatch == 0 => return fail(Reason::LivepatchStackShort),
                Kind::LivepatchReturn => {
                    livepatch -= 1;
                    resolved = stack.livepatch_links[livepatch];
                }
                Kind::GraphReturn if graph == 0 => return fail(Reason::GraphStackShort),
                Kind::GraphReturn => {
                    graph -= 1;
                    resolved = stack.graph_returns[graph];
                }
                kind => break kind,
            }
        };
        match kind {
            Kind::Text => returns.push(resolved),
            Kind::ThreadEntry if frame != stack.outermost || read(frame) != 0 => return fail(Reason::NotOutermost),
            Kind::ThreadEntry if livepatch != 0 => return fail(Reason::LivepatchFramesLeft),
            Kind::ThreadEntry if graph != 0 => return fail(Reason::GraphEntriesLeft),
            Kind::ThreadEntry => return Ok(returns),
            Kind::ExceptionReturn => match (stack.interrupted)(frame) {
                // A known interrupted leaf: its return address, then on from
                // its caller's frame, which lies above the interrupt frame.
                Some(leaf) if leaf.stack_pointer > frame && classify(leaf.return_address) == Kind::Text => {
                    check_frame(stack, leaf.stack_pointer)?;
                    returns.push(leaf.return_address);
                    below = leaf.stack_pointer;
                    continue;
                }
                _ => return fail(Reason::ExceptionFrame),
            },
            Kind::Ftrace => return fail(Reason::InFtrace),
            Kind::LivepatchWindow => return fail(Reason::InLivepatchHandler),
            Kind::Unknown | Kind::LivepatchReturn | Kind::GraphReturn => return fail(Reason::UnknownAddress),
        }
        below = frame;
    }
}

/// Whether a frame at `frame` is aligned and fits in the stack with its
/// back chain and link slot.
fn check_frame(stack: &Stack, frame: u64) -> Result<(), Unreliable> {
    let fault = |reason| Err(Unreliable { reason, frame, address: 0 });
    if !frame.is_multiple_of(16) {
        return fault(Reason::Misaligned);
    }
    let end = frame.checked_add(LINK_SAVE + 8);
    if frame < stack.low || end.is_none_or(|end| end > stack.high) {
        return fault(Reason::OutsideStack);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    const LOW: u64 = 0x1_0000;
    const WORDS: usize = 128;
    const HIGH: u64 = LOW + 8 * WORDS as u64;
    /// The outermost frame: a minimal (32-byte) frame at the top.
    const OUTERMOST: u64 = HIGH - 32;

    // Addresses the classifier below knows.
    const TEXT: u64 = 0x40_0000;
    const TEXT_END: u64 = 0x50_0000;
    const ENTRY: u64 = 0x40_0100;
    const LIVEPATCH_HANDLER: u64 = 0x40_0200;
    const LIVEPATCH_RETURN: u64 = 0x40_0230;
    const LIVEPATCH_HANDLER_END: u64 = 0x40_0260;
    const STUBS: u64 = 0x40_0300;
    const RETURN_TO_HANDLER: u64 = 0x40_0380;
    const STUBS_END: u64 = 0x40_0400;
    const EXCEPTION_RETURN: u64 = 0x40_0500;

    fn classify(address: u64) -> Kind {
        match address {
            ENTRY => Kind::ThreadEntry,
            EXCEPTION_RETURN => Kind::ExceptionReturn,
            LIVEPATCH_RETURN => Kind::LivepatchReturn,
            RETURN_TO_HANDLER => Kind::GraphReturn,
            LIVEPATCH_HANDLER..LIVEPATCH_HANDLER_END => Kind::LivepatchWindow,
            STUBS..STUBS_END => Kind::Ftrace,
            TEXT..TEXT_END => Kind::Text,
            _ => Kind::Unknown,
        }
    }

    /// A function's code: text the classifier calls ordinary.
    fn function(number: u64) -> u64 {
        TEXT + 0x1000 * number + 0x24
    }

    /// A word no test expects to be read as a return address (unknown to the classifier).
    const STALE: u64 = 0xdead;

    /// A stack of WORDS words; `frames` gives (frame address, back chain,
    /// link slot) to write, everything else is zero.
    struct Crafted {
        words: Vec<u64>,
        /// The interrupt frame whose interrupted context the arch knows, and that context.
        interrupted: Option<(u64, Start)>,
    }

    impl Crafted {
        fn new(frames: &[(u64, u64, u64)]) -> Self {
            let mut words = vec![0; WORDS];
            for &(address, back_chain, link) in frames {
                words[((address - LOW) / 8) as usize] = back_chain;
                words[((address + LINK_SAVE - LOW) / 8) as usize] = link;
            }
            Crafted { words, interrupted: None }
        }

        /// A chain of frames (address, link slot), innermost first, each
        /// frame's back chain naming the next one, the last one's 0. A link
        /// slot holds where the frame's own function resumes, saved by the
        /// function it called.
        fn chain(frames: &[(u64, u64)]) -> Self {
            let frames: Vec<_> = frames
                .iter()
                .enumerate()
                .map(|(index, &(address, link))| (address, frames.get(index + 1).map_or(0, |next| next.0), link))
                .collect();
            Crafted::new(&frames)
        }

        /// Walks the stack; fails the test on a read outside it or
        /// misaligned, and on a read past the 1,000th (a walk that does not end).
        fn walk(&self, start: Start, livepatch_links: &[u64], graph_returns: &[u64]) -> Result<Vec<u64>, Unreliable> {
            let reads = core::cell::Cell::new(0);
            let read = |address: u64| {
                assert!((LOW..HIGH).contains(&address) && address.is_multiple_of(8), "read at {address:#x}");
                reads.set(reads.get() + 1);
                assert!(reads.get() <= 1000, "the walk does not end");
                self.words[((address - LOW) / 8) as usize]
            };
            let interrupted = |frame: u64| self.interrupted.filter(|(at, _)| *at == frame).map(|(_, leaf)| leaf);
            let stack = Stack {
                low: LOW,
                high: HIGH,
                outermost: OUTERMOST,
                livepatch_links,
                graph_returns,
                interrupted: &interrupted,
            };
            walk(&stack, start, read, classify)
        }
    }

    /// The innermost frame at LOW + 0x100, and where its caller resumes.
    fn start(return_address: u64) -> Start {
        Start { stack_pointer: LOW + 0x100, return_address }
    }

    fn unreliable(reason: Reason, frame: u64, address: u64) -> Result<Vec<u64>, Unreliable> {
        Err(Unreliable { reason, frame, address })
    }

    #[test]
    fn a_good_chain_lists_every_return_innermost_first() {
        // Switched out in a function called by function(1) (whose frame is
        // at 0x200; where it resumes comes from the switch frame, its slot
        // is stale), called by function(2), called by function(3), called by the entry.
        let stack = Crafted::chain(&[
            (LOW + 0x100, STALE),
            (LOW + 0x200, STALE),
            (LOW + 0x300, function(2)),
            (LOW + 0x380, function(3)),
            (OUTERMOST, ENTRY),
        ]);
        assert_eq!(stack.walk(start(function(1)), &[], &[]), Ok(vec![function(1), function(2), function(3)]));
    }

    #[test]
    fn a_thread_that_never_ran_is_its_switch_frame_below_the_outermost_frame() {
        let stack = Crafted::chain(&[(LOW + 0x100, STALE), (OUTERMOST, STALE)]);
        assert_eq!(stack.walk(start(ENTRY), &[], &[]), Ok(vec![]));
    }

    #[test]
    fn a_misaligned_frame_is_unreliable() {
        let stack = Crafted::chain(&[(LOW + 0x100, STALE), (LOW + 0x208, STALE), (OUTERMOST, ENTRY)]);
        assert_eq!(stack.walk(start(function(1)), &[], &[]), unreliable(Reason::Misaligned, LOW + 0x208, 0));
        let walk = stack.walk(Start { stack_pointer: LOW + 0x108, return_address: function(1) }, &[], &[]);
        assert_eq!(walk, unreliable(Reason::Misaligned, LOW + 0x108, 0));
    }

    #[test]
    fn a_frame_going_down_is_unreliable() {
        let stack = Crafted::new(&[(LOW + 0x100, LOW + 0x200, STALE), (LOW + 0x200, LOW + 0x40, STALE)]);
        assert_eq!(stack.walk(start(function(1)), &[], &[]), unreliable(Reason::NotUpwards, LOW + 0x40, 0));
    }

    #[test]
    fn a_looping_chain_is_unreliable() {
        // 0x100 -> 0x200 -> 0x100, and a frame that is its own back chain.
        let stack = Crafted::new(&[(LOW + 0x100, LOW + 0x200, STALE), (LOW + 0x200, LOW + 0x100, STALE)]);
        assert_eq!(stack.walk(start(function(1)), &[], &[]), unreliable(Reason::NotUpwards, LOW + 0x100, 0));
        let stack = Crafted::new(&[(LOW + 0x100, LOW + 0x100, STALE)]);
        assert_eq!(stack.walk(start(function(1)), &[], &[]), unreliable(Reason::NotUpwards, LOW + 0x100, 0));
    }

    #[test]
    fn a_frame_outside_the_stack_is_unreliable() {
        let stack = Crafted::new(&[(LOW + 0x100, HIGH + 0x100, STALE)]);
        assert_eq!(stack.walk(start(function(1)), &[], &[]), unreliable(Reason::OutsideStack, HIGH + 0x100, 0));
        // Its link slot would lie past the top.
        let stack = Crafted::new(&[(LOW + 0x100, HIGH - 0x10, STALE)]);
        assert_eq!(stack.walk(start(function(1)), &[], &[]), unreliable(Reason::OutsideStack, HIGH - 0x10, 0));
        let below = stack.walk(Start { stack_pointer: LOW - 0x100, return_address: function(1) }, &[], &[]);
        assert_eq!(below, unreliable(Reason::OutsideStack, LOW - 0x100, 0));
        // And no overflow near 2^64.
        let stack = Stack {
            low: 0,
            high: u64::MAX,
            outermost: 0,
            livepatch_links: &[],
            graph_returns: &[],
            interrupted: &|_| None,
        };
        let walk =
            walk(&stack, Start { stack_pointer: u64::MAX - 15, return_address: 0 }, |_| panic!("read"), classify);
        assert_eq!(walk, unreliable(Reason::OutsideStack, u64::MAX - 15, 0));
    }

    #[test]
    fn an_exception_frame_is_unreliable() {
        // function(1) was interrupted; its frame at 0x200 says it resumes in
        // the exception return: the frame at 0x300 is an interrupt frame.
        let stack = Crafted::chain(&[
            (LOW + 0x100, STALE),
            (LOW + 0x200, STALE),
            (LOW + 0x300, EXCEPTION_RETURN),
            (OUTERMOST, ENTRY),
        ]);
        assert_eq!(
            stack.walk(start(function(1)), &[], &[]),
            unreliable(Reason::ExceptionFrame, LOW + 0x300, EXCEPTION_RETURN)
        );
    }

    #[test]
    fn an_interrupt_frame_of_a_context_the_arch_knows_is_walked_through() {
        // The idle thread ceded in a leaf called by function(5), whose frame
        // is at 0x280: the interrupt frame at 0x200 sits below it.
        let mut stack = Crafted::chain(&[
            (LOW + 0x100, STALE),
            (LOW + 0x180, STALE),
            (LOW + 0x200, EXCEPTION_RETURN),
            (LOW + 0x280, STALE),
            (LOW + 0x300, function(6)),
            (OUTERMOST, ENTRY),
        ]);
        stack.interrupted = Some((LOW + 0x200, Start { stack_pointer: LOW + 0x280, return_address: function(5) }));
        assert_eq!(stack.walk(start(function(1)), &[], &[]), Ok(vec![function(1), function(5), function(6)]));
        // Not for another interrupt frame, nor for a context below its
        // interrupt frame, nor for a leaf that returns into no text.
        stack.interrupted = Some((LOW + 0x180, Start { stack_pointer: LOW + 0x280, return_address: function(5) }));
        let exception = unreliable(Reason::ExceptionFrame, LOW + 0x200, EXCEPTION_RETURN);
        assert_eq!(stack.walk(start(function(1)), &[], &[]), exception);
        stack.interrupted = Some((LOW + 0x200, Start { stack_pointer: LOW + 0x180, return_address: function(5) }));
        assert_eq!(stack.walk(start(function(1)), &[], &[]), exception);
        stack.interrupted = Some((LOW + 0x200, Start { stack_pointer: LOW + 0x280, return_address: STALE }));
        assert_eq!(stack.walk(start(function(1)), &[], &[]), exception);
        // The context's frame is checked like any other.
        stack.interrupted = Some((LOW + 0x200, Start { stack_pointer: LOW + 0x288, return_address: function(5) }));
        assert_eq!(stack.walk(start(function(1)), &[], &[]), unreliable(Reason::Misaligned, LOW + 0x288, 0));
    }

    #[test]
    fn an_unknown_address_is_unreliable() {
        let stack = Crafted::chain(&[(LOW + 0x100, STALE), (LOW + 0x200, STALE), (OUTERMOST, 0x1234)]);
        assert_eq!(stack.walk(start(function(1)), &[], &[]), unreliable(Reason::UnknownAddress, OUTERMOST, 0x1234));
        // The first return address is checked too.
        assert_eq!(stack.walk(start(STALE), &[], &[]), unreliable(Reason::UnknownAddress, LOW + 0x200, STALE));
    }

    #[test]
    fn an_address_in_the_stubs_or_the_livepatch_handler_is_unreliable() {
        for (address, reason) in [
            (STUBS + 8, Reason::InFtrace),
            (LIVEPATCH_HANDLER + 4, Reason::InLivepatchHandler),
            (LIVEPATCH_RETURN + 4, Reason::InLivepatchHandler),
        ] {
            let stack = Crafted::chain(&[
                (LOW + 0x100, STALE),
                (LOW + 0x200, STALE),
                (LOW + 0x300, address),
                (OUTERMOST, ENTRY),
            ]);
            assert_eq!(stack.walk(start(function(1)), &[], &[]), unreliable(reason, LOW + 0x300, address));
            // And as the first return address, which the switch frame holds.
            assert_eq!(stack.walk(start(address), &[], &[]), unreliable(reason, LOW + 0x200, address));
        }
    }

    #[test]
    fn livepatch_frames_stand_in_for_the_returns_into_livepatch_handler() {
        // A replacement called through livepatch_handler by function(2)
        // (frame 0x200), itself a replacement called so by function(3)
        // (frame 0x300), called by function(4).
        let stack = Crafted::chain(&[
            (LOW + 0x100, STALE),
            (LOW + 0x200, STALE),
            (LOW + 0x300, LIVEPATCH_RETURN),
            (LOW + 0x380, function(4)),
            (OUTERMOST, ENTRY),
        ]);
        let returns = stack.walk(start(LIVEPATCH_RETURN), &[function(3), function(2)], &[]);
        assert_eq!(returns, Ok(vec![function(2), function(3), function(4)]));
    }

    #[test]
    fn livepatch_frames_must_match_the_returns_into_livepatch_handler() {
        let stack = Crafted::chain(&[
            (LOW + 0x100, STALE),
            (LOW + 0x200, STALE),
            (LOW + 0x300, LIVEPATCH_RETURN),
            (OUTERMOST, ENTRY),
        ]);
        assert_eq!(
            stack.walk(start(LIVEPATCH_RETURN), &[function(3)], &[]),
            unreliable(Reason::LivepatchStackShort, LOW + 0x300, LIVEPATCH_RETURN)
        );
        let stack = Crafted::chain(&[(LOW + 0x100, STALE), (LOW + 0x200, STALE), (OUTERMOST, ENTRY)]);
        assert_eq!(
            stack.walk(start(function(1)), &[function(9)], &[]),
            unreliable(Reason::LivepatchFramesLeft, OUTERMOST, ENTRY)
        );
    }

    #[test]
    fn graph_entries_stand_in_for_the_returns_into_return_to_handler() {
        let stack = Crafted::chain(&[
            (LOW + 0x100, STALE),
            (LOW + 0x200, STALE),
            (LOW + 0x300, RETURN_TO_HANDLER),
            (LOW + 0x380, function(4)),
            (OUTERMOST, ENTRY),
        ]);
        let returns = stack.walk(start(RETURN_TO_HANDLER), &[], &[function(3), function(2)]);
        assert_eq!(returns, Ok(vec![function(2), function(3), function(4)]));
    }

    #[test]
    fn graph_entries_must_match_the_returns_into_return_to_handler() {
        let stack = Crafted::chain(&[
            (LOW + 0x100, STALE),
            (LOW + 0x200, STALE),
            (LOW + 0x300, RETURN_TO_HANDLER),
            (OUTERMOST, ENTRY),
        ]);
        assert_eq!(
            stack.walk(start(RETURN_TO_HANDLER), &[], &[function(3)]),
            unreliable(Reason::GraphStackShort, LOW + 0x300, RETURN_TO_HANDLER)
        );
        let stack = Crafted::chain(&[(LOW + 0x100, STALE), (LOW + 0x200, STALE), (OUTERMOST, ENTRY)]);
        assert_eq!(
            stack.walk(start(function(1)), &[], &[function(9)]),
            unreliable(Reason::GraphEntriesLeft, OUTERMOST, ENTRY)
        );
    }

    #[test]
    fn a_livepatched_function_under_the_graph_tracer_uses_both_stacks() {
        // The replacement returns into livepatch_handler, whose frame
        // returns into return_to_handler (the graph tracer hooked the
        // patched call), whose entry returns into function(2).
        let stack = Crafted::chain(&[
            (LOW + 0x100, STALE),
            (LOW + 0x200, STALE),
            (LOW + 0x300, function(3)),
            (OUTERMOST, ENTRY),
        ]);
        let returns = stack.walk(start(LIVEPATCH_RETURN), &[RETURN_TO_HANDLER], &[function(2)]);
        assert_eq!(returns, Ok(vec![function(2), function(3)]));
    }

    #[test]
    fn the_chain_must_end_at_the_outermost_frame_through_the_entry() {
        // Back chain 0 while functions still return upwards.
        let stack = Crafted::chain(&[(LOW + 0x100, STALE), (LOW + 0x200, STALE), (LOW + 0x300, function(3))]);
        assert_eq!(stack.walk(start(function(1)), &[], &[]), unreliable(Reason::EndsEarly, LOW + 0x300, 0));
        // A return into the entry from a frame below the outermost one.
        let stack =
            Crafted::chain(&[(LOW + 0x100, STALE), (LOW + 0x200, STALE), (LOW + 0x300, ENTRY), (OUTERMOST, ENTRY)]);
        assert_eq!(stack.walk(start(function(1)), &[], &[]), unreliable(Reason::NotOutermost, LOW + 0x300, ENTRY));
        // A chain that ends (back chain 0) through the entry's return, but
        // below the outermost frame: frames above it would be hidden.
        let stack = Crafted::chain(&[(LOW + 0x100, STALE), (LOW + 0x200, STALE), (LOW + 0x300, ENTRY)]);
        assert_eq!(stack.walk(start(function(1)), &[], &[]), unreliable(Reason::NotOutermost, LOW + 0x300, ENTRY));
        // The outermost frame, but its back chain is not 0.
        let stack = Crafted::new(&[(LOW + 0x100, OUTERMOST, STALE), (OUTERMOST, LOW + 0x40, STALE)]);
        assert_eq!(stack.walk(start(ENTRY), &[], &[]), unreliable(Reason::NotOutermost, OUTERMOST, ENTRY));
    }
}
