//! `Published`: a value that readers load without a lock and writers replace, freeing the old one after a grace period.
//!
//! The kernel's hot paths (the ftrace ops list walk, each ops's site set, the
//! livepatch redirect table) read tables that registration replaces while
//! traced calls run. They all follow this one pattern:
//!
//! - **Readers** load a pointer to an immutable value and use it. The pointer
//!   is never null: before the first value (and after [`Published::clear`])
//!   it points at an empty `'static` value the owner supplies, which is never
//!   freed. A read is one load ([`Published::read`], inlined).
//! - **Writers**, serialised by a lock of their own, build a complete new value
//!   in a `Box` and publish it with one atomic swap whose release half makes
//!   every write into the value visible before the pointer to it.
//! - The old value is **retired**: freed only after the grace period of the
//!   [`Readers`], once no reader can still hold it; the empty value is never
//!   freed. [`Published::replace`] (and [`Published::clear`]) retire it at
//!   once; [`Published::replace_retaining`] hands it back as a [`Retired`],
//!   retired when dropped, which the writer may instead publish again if what
//!   it was doing failed ([`Retired::restore`]).
//!
//! # What SMP needs
//!
//! The two halves of the argument are the [`Readers`] implementation's:
//! - ordering: a reader on another CPU must see the value's contents written
//!   before the pointer. The writer's swap is `AcqRel`; its release half pairs
//!   with readers loading with `Acquire` ([`Readers::LOAD_ORDERING`]). Only
//!   where every reader and writer share one CPU is `Relaxed` enough (a CPU
//!   sees its own stores in program order, and the release still keeps the
//!   compiler from moving the value's initialisation after the swap).
//! - reclamation: [`Readers::wait_for_readers`] must wait for the read-side
//!   sections in progress on **every** CPU, not only the writer's: on one CPU
//!   with readers that are never preempted there is nothing to wait for, on
//!   several it must wait until each other CPU has passed a point outside any
//!   read-side section (what Linux's `synchronize_rcu` waits for).
//!
//! Writers need their lock for meaning, not for memory safety: the swap hands
//! each old value to exactly one writer. [`Retired::restore`] assumes no
//! other writer replaced the value meanwhile.
use alloc::boxed::Box;
use core::marker::PhantomData;
use core::sync::atomic::{AtomicPtr, Ordering};

/// How the readers of a [`Published`] value run: how they load the pointer,
/// and how a writer waits until none of them still holds a value it retired.
///
/// A read-side section is whatever the implementation defines (on the
/// kernel: code the scheduler does not preempt); [`Published::read`]'s
/// callers promise to be inside one while they use the value.
///
/// # Safety
///
/// `wait_for_readers` returns only once every read-side section that was in
/// progress on any CPU when it was called has ended, except the caller's own
/// (a writer does not use a value after retiring it). `LOAD_ORDERING` is
/// `Acquire` unless every reader and every writer runs on one CPU, where
/// `Relaxed` is enough (see the module documentation).
pub unsafe trait Readers {
    /// The ordering [`Published::read`] loads the pointer with.
    const LOAD_ORDERING: Ordering;
    /// The grace period: waits until no reader can still hold a value
    /// unpublished before the call.
    fn wait_for_readers(&self);
}

/// A value readers load without a lock; see the module documentation.
pub struct Published<T: 'static, R> {
    /// A `Box::into_raw` of a value, or `empty`; never null.
    current: AtomicPtr<T>,
    /// The value published before the first and after a `clear`; never freed.
    empty: &'static T,
    readers: R,
    /// Owns the boxed values: they are dropped by whichever thread retires them.
    owned: PhantomData<Box<T>>,
}

