//! Per-CPU trace ring buffers shared by the tracers: written by handlers on their own CPU, read by the shell on any CPU.
use crate::arch::percpu::online_cpus;
use crate::arch::registers::per_cpu;
use alloc::vec::Vec;
use boot::MAX_CPUS;
pub use portable::trace_ring::Event;
use portable::trace_ring::{TraceRing, lost_line, merge_by_time};

/// One `portable::trace_ring::TraceRing` per CPU. A handler writes only its
/// own CPU's ring, never preempted or moved there (the timer does not
/// preempt inside ftrace: `arch::ftrace::in_ftrace`), so one writer per ring,
/// which takes no lock, as long as nothing else on that CPU writes in the
/// middle of a push: the timer tick runs on the thread's stack under the
/// thread's own recursion guard (a nested traced call skips), and every
/// other interrupt runs no traced code (IPI handlers and reports are
/// `#[notrace]`: `tests::smp::nothing_an_ipi_handler_or_a_report_runs_has_an_ftrace_site`). Readers on any CPU copy without stopping
/// it and drop what it overwrote meanwhile (the ring's validation), so they
/// need neither a lock nor interrupts off.
pub struct PerCpuBuffers<T, const WORDS: usize, const SLOTS: usize>([TraceRing<T, WORDS, SLOTS>; MAX_CPUS]);

/// Every CPU's events, merged.
pub struct Recorded<T> {
    /// (cpu, event), oldest first by timebase; each CPU's in its own order.
    pub events: Vec<(usize, T)>,
    /// Per CPU: entries written since the last clear.
    pub written: [u64; MAX_CPUS],
    /// Per CPU: of those, the ones not in `events` (overwritten before they were read).
    pub lost: [u64; MAX_CPUS],
    /// Per CPU: of the lost, those the copy dropped because the writer overwrote them meanwhile.
    pub dropped_while_copying: [u64; MAX_CPUS],
}

impl<T> Recorded<T> {
    /// Lost events over every CPU.
    pub fn total_lost(&self) -> u64 {
        self.lost.iter().sum()
    }

    /// `# lost per CPU: 0:0 1:12` from CPU 0 to the last online CPU (or
    /// the last that lost something), when anything was lost.
    pub fn lost_line(&self) -> Option<alloc::string::String> {
        let last = online_cpus().iter().chain(self.lost.iter().rposition(|&lost| lost != 0)).max().unwrap_or(0);
        lost_line(&self.lost[..=last])
    }
}

impl<T: Event<WORDS>, const WORDS: usize, const SLOTS: usize> PerCpuBuffers<T, WORDS, SLOTS> {
    /// Events each CPU's ring keeps.
    pub const CAPACITY: usize = TraceRing::<T, WORDS, SLOTS>::CAPACITY;

    /// Empty rings.
    pub const fn new() -> Self {
        PerCpuBuffers([const { TraceRing::new() }; MAX_CPUS])
    }

    /// Appends to this CPU's ring (from a handler, which is not preempted).
    #[inline(always)]
    pub fn push(&self, event: T) {
        self.0[per_cpu().cpu_id as usize].push(&event);
    }

    /// Empties every ring (readers start after what they hold now).
    pub fn clear(&self) {
        self.0.iter().for_each(TraceRing::clear);
    }

    /// A copy of every CPU's events merged in time order, with what each CPU lost.
    pub fn recorded(&self) -> Recorded<T> {
        let mut written = [0; MAX_CPUS];
        let mut lost = [0; MAX_CPUS];
        let mut dropped_while_copying = [0; MAX_CPUS];
        let mut per_cpu = Vec::with_capacity(MAX_CPUS);
        for (cpu, ring) in self.0.iter().enumerate() {
            let snapshot = ring.read();
            written[cpu] = snapshot.written;
            lost[cpu] = snapshot.lost;
            dropped_while_copying[cpu] = snapshot.dropped_while_copying;
            per_cpu.push(snapshot.events);
        }
        Recorded { events: merge_by_time(per_cpu), written, lost, dropped_while_copying }
    }

    /// A copy of every CPU's events as (cpu, event), oldest first, and how many were lost.
    pub fn events(&self) -> (Vec<(usize, T)>, u64) {
        let recorded = self.recorded();
        let lost = recorded.total_lost();
        (recorded.events, lost)
    }
}
