//! Per-CPU trace ring buffers shared by the tracers: written by handlers, read by the shell.
use crate::arch::interrupts;
use crate::arch::registers::per_cpu;
use alloc::vec::Vec;
use boot::MAX_CPUS;
use core::cell::UnsafeCell;
use portable::ring::RingBuffer;

/// One ring of `N` events per CPU. A handler writes only its own CPU's ring,
/// under the tracer's recursion guard (so an interrupt on the same CPU skips
/// instead of interleaving), never preempted there (the timer does not
/// preempt inside ftrace: `arch::ftrace::in_ftrace`); readers
/// disable interrupts while they copy.
pub struct PerCpuBuffers<T: Copy, const N: usize>([UnsafeCell<RingBuffer<T, N>>; MAX_CPUS]);

// Safety: see above: one writer per CPU, readers exclude it.
unsafe impl<T: Copy, const N: usize> Sync for PerCpuBuffers<T, N> {}

impl<T: Copy, const N: usize> PerCpuBuffers<T, N> {
    /// Empty rings; `filler` initialises unused slots.
    pub const fn new(filler: T) -> Self {
        // One ring per CPU, spelled out: the filler is not a constant.
        const _: () = assert!(MAX_CPUS == 8);
        PerCpuBuffers([
            UnsafeCell::new(RingBuffer::new(filler)),
            UnsafeCell::new(RingBuffer::new(filler)),
            UnsafeCell::new(RingBuffer::new(filler)),
            UnsafeCell::new(RingBuffer::new(filler)),
            UnsafeCell::new(RingBuffer::new(filler)),
            UnsafeCell::new(RingBuffer::new(filler)),
            UnsafeCell::new(RingBuffer::new(filler)),
            UnsafeCell::new(RingBuffer::new(filler)),
        ])
    }

    /// Appends to this CPU's ring (from a handler).
    #[inline(always)]
    pub fn push(&self, event: T) {
        // Safety: this CPU's ring; the handler is its only writer now.
        unsafe { (*self.0[per_cpu().cpu_id as usize].get()).push(event) };
    }

    /// Empties every ring.
    pub fn clear(&self) {
        let _guard = interrupts::disable();
        for ring in &self.0 {
            // Safety: interrupts off and no handler is running on this CPU.
            unsafe { (*ring.get()).clear() };
        }
    }

    /// A copy of every CPU's events as (cpu, event), oldest first per CPU, and how many were lost.
    pub fn events(&self) -> (Vec<(usize, T)>, u64) {
        let _guard = interrupts::disable();
        let mut events = Vec::new();
        let mut lost = 0;
        for (cpu, ring) in self.0.iter().enumerate() {
            // Safety: interrupts off: no handler writes while we copy.
            let ring = unsafe { &*ring.get() };
            events.extend(ring.iter().map(|event| (cpu, *event)));
            lost += ring.lost();
        }
        (events, lost)
    }
}