impl<T: Send + Sync + 'static, R: Readers> Published<T, R> {
    /// Publishes `empty` (a `static`), whose readers follow `readers`' rules.
    pub const fn new(empty: &'static T, readers: R) -> Self {
        Published { current: AtomicPtr::new(empty as *const T as *mut T), empty, readers, owned: PhantomData }
    }

    /// The value published now.
    ///
    /// # Safety
    ///
    /// The caller is inside a read-side section as `R` defines it from this
    /// call until its last use of the reference, and does not use the
    /// reference after retiring the value itself (a writer reading what it
    /// then replaces: after its `replace`, `clear`, or the drop of the
    /// [`Retired`]).
    #[inline(always)]
    pub unsafe fn read(&self) -> &T {
        // Safety: the one safety argument of this pattern. `current` is never
        // null: `empty` (a 'static) or a `Box::into_raw` published by
        // `swap` with a release that this load pairs with
        // (`Readers::LOAD_ORDERING`; on one CPU, program order). A boxed
        // value is freed only by `retire`, after it was swapped out (so no
        // reader that starts later can load it) and after
        // `wait_for_readers` (so every reader that loaded it before, inside a
        // read-side section as the caller promises, has finished with it);
        // `Published::drop` frees the last one with `&mut self`, when no
        // reference from `read` can be alive. `empty` is never freed.
        unsafe { &*self.current.load(R::LOAD_ORDERING) }
    }

    /// Publishes `value`, then frees the value it replaces once the grace period is over.
    #[inline]
    pub fn replace(&self, value: T) {
        // Safety: swapped out here, so owned here alone.
        unsafe { self.retire(self.swap(Box::into_raw(Box::new(value)))) }
    }

    /// Publishes the empty value again, then frees the value it replaces as `replace` does.
    #[inline]
    pub fn clear(&self) {
        // Safety: as in `replace`.
        unsafe { self.retire(self.swap(self.empty as *const T as *mut T)) }
    }

    /// Publishes `value` and hands back the value it replaces, freed (after
    /// the grace period) when the [`Retired`] is dropped, or published again
    /// by [`Retired::restore`].
    #[inline]
    pub fn replace_retaining(&self, value: T) -> Retired<'_, T, R> {
        Retired { published: self, old: self.swap(Box::into_raw(Box::new(value))) }
    }

    /// Publishes `new` (`empty` or a `Box::into_raw`); returns what it replaces.
    #[inline(always)]
    fn swap(&self, new: *mut T) -> *mut T {
        self.current.swap(new, Ordering::AcqRel)
    }
}

impl<T: 'static, R: Readers> Published<T, R> {
    /// Frees `old` once the grace period is over, unless it is `empty`.
    ///
    /// # Safety
    ///
    /// `old` was swapped out of `current`, by the caller alone, which does
    /// not use it afterwards.
    #[inline(always)]
    unsafe fn retire(&self, old: *mut T) {
        if !core::ptr::eq(old, self.empty) {
            self.readers.wait_for_readers();
            // Safety: a `Box::into_raw` (not `empty`) that no reader can load
            // any more and no other owner frees, and every reader that loaded
            // it before has finished (`wait_for_readers`): see `read`.
            drop(unsafe { Box::from_raw(old) });
        }
    }
}

impl<T: 'static, R> Drop for Published<T, R> {
    fn drop(&mut self) {
        let current = *self.current.get_mut();
        if !core::ptr::eq(current, self.empty) {
            // Safety: a `Box::into_raw` (not `empty`), still published, so no
            // `Retired` owns it; `&mut self` means no reference from `read`
            // is alive, so no grace period is needed.
            drop(unsafe { Box::from_raw(current) });
        }
    }
}

/// A value no longer published: freed after the grace period when dropped.
pub struct Retired<'a, T: 'static, R: Readers> {
    published: &'a Published<T, R>,
    /// Swapped out of `published.current`: `empty` or a `Box::into_raw`.
    old: *mut T,
}

impl<T: Send + Sync + 'static, R: Readers> Retired<'_, T, R> {
    /// Publishes the retired value again; the value it displaces is retired
    /// in its place (and freed after the grace period).
    #[inline]
    pub fn restore(mut self) {
        self.old = self.published.swap(self.old);
    }
}

