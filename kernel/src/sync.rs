//! Data shared between threads and CPUs: a spin lock that keeps its holder from being preempted, `Published` values read without one, and the grace period that frees them.
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
//! freed after the grace period of [`NonPreemptibleReaders`]:
//! [`synchronize_sched`], RCU-sched style.
//!
//! Waiting for a lock another CPU holds never just spins: between tries the
//! CPU is conferred to the others (H_CONFER, as Linux's `spin_lock` yields
//! to the holder on a shared-processor partition); under QEMU's round-robin
//! TCG a spinning vCPU would otherwise hold off the holder for its whole slice.
use crate::arch::percpu::{area, online_cpus, smp_processor_id};
use crate::arch::registers::per_cpu;
use crate::arch::smp;
use crate::thread::{PreemptGuard, preempt_disable};
use boot::MAX_CPUS;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::Ordering;
use macros::notrace;
use portable::cpuset::CpuSet;
use portable::published::Readers;

/// Takes `lock`, conferring the CPU to the others between tries.
#[notrace]
#[inline(always)]
pub fn acquire<T>(lock: &spin::Mutex<T>) -> spin::MutexGuard<'_, T> {
    loop {
        if let Some(guard) = lock.try_lock() {
            return guard;
        }
        smp::confer();
    }
}

/// `acquire` for a [`Mutex`], which no read-side section takes (see
/// `NonPreemptibleReaders`): a CPU waiting here is outside every section, so
/// it notes a quiescent state at each try, and a grace period whose writer
/// holds the lock does not wait for this CPU, which waits for the writer.
#[notrace]
#[inline(always)]
fn acquire_quiescent<T>(lock: &spin::Mutex<T>) -> spin::MutexGuard<'_, T> {
    loop {
        if let Some(guard) = lock.try_lock() {
            return guard;
        }
        note_quiescent_state();
        smp::confer();
    }
}

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

    /// Disables preemption, then takes the lock (conferring while another CPU holds it).
    pub fn lock(&self) -> MutexGuard<'_, T> {
        let preempt = preempt_disable();
        MutexGuard { guard: acquire_quiescent(&self.inner), _preempt: preempt }
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
/// one (the timer does not preempt a context the arch's `in_ftrace` places
/// there), or code that runs with preemption disabled
/// (`thread::preempt_disable`, a [`Mutex`] held) and neither yields, sleeps,
/// waits for a lock nor waits for a grace period while it uses the value.
/// Writers run in thread context. (`thread::synchronize` is the grace
/// period for readers that may be preempted, such as callers into a module;
/// these readers need none.)
pub struct NonPreemptibleReaders;

// Safety: loads are `Acquire`, pairing with the writer's release swap, so a
// reader on any CPU sees the value's contents. `wait_for_readers` is
// `synchronize_sched`: it returns once every other online CPU has noted a
// quiescent state after the call began, at a point outside every read-side
// section: a switch or a pass through the scheduler, the idle loop, a wait
// for a lock or a grace period, or an interrupt taken where the timer could
// preempt (preempt count 0, not inside ftrace). A section in progress on
// another CPU when the writer retired the value has ended by then. On the
// writer's own CPU nothing else runs until the writer is done, except
// interrupts, which end first, and the writer's own section, which does not
// use the value after retiring it. A CPU that comes online later starts
// outside any section.
unsafe impl Readers for NonPreemptibleReaders {
    const LOAD_ORDERING: Ordering = Ordering::Acquire;
    #[inline(always)]
    fn wait_for_readers(&self) {
        synchronize_sched();
    }
}

/// Notes that this CPU is outside every read-side section now (see
/// `NonPreemptibleReaders`). The release orders the CPU's earlier reads of
/// retired values before a writer's acquire of the count.
#[notrace]
#[inline(always)]
pub fn note_quiescent_state() {
    per_cpu().quiescent_states.fetch_add(1, Ordering::Release);
    // A full barrier (`sync`) between the count and this CPU's next loads of
    // a `Published` pointer: release orders only what came before. Without
    // it the count could become visible after a later load of the old
    // pointer, and a writer that saw the new count would free what that load
    // still uses (the store-buffering pattern, which POWER allows).
    core::sync::atomic::fence(Ordering::SeqCst);
}

/// The grace period of `NonPreemptibleReaders` (Linux's `synchronize_rcu`
/// for sched-RCU readers): returns once every other online CPU has noted a
/// quiescent state since the call. CPUs that have not are asked, by an IPI
/// whose handler notes one if the context it interrupted is preemptible
/// (idle, ceded, ordinary thread code); a CPU inside a section is asked
/// again until it has left it. Thread context, with preemption disabled or
/// a lock held too, but never inside a read-side section (it would wait for
/// itself): the rule that makes both true is that no `Published` pointer is
/// held across a call of this, nor across a [`Mutex::lock`] (whose waiting
/// notes quiescent states). With one CPU online there is nothing to wait for.
#[notrace]
pub fn synchronize_sched() {
    if crate::arch::text::log::recording() {
        // For the test of the order of a stub op's change (`trace::ops`).
        crate::arch::text::log::record(crate::arch::text::log::Step::GracePeriod, 0);
    }
    // On one CPU for the whole wait: `me` and the set of others stay right.
    let _pinned = crate::thread::preempt_disable();
    let me = smp_processor_id();
    let others = online_cpus().without(me);
    if others.is_empty() {
        return;
    }
    // A full barrier between the writer's unpublishing store (the caller's
    // swap) and the loads of the counts below (the writer's half of the
    // store-buffering pattern; see `note_quiescent_state`).
    core::sync::atomic::fence(Ordering::SeqCst);
    let count = |cpu: usize| area(cpu).quiescent_states.load(Ordering::Acquire);
    let mut start = [0u64; MAX_CPUS];
    others.iter().for_each(|cpu| start[cpu] = count(cpu));
    loop {
        // This CPU waits, outside any section: a writer on another CPU
        // waiting for it (holding a lock this one waits for) goes on.
        note_quiescent_state();
        let pending = others.iter().filter(|&cpu| count(cpu) == start[cpu]).fold(CpuSet::EMPTY, CpuSet::with);
        if pending.is_empty() {
            return;
        }
        smp::smp_call_function(pending, note_if_preemptible, 0, true);
        if others.iter().any(|cpu| count(cpu) == start[cpu]) {
            // Someone is inside a section: let it run before asking again.
            smp::confer();
        }
    }
}

/// The IPI half of `synchronize_sched`: notes a quiescent state if the
/// context the IPI interrupted could be preempted.
#[notrace]
fn note_if_preemptible(_: u64) {
    if smp::interrupted_registers().is_some_and(crate::arch::ftrace::interrupted_preemptible) {
        note_quiescent_state();
    }
}
