//! Data shared between threads: a spin lock that keeps its holder from being preempted, and `Published` values read without one.
//!
//! On one CPU a plain spin lock is a trap: a thread preempted while holding
//! it leaves the next locker spinning, and if that locker has preemption
//! disabled (as every text-patching path does) the holder never runs again.
//! Like Linux's `spin_lock`, this lock disables preemption for as long as it
//! is held. Locks also taken by interrupt handlers (console, heap,
//! scheduler) disable interrupts instead.
//!
//! Tables read on every traced call (the ftrace ops list, each ops's sites,
//! the livepatch redirect table) are [`Published`] values: readers take no
//! lock, writers (serialised by a lock) replace the value and the old one is
//! freed after the grace period of [`NonPreemptibleReaders`].
use crate::thread::{PreemptGuard, preempt_disable};
use core::ops::{Deref, DerefMut};
use core::sync::atomic::Ordering;
use portable::published::Readers;

/// A spin lock whose holder cannot be preempted.
pub struct Mutex<T> {
    inner: spin::Mutex<T>,
}

/// Access to the data; unlocks, then allows preemption again, when dropped.
pub struct MutexGuard<'a, T> {
    // Field order is drop order: unlock first, then preemption.
    guard: spin::MutexGuard<'a, T>,
    _preempt: PreemptGuard,
}

impl<T> Mutex<T> {
    pub const fn new(value: T) -> Self {
        Mutex { inner: spin::Mutex::new(value) }
    }

    /// Disables preemption, then takes the lock.
    pub fn lock(&self) -> MutexGuard<'_, T> {
        let preempt = preempt_disable();
        MutexGuard { guard: self.inner.lock(), _preempt: preempt }
    }
}

impl<T> Deref for MutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T> DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

/// A value read on hot paths without a lock (`portable::published`), whose
/// readers are [`NonPreemptibleReaders`].
pub type Published<T> = portable::published::Published<T, NonPreemptibleReaders>;

/// The readers of the kernel's [`Published`] values: code the scheduler
/// does not preempt. A read-side section is a stub or a handler called from
/// one (the timer does not preempt a context the arch's `in_ftrace`
/// places there), or code that runs with preemption disabled
/// (`thread::preempt_disable`, a [`Mutex`] held) and neither yields nor
/// sleeps while it uses the value. Writers run in thread context.
/// (`thread::synchronize` is the grace period for readers that may be
/// preempted, such as callers into a module; these readers need none.)
pub struct NonPreemptibleReaders;

// Safety: one CPU. A read-side section is never preempted, so once it has
// begun this CPU runs nothing else until it ends, except interrupts, which
// finish before it resumes. A writer runs in thread context, so it runs only
// when every section that loaded the value it retires has ended (its own,
// if it is in one, does not use that value after retiring it): the grace
// period is over before it is asked for. One CPU also sees its own stores in
// program order, so `Relaxed` loads suffice. SMP must change both: wait until
// every other CPU has passed a point outside any section, and load with
// `Acquire` (the pairing `portable::published` describes).
// The argument above holds for one CPU only: a second one must fail to
// build here until the grace period and the loads are made SMP-safe.
const _: () = assert!(crate::arch::text::RUNNING_CPUS == 1, "NonPreemptibleReaders assumes one CPU");
unsafe impl Readers for NonPreemptibleReaders {
    const LOAD_ORDERING: Ordering = Ordering::Relaxed;
    #[inline(always)]
    fn wait_for_readers(&self) {}
}
