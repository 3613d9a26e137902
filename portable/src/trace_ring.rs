//! A trace ring with one writer that never waits and readers on any CPU that get a consistent copy, and the merge of several CPUs' copies in time order.
//!
//! The writer (one at a time: its owner makes sure of it; the kernel's is a
//! trace handler on the ring's own CPU, never preempted there) stores
//! the event's words into slot `written % SLOTS` and then publishes
//! `written + 1`. It takes no lock and never waits for a reader, so a reader
//! may copy a slot while the writer overwrites it. The reader validates
//! afterwards, as a sequence lock's reader does: it reads `written` before
//! the copy and again after it, and drops every entry whose slot the writer
//! may have started to overwrite meanwhile. Those entries count as lost.
//!
//! Slots are arrays of `AtomicU64` words, stored and loaded `Relaxed`: a
//! reader's load may race with the writer's store of the same word, and a
//! racy non-atomic read is undefined behaviour in Rust's memory model even
//! when its value is then thrown away; a relaxed atomic load is defined (it
//! returns one of the values stored) and compiles to a plain load. Events
//! convert to and from words (`Event`).
//!
//! Ordering (the names are those of `push` and `copy`):
//! - the writer's `fence(Release)` between its store of `written == j`
//!   (ending entry j - 1) and its stores of entry j's words pairs with the
//!   reader's `fence(Acquire)` after its copy: if the copy read any word of
//!   entry j, the reader's second load of `written` sees at least j, so
//!   entry j - SLOTS, the slot's previous content, is dropped;
//! - the writer's `Release` store of `written = j + 1` after entry j's words
//!   pairs with the reader's first `Acquire` load: every entry below that
//!   count is fully visible to the copy.
//!
//! The slot after the newest entry is the one the writer may be overwriting
//! at any instant, so a reader gets at most `SLOTS - 1` entries: the ring's
//! capacity. `clear` never writes the writer's fields: it records the count
//! readers start from (`cleared_at`).
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::marker::PhantomData;
use core::sync::atomic::{AtomicU64, Ordering, fence};

/// An event stored as `WORDS` 64-bit words.
pub trait Event<const WORDS: usize>: Sized {
    fn to_words(&self) -> [u64; WORDS];
    fn from_words(words: [u64; WORDS]) -> Self;
    /// When it happened (timebase ticks): the order of the merge.
    fn timebase(&self) -> u64;
}

/// What a reader copied from one ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot<T> {
    /// The entries, oldest first.
    pub events: Vec<T>,
    /// Entries written since the last clear, up to the newest copied.
    pub written: u64,
    /// Of those, how many are not in `events`: overwritten before the copy,
    /// or during it (`written - events.len()`, by definition).
    pub lost: u64,
    /// Of the lost, those the copy read but dropped because the writer
    /// overwrote their slot while it copied.
    pub dropped_while_copying: u64,
}

/// `SLOTS` (a power of two, at least 2) slots of `WORDS` words; keeps the
/// newest `SLOTS - 1` events (`CAPACITY`).
pub struct TraceRing<T, const WORDS: usize, const SLOTS: usize> {
    slots: [[AtomicU64; WORDS]; SLOTS],
    /// Entries ever written; only the writer stores it.
    written: AtomicU64,
    /// `written` when the ring was last cleared; only `clear` stores it.
    cleared_at: AtomicU64,
    events: PhantomData<fn(T) -> T>,
}

impl<T: Event<WORDS>, const WORDS: usize, const SLOTS: usize> Default for TraceRing<T, WORDS, SLOTS> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Event<WORDS>, const WORDS: usize, const SLOTS: usize> TraceRing<T, WORDS, SLOTS> {
    /// Events a reader can get at most.
    pub const CAPACITY: usize = SLOTS - 1;
    const VALID: () = assert!(SLOTS.is_power_of_two() && SLOTS >= 2, "SLOTS is a power of two, at least 2");

    /// An empty ring.
    pub const fn new() -> Self {
        let () = Self::VALID;
        TraceRing {
            slots: [const { [const { AtomicU64::new(0) }; WORDS] }; SLOTS],
            written: AtomicU64::new(0),
            cleared_at: AtomicU64::new(0),
            events: PhantomData,
        }
    }

