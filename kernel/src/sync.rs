//! Locks for data shared between threads: a spin lock that keeps its holder from being preempted.
//!
//! On one CPU a plain spin lock is a trap: a thread preempted while holding
//! it leaves the next locker spinning, and if that locker has preemption
//! disabled (as every text-patching path does) the holder never runs again.
//! Like Linux's `spin_lock`, this lock disables preemption for as long as it
//! is held. Locks also taken by interrupt handlers (console, heap,
//! scheduler) disable interrupts instead.
use crate::thread::{PreemptGuard, preempt_disable};
use core::ops::{Deref, DerefMut};

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