impl<T: 'static, R: Readers> Drop for Retired<'_, T, R> {
    fn drop(&mut self) {
        // Safety: swapped out into this `Retired` alone, and dropped once.
        unsafe { self.published.retire(self.old) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;
    use std::sync::atomic::{AtomicBool, AtomicU64, fence};
    use std::sync::{Arc, Mutex};

    /// What happened, in order: a grace period (with the ids alive then and
    /// the id published then) or a drop.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Event {
        Waited { alive: Vec<u64>, published: u64 },
        Dropped(u64),
    }

    fn waited(alive: &[u64], published: u64) -> Event {
        Event::Waited { alive: alive.to_vec(), published }
    }

    #[derive(Debug, Default)]
    struct Log {
        events: Mutex<Vec<Event>>,
        alive: Mutex<Vec<u64>>,
        /// The address of the `Published::current` the grace periods belong to.
        current: std::sync::OnceLock<usize>,
    }

    impl Log {
        fn take(&self) -> Vec<Event> {
            core::mem::take(&mut *self.events.lock().unwrap())
        }
    }

    /// A value that logs its drop; `log` is None only in `EMPTY`.
    #[derive(Debug)]
    struct Tracked {
        id: u64,
        content: u64,
        log: Option<Arc<Log>>,
    }

    impl Tracked {
        fn new(id: u64, content: u64, log: &Arc<Log>) -> Self {
            log.alive.lock().unwrap().push(id);
            Tracked { id, content, log: Some(log.clone()) }
        }
    }

    impl Drop for Tracked {
        fn drop(&mut self) {
            let log = self.log.as_ref().expect("the empty static is never dropped");
            let mut alive = log.alive.lock().unwrap();
            let position = alive.iter().position(|&id| id == self.id).expect("dropped once");
            alive.remove(position);
            log.events.lock().unwrap().push(Event::Dropped(self.id));
        }
    }

    static EMPTY: Tracked = Tracked { id: 0, content: 0, log: None };

    /// A grace period that only logs what was alive and published when it ran.
    struct Recorded(Arc<Log>);

    // Safety: the tests using it read only from the writing thread, outside
    // any `replace`, so there is never a reader to wait for.
    unsafe impl Readers for Recorded {
        const LOAD_ORDERING: Ordering = Ordering::Acquire;
        fn wait_for_readers(&self) {
            let alive = self.0.alive.lock().unwrap().clone();
            let current = *self.0.current.get().expect("set by `published`") as *const AtomicPtr<Tracked>;
            // Safety: the boxed `Published` outlives its grace periods, and
            // the value it holds now is not freed during this call.
            let published = unsafe { (*(*current).load(Ordering::Acquire)).id };
            self.0.events.lock().unwrap().push(Event::Waited { alive, published });
        }
    }

    fn published() -> (Box<Published<Tracked, Recorded>>, Arc<Log>) {
        let log = Arc::new(Log::default());
        let published = Box::new(Published::new(&EMPTY, Recorded(log.clone())));
        log.current.set(&published.current as *const AtomicPtr<Tracked> as usize).unwrap();
        (published, log)
    }

    fn read_id(published: &Published<Tracked, Recorded>) -> u64 {
        // Safety: `Recorded` readers: this thread, outside any replace.
        unsafe { published.read() }.id
    }

    #[test]
    fn a_new_published_value_is_the_empty_static() {
        let (published, log) = published();
        // Safety: as in `read_id`.
        assert!(core::ptr::eq(unsafe { published.read() }, &EMPTY));
        drop(published);
        assert_eq!(log.take(), [], "dropping it neither waits nor drops the empty static");
    }

    #[test]
    fn replace_frees_the_old_value_after_the_grace_period() {
        let (published, log) = published();
        published.replace(Tracked::new(1, 10, &log));
        assert_eq!(read_id(&published), 1);
        assert_eq!(log.take(), [], "retiring the empty static neither waits nor drops it");
        published.replace(Tracked::new(2, 20, &log));
        assert_eq!(read_id(&published), 2);
        assert_eq!(log.take(), [waited(&[1, 2], 2), Event::Dropped(1)]);
        drop(published);
        assert_eq!(log.take(), [Event::Dropped(2)], "the last value, once, with no grace period");
    }

    #[test]
    fn replace_retaining_publishes_first_and_frees_the_old_value_when_retired_is_dropped() {
        let (published, log) = published();
        drop(published.replace_retaining(Tracked::new(1, 10, &log)));
        assert_eq!(log.take(), [], "retiring the empty static neither waits nor drops it");
        let retired = published.replace_retaining(Tracked::new(2, 20, &log));
        assert_eq!(read_id(&published), 2, "published as soon as it returns");
        assert_eq!(log.take(), [], "the old value lives while its Retired does");
        drop(retired);
        assert_eq!(log.take(), [waited(&[1, 2], 2), Event::Dropped(1)]);
    }

    #[test]
    fn a_reader_keeps_its_value_until_the_retired_value_is_dropped() {
        let (published, log) = published();
        published.replace(Tracked::new(1, 10, &log));
        // Safety: as in `read_id`; the reference is not used after `retired` is dropped.
        let before = unsafe { published.read() };
        let retired = published.replace_retaining(Tracked::new(2, 20, &log));
        assert_eq!((before.id, before.content), (1, 10), "the reader still sees the whole old value");
        drop(retired);
        assert_eq!(log.take(), [waited(&[1, 2], 2), Event::Dropped(1)]);
    }

    #[test]
    fn replacing_with_equal_content_still_retires_the_old_value() {
        let (published, log) = published();
        published.replace(Tracked::new(1, 10, &log));
        // Safety: as in `read_id`.
        let old = unsafe { published.read() } as *const Tracked;
        published.replace(Tracked::new(2, 10, &log));
        // Safety: as in `read_id`.
        let new = unsafe { published.read() };
        assert!(!core::ptr::eq(old, new) && new.content == 10 && new.id == 2);
        assert_eq!(log.take(), [waited(&[1, 2], 2), Event::Dropped(1)]);
    }

    #[test]
    fn clear_publishes_the_empty_static_and_frees_the_value_after_the_grace_period() {
        let (published, log) = published();
        published.replace(Tracked::new(1, 10, &log));
        published.clear();
        // Safety: as in `read_id`.
        assert!(core::ptr::eq(unsafe { published.read() }, &EMPTY));
        assert_eq!(log.take(), [waited(&[1], 0), Event::Dropped(1)]);
        published.clear();
        drop(published);
        assert_eq!(log.take(), [], "clearing twice and dropping the empty static free nothing");
    }

    #[test]
    fn restore_republishes_the_old_value_and_retires_the_new_one() {
        let (published, log) = published();
        published.replace(Tracked::new(1, 10, &log));
        let retired = published.replace_retaining(Tracked::new(2, 20, &log));
        retired.restore();
        assert_eq!(read_id(&published), 1);
        assert_eq!(log.take(), [waited(&[1, 2], 1), Event::Dropped(2)]);
        // Restoring the empty static: the first value is retired, the empty one published.
        let (published, log) = self::published();
        published.replace_retaining(Tracked::new(3, 30, &log)).restore();
        // Safety: as in `read_id`.
        assert!(core::ptr::eq(unsafe { published.read() }, &EMPTY));
        assert_eq!(log.take(), [waited(&[3], 0), Event::Dropped(3)]);
    }

    // ---- Readers and a writer on host threads ----------------------------------------

    const WORDS: usize = 16;
    const POISON: u64 = u64::MAX;

    /// Every word holds the generation; a dropped value is poisoned first.
    /// `dropped` (the generations dropped so far) is None only in `NO_GENERATION`.
    struct Generation {
        words: [AtomicU64; WORDS],
        dropped: Option<Arc<Mutex<Vec<u64>>>>,
    }

    impl Generation {
        fn new(generation: u64, dropped: &Arc<Mutex<Vec<u64>>>) -> Self {
            Generation { words: core::array::from_fn(|_| AtomicU64::new(generation)), dropped: Some(dropped.clone()) }
        }

        /// The generation, if every word agrees and none is poisoned.
        fn whole(&self) -> Option<u64> {
            let first = self.words[0].load(Ordering::Relaxed);
            let agree = self.words.iter().all(|word| word.load(Ordering::Relaxed) == first);
            (agree && first != POISON).then_some(first)
        }
    }

    impl Drop for Generation {
        fn drop(&mut self) {
            let dropped = self.dropped.as_ref().expect("the empty static is never dropped");
            dropped.lock().unwrap().push(self.words[0].load(Ordering::Relaxed));
            for word in &self.words {
                word.store(POISON, Ordering::Relaxed);
            }
        }
    }

    static NO_GENERATION: Generation = Generation { words: [const { AtomicU64::new(0) }; WORDS], dropped: None };

    /// Quiescent-state grace period: each reader thread's counter is odd
    /// while it is inside a read-side section; a grace period waits until
    /// every counter that was odd has moved on.
    struct Sections(Arc<Vec<AtomicU64>>);

    impl Sections {
        /// Enters `reader`'s section, left when the guard drops (also when
        /// the reader panics, so a failing reader never stalls the writer).
        fn enter(&self, reader: usize) -> Section<'_> {
            self.0[reader].fetch_add(1, Ordering::Relaxed);
            // Orders the counter's store before the reader's load of the pointer.
            fence(Ordering::SeqCst);
            Section(&self.0[reader])
        }
    }