    /// Appends `event`, overwriting the oldest. Only one writer at a time
    /// (the ring's CPU, in a handler that is not preempted): it neither locks
    /// nor waits.
    #[inline(always)]
    pub fn push(&self, event: &T) {
        // Our own last store: a relaxed load reads it.
        let index = self.written.load(Ordering::Relaxed);
        let slot = &self.slots[index as usize & (SLOTS - 1)];
        // A reader that sees any word below also sees `written == index`.
        fence(Ordering::Release);
        for (word, value) in slot.iter().zip(event.to_words()) {
            word.store(value, Ordering::Relaxed);
        }
        // Publishes the words above to readers that load the new count.
        self.written.store(index + 1, Ordering::Release);
    }

    /// Forgets every entry written so far (readers start after them).
    pub fn clear(&self) {
        // Largest wins: two clears racing never move the start back.
        self.cleared_at.fetch_max(self.written.load(Ordering::Acquire), Ordering::AcqRel);
    }

    /// A consistent copy of the entries since the last clear, oldest first.
    pub fn read(&self) -> Snapshot<T> {
        self.copy(|_| {})
    }

    /// `read`, calling `hook` between its first two loads and before it
    /// loads each word (the tests write there, as a writer or a clear on
    /// another CPU could).
    /// (the tests write there, as a writer on another CPU could).
    fn copy(&self, mut hook: impl FnMut(Moment)) -> Snapshot<T> {
        // `cleared_at` first: a clear between the two loads then only makes
        // the copy start earlier than it might, never after `newest`.
        let cleared_at = self.cleared_at.load(Ordering::Acquire);
        hook(Moment::BetweenCounts);
        let newest = self.written.load(Ordering::Acquire);
        // Not the slot of `newest - SLOTS`: the writer may be overwriting it now.
        let first = (newest + 1).saturating_sub(SLOTS as u64).max(cleared_at);
        let mut copied = Vec::with_capacity(newest.saturating_sub(first) as usize);
        for index in first..newest {
            let slot = &self.slots[index as usize & (SLOTS - 1)];
            let words: [u64; WORDS] = core::array::from_fn(|word| {
                hook(Moment::BeforeWord(index, word));
                slot[word].load(Ordering::Relaxed)
            });
            copied.push(words);
        }
        // The copy's loads before the second count (see the module's comment).
        fence(Ordering::Acquire);
        let after = self.written.load(Ordering::Relaxed);
        // The writer may have begun entry `after`, overwriting entry `after - SLOTS`.
        let valid = (after + 1).saturating_sub(SLOTS as u64).max(first);
        let dropped = valid.min(newest) - first;
        let events: Vec<T> = copied.into_iter().skip(dropped as usize).map(T::from_words).collect();
        let written = newest.saturating_sub(cleared_at);
        Snapshot { lost: written - events.len() as u64, events, written, dropped_while_copying: dropped }
    }
}

/// Where a copy is when it calls the tests' hook.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Moment {
    /// Between the loads of `cleared_at` and `written`.
    BetweenCounts,
    /// Before it loads word `.1` of entry `.0`.
    BeforeWord(u64, usize),
}

/// Several CPUs' events merged oldest first by timebase, each with its CPU
/// (the index of its list); stable: each CPU's events keep their order, and
/// at equal times the lower CPU comes first.
pub fn merge_by_time<T: Event<WORDS>, const WORDS: usize>(per_cpu: Vec<Vec<T>>) -> Vec<(usize, T)> {
    let total = per_cpu.iter().map(Vec::len).sum();
    let mut merged = Vec::with_capacity(total);
    let mut lists: Vec<_> = per_cpu.into_iter().map(|list| list.into_iter().peekable()).collect();
    loop {
        // The CPU whose next event is the oldest (the first such CPU).
        let mut oldest: Option<(usize, u64)> = None;
        for (cpu, list) in lists.iter_mut().enumerate() {
            if let Some(event) = list.peek()
                && oldest.is_none_or(|(_, time)| event.timebase() < time)
            {
                oldest = Some((cpu, event.timebase()));
            }
        }
        let Some((cpu, _)) = oldest else { break };
        merged.extend(lists[cpu].next().map(|event| (cpu, event)));
    }
    merged
}

