//! The function tracer: one ring-buffer record per traced call, shown like Linux's trace file.
use super::{Filter, FtraceError, FtraceOps, FtraceRegs, OpsFlags, register, unregister};
use crate::arch::ppc64::registers::{per_cpu, timebase};
use crate::arch::ppc64::interrupts;
use crate::symbols::{self, Symbolized};
use crate::thread::current_thread_info;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use boot::MAX_CPUS;
use core::cell::UnsafeCell;
use macros::notrace;
use portable::ring::RingBuffer;

/// One traced call.
#[derive(Clone, Copy, Debug)]
pub struct FunctionEvent {
    pub timebase: u64,
    pub ip: u64,
    pub parent_ip: u64,
    pub thread: u64,
}

const EMPTY: FunctionEvent = FunctionEvent { timebase: 0, ip: 0, parent_ip: 0, thread: 0 };
/// Events kept per CPU.
pub const CAPACITY: usize = 4096;

/// Per-CPU buffers, written only by their own CPU inside the handler (guarded
/// against recursion, preemption off) and read with interrupts off.
struct Buffers([UnsafeCell<RingBuffer<FunctionEvent, CAPACITY>>; MAX_CPUS]);
// Safety: see above: one writer per CPU, readers exclude it.
unsafe impl Sync for Buffers {}
static BUFFERS: Buffers = Buffers([const { UnsafeCell::new(RingBuffer::new(EMPTY)) }; MAX_CPUS]);

/// The tracer's ops.
pub static FUNCTION_OPS: FtraceOps = FtraceOps::new("function", function_handler, OpsFlags::empty());

#[notrace]
extern "C" fn function_handler(ip: u64, parent_ip: u64, _ops: &FtraceOps, _regs: &mut FtraceRegs) {
    // Safety: this CPU's buffer; we are its only writer now (see Buffers).
    let buffer = unsafe { &mut *BUFFERS.0[per_cpu().cpu_id as usize].get() };
    // Safety: the current thread's own thread_info.
    let thread = unsafe { (*current_thread_info()).thread_id };
    buffer.push(FunctionEvent { timebase: timebase(), ip, parent_ip, thread });
}

/// Starts tracing the functions matching `glob` (restarting if already on);
/// returns how many functions.
#[notrace]
pub fn start(glob: &str) -> Result<usize, FtraceError> {
    if super::registered().contains(&FUNCTION_OPS.name) {
        unregister(&FUNCTION_OPS)?;
    }
    clear();
    register(&FUNCTION_OPS, Filter::Glob(glob))
}

/// Stops the tracer (the buffer keeps its events).
#[notrace]
pub fn stop() -> Result<(), FtraceError> {
    unregister(&FUNCTION_OPS)
}

/// Empties every buffer.
#[notrace]
pub fn clear() {
    let _guard = interrupts::disable();
    for buffer in &BUFFERS.0 {
        // Safety: interrupts off and no handler is running on this CPU.
        unsafe { (*buffer.get()).clear() };
    }
}

/// A copy of the events of every CPU (cpu, event), and how many were lost.
#[notrace]
pub fn events() -> (Vec<(usize, FunctionEvent)>, u64) {
    let _guard = interrupts::disable();
    let mut events = Vec::new();
    let mut lost = 0;
    for (cpu, buffer) in BUFFERS.0.iter().enumerate() {
        // Safety: interrupts off: no handler writes while we copy.
        let buffer = unsafe { &*buffer.get() };
        events.extend(buffer.iter().map(|event| (cpu, *event)));
        lost += buffer.lost();
    }
    (events, lost)
}

#[notrace]
fn name(address: u64) -> String {
    match super::function_of(address).and_then(|function| symbols::table()?.lookup(function)) {
        Some((symbol, _)) => String::from(symbol.name),
        None => format!("{}", Symbolized(address)),
    }
}

/// The buffer as lines of Linux's trace file layout.
#[notrace]
pub fn render() -> Vec<String> {
    let (events, lost) = events();
    let frequency = crate::time::frequency();
    let mut lines = Vec::with_capacity(events.len() + 3);
    lines.push(String::from("# tracer: function"));
    lines.push(format!("# entries-in-buffer/entries-written: {}/{}   #P:1", events.len(), events.len() as u64 + lost));
    lines.push(String::from("#   THREAD     CPU#     TIMESTAMP  FUNCTION"));
    for (cpu, event) in events {
        let microseconds = event.timebase as u128 * 1_000_000 / frequency as u128;
        lines.push(format!(
            "  thread-{:<4} [{:03}] {:>6}.{:06}: {} <-{}",
            event.thread,
            cpu,
            microseconds / 1_000_000,
            microseconds % 1_000_000,
            name(event.ip),
            Symbolized(event.parent_ip)
        ));
    }
    lines
}