    struct Section<'a>(&'a AtomicU64);

    impl Drop for Section<'_> {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::Release);
        }
    }

    // Safety: a reader's section runs from `enter` to the guard's drop; both fences
    // (here and in `enter`) order the pointer swap against the counters, so
    // a counter seen even belongs to a reader outside any section or one that
    // will load the new pointer, and an odd one is waited for.
    unsafe impl Readers for Sections {
        const LOAD_ORDERING: Ordering = Ordering::Acquire;
        fn wait_for_readers(&self) {
            fence(Ordering::SeqCst);
            let snapshot: Vec<u64> = self.0.iter().map(|counter| counter.load(Ordering::Acquire)).collect();
            for (counter, seen) in self.0.iter().zip(snapshot) {
                while seen % 2 == 1 && counter.load(Ordering::Acquire) == seen {
                    std::thread::yield_now();
                }
            }
        }
    }

    #[test]
    fn readers_on_other_threads_see_whole_values_and_none_is_freed_under_them() {
        const READERS: usize = 2;
        /// Reads (all readers together) the writer keeps replacing for.
        const READS: u64 = 20_000;
        let dropped = Arc::new(Mutex::new(Vec::new()));
        let counters = Arc::new((0..READERS).map(|_| AtomicU64::new(0)).collect::<Vec<_>>());
        let published = Arc::new(Published::new(&NO_GENERATION, Sections(counters.clone())));
        let (done, reads) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        // Generations each reader has seen change: the writer goes on until
        // every reader has seen two, so the interleaving the test is about
        // happens however the host schedules the threads (a fixed number of
        // reads once let a reader that started late see only one).
        let changes = Arc::new((0..READERS).map(|_| AtomicU64::new(0)).collect::<Vec<_>>());
        let readers: Vec<_> = (0..READERS)
            .map(|reader| {
                let (published, sections) = (published.clone(), Sections(counters.clone()));
                let (done, reads, changes) = (done.clone(), reads.clone(), changes.clone());
                std::thread::spawn(move || {
                    let (mut count, mut last, mut seen) = (0u64, 0u64, 0u64);
                    while !done.load(Ordering::Relaxed) {
                        let section = sections.enter(reader);
                        // Safety: inside this thread's section until `section` drops.
                        let value = unsafe { published.read() };
                        let first = value.whole().expect("a whole, live value");
                        assert!(first >= last, "generations only grow: {last} then {first}");
                        // Holds the value a while: a writer that freed it too early is seen below.
                        if count % 4 == 0 {
                            std::thread::yield_now();
                        } else {
                            for _ in 0..count % 64 {
                                core::hint::spin_loop();
                            }
                        }
                        assert_eq!(value.whole(), Some(first), "the value changed or was freed under its reader");
                        drop(section);
                        seen += u64::from(first != last);
                        changes[reader].store(seen, Ordering::Relaxed);
                        (count, last) = (count + 1, first);
                        reads.fetch_add(1, Ordering::Relaxed);
                    }
                    seen
                })
            })
            .collect();
        let mut generation = 0;
        let interleaved = || changes.iter().all(|seen| seen.load(Ordering::Relaxed) > 1);
        while (reads.load(Ordering::Relaxed) < READS || !interleaved())
            && readers.iter().all(|reader| !reader.is_finished())
        {
            generation += 1;
            published.replace(Generation::new(generation, &dropped));
        }
        done.store(true, Ordering::Relaxed);
        for reader in readers {
            let seen = reader.join().expect("a reader failed");
            assert!(seen > 1, "the reader saw {seen} generations: no interleaving was tested");
        }
        let mut freed = dropped.lock().unwrap().clone();
        freed.sort_unstable();
        assert_eq!(freed, (1..generation).collect::<Vec<_>>(), "each replaced generation freed once, not the current");
        drop(Arc::into_inner(published).expect("readers joined"));
        assert_eq!(dropped.lock().unwrap().len() as u64, generation, "dropping it frees the current value");
    }
}