/// `# lost per CPU: 0:0 1:12` from each CPU's lost count, or nothing when none was lost.
pub fn lost_line(lost: &[u64]) -> Option<String> {
    if lost.iter().all(|&count| count == 0) {
        return None;
    }
    let counts: Vec<String> = lost.iter().enumerate().map(|(cpu, count)| format!("{cpu}:{count}")).collect();
    Some(format!("# lost per CPU: {}", counts.join(" ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    /// Three words that a correct copy always finds equal.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct Same([u64; 3]);

    impl Event<3> for Same {
        fn to_words(&self) -> [u64; 3] {
            self.0
        }
        fn from_words(words: [u64; 3]) -> Self {
            Same(words)
        }
        fn timebase(&self) -> u64 {
            self.0[0]
        }
    }

    fn same(value: u64) -> Same {
        Same([value; 3])
    }

    fn values(snapshot: &Snapshot<Same>) -> Vec<u64> {
        snapshot.events.iter().map(|event| event.0[0]).collect()
    }

    #[test]
    fn keeps_the_newest_capacity_entries_and_counts_the_lost() {
        let ring: TraceRing<Same, 3, 4> = TraceRing::new();
        assert_eq!(TraceRing::<Same, 3, 4>::CAPACITY, 3);
        (1..=2).for_each(|value| ring.push(&same(value)));
        let snapshot = ring.read();
        assert_eq!((values(&snapshot), snapshot.written, snapshot.lost), (vec![1, 2], 2, 0));
        (3..=10).for_each(|value| ring.push(&same(value)));
        let snapshot = ring.read();
        assert_eq!((values(&snapshot), snapshot.written, snapshot.lost), (vec![8, 9, 10], 10, 7));
        assert_eq!(snapshot.dropped_while_copying, 0);
    }

    #[test]
    fn clear_starts_readers_after_the_entries_so_far() {
        let ring: TraceRing<Same, 3, 8> = TraceRing::new();
        (1..=20).for_each(|value| ring.push(&same(value)));
        ring.clear();
        let snapshot = ring.read();
        assert_eq!((snapshot.events.len(), snapshot.written, snapshot.lost), (0, 0, 0));
        (21..=23).for_each(|value| ring.push(&same(value)));
        let snapshot = ring.read();
        assert_eq!((values(&snapshot), snapshot.written, snapshot.lost), (vec![21, 22, 23], 3, 0));
        (24..=40).for_each(|value| ring.push(&same(value)));
        let snapshot = ring.read();
        assert_eq!(values(&snapshot), (34..=40).collect::<Vec<_>>());
        assert_eq!((snapshot.written, snapshot.lost), (20, 13));
    }

    /// The writer overwrites the slot the reader is halfway through: that
    /// entry (torn: one word old, two new) and every other entry whose slot
    /// the writer reached are dropped and counted as lost.
    #[test]
    fn entries_overwritten_during_the_copy_are_dropped() {
        let ring: TraceRing<Same, 3, 8> = TraceRing::new();
        (0..7).for_each(|value| ring.push(&same(value)));
        // Entries 0..7 are in slots 0..7; writing 7, 8, 9 overwrites entries 0 and 1
        // (slot 7 was free) while the reader is in the middle of entry 1.
        let mut pushed = false;
        let snapshot = ring.copy(|moment| {
            if moment == Moment::BeforeWord(1, 1) && !pushed {
                pushed = true;
                (7..10).for_each(|value| ring.push(&same(value)));
            }
        });
        assert!(pushed);
        assert!(snapshot.events.iter().all(|event| event.0.iter().all(|&word| word == event.0[0])), "{snapshot:?}");
        // Entry 2's slot is the one the writer would write next: dropped as well.
        assert_eq!(values(&snapshot), [3, 4, 5, 6]);
        assert_eq!((snapshot.written, snapshot.lost, snapshot.dropped_while_copying), (7, 3, 3));
        // The next read has the new entries.
        assert_eq!(values(&ring.read()), (3..10).collect::<Vec<_>>());
    }

    /// A writer thread goes around the ring many times while readers copy:
    /// no event read is torn, each copy is consecutive, and what was read
    /// plus what was lost is what was written.
    #[test]
    fn a_concurrent_writer_never_shows_a_torn_event() {
        const TOTAL: u64 = 400_000;
        let ring: Arc<TraceRing<Same, 3, 16>> = Arc::new(TraceRing::new());
        let done = Arc::new(AtomicBool::new(false));
        let writer = {
            let (ring, done) = (ring.clone(), done.clone());
            std::thread::spawn(move || {
                (1..=TOTAL).for_each(|value| ring.push(&same(value)));
                done.store(true, Ordering::Release);
            })
        };
        let (mut reads, mut dropped) = (0, 0);
        while !done.load(Ordering::Acquire) || reads == 0 {
            let snapshot = ring.read();
            let values = values(&snapshot);
            assert!(snapshot.events.iter().all(|event| event.0.iter().all(|&word| word == event.0[0])), "{snapshot:?}");
            assert!(values.windows(2).all(|pair| pair[1] == pair[0] + 1), "{values:?}");
            // At most the ring's capacity, and what was dropped mid-copy is part of what was lost.
            assert!(values.len() <= 15 && snapshot.dropped_while_copying <= snapshot.lost, "{snapshot:?}");
            if let Some(&newest) = values.last() {
                assert_eq!(newest, snapshot.written, "the newest entry copied is the last counted");
            }
            reads += 1;
            dropped += snapshot.dropped_while_copying;
        }
        writer.join().unwrap();
        let last = ring.read();
        assert_eq!(values(&last), (TOTAL - 14..=TOTAL).collect::<Vec<_>>());
        assert_eq!((last.written, last.lost), (TOTAL, TOTAL - 15));
        // Not asserted (a host may run the two threads one after the other), but printed.
        println!("{reads} reads, {dropped} entries dropped while copying");
    }

    /// A clear (and more entries) between a reader's two first loads, or
    /// during its copy, never makes the copy start after its end: no
    /// underflow, nothing invented.
    #[test]
    fn a_clear_during_a_copy_leaves_a_consistent_copy() {
        for at in [Moment::BetweenCounts, Moment::BeforeWord(0, 0)] {
            let ring: TraceRing<Same, 3, 16> = TraceRing::new();
            (1..=10).for_each(|value| ring.push(&same(value)));
            let mut cleared = false;
            let snapshot = ring.copy(|moment| {
                if moment == at && !cleared {
                    cleared = true;
                    (11..=15).for_each(|value| ring.push(&same(value)));
                    ring.clear();
                }
            });
            // The copy began before the clear: entries 1 to 10 or to 15, whole and in order.
            let values = values(&snapshot);
            assert_eq!(values.first(), Some(&1));
            assert!(values.windows(2).all(|pair| pair[1] == pair[0] + 1), "{values:?}");
            assert!(snapshot.dropped_while_copying <= snapshot.lost, "{snapshot:?}");
            // A copy after the clear starts after it.
            assert!(ring.read().events.is_empty());
        }
    }

    #[test]
    fn merge_orders_by_time_and_keeps_each_cpu_in_order() {
        let merged =
            merge_by_time(vec![vec![same(1), same(5), same(5), same(3)], vec![], vec![same(2), same(5), same(9)]]);
        let cpus_and_times: Vec<(usize, u64)> = merged.iter().map(|(cpu, event)| (*cpu, event.0[0])).collect();
        // CPU 0's 3 after its 5s: its own order wins over time; at 5 the lower CPU comes first.
        assert_eq!(cpus_and_times, [(0, 1), (2, 2), (0, 5), (0, 5), (0, 3), (2, 5), (2, 9)]);
    }

    #[test]
    fn lost_line_names_every_cpu_once_anything_was_lost() {
        assert_eq!(lost_line(&[0, 0]), None);
        assert_eq!(lost_line(&[0, 12]).as_deref(), Some("# lost per CPU: 0:0 1:12"));
    }
}
