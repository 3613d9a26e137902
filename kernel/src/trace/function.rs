//! The function tracer: one ring-buffer record per traced call, shown like Linux's trace file.
use super::buffers::{Event, PerCpuBuffers, Recorded};
use super::{Filter, FtraceError, FtraceOps, FtraceRegs, OpsFlags, register, unregister};
use crate::arch::percpu::online_cpus;
use crate::arch::registers::timebase;
use crate::symbols::Symbolized;
use crate::thread::current_thread_info;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use macros::notrace;

/// One traced call.
#[derive(Clone, Copy, Debug)]
pub struct FunctionEvent {
    pub timebase: u64,
    pub ip: u64,
    pub parent_ip: u64,
    pub thread: u64,
}

/// In a ring: the four fields in order.
impl Event<4> for FunctionEvent {
    #[inline(always)]
    fn to_words(&self) -> [u64; 4] {
        [self.timebase, self.ip, self.parent_ip, self.thread]
    }

    fn from_words([timebase, ip, parent_ip, thread]: [u64; 4]) -> Self {
        FunctionEvent { timebase, ip, parent_ip, thread }
    }

    fn timebase(&self) -> u64 {
        self.timebase
    }
}

/// Slots per CPU (a power of two).
const SLOTS: usize = 4096;

/// The tracer's per-CPU rings.
static BUFFERS: PerCpuBuffers<FunctionEvent, 4, SLOTS> = PerCpuBuffers::new();

/// Events kept per CPU (the newest).
pub const CAPACITY: usize = PerCpuBuffers::<FunctionEvent, 4, SLOTS>::CAPACITY;

/// The tracer's ops.
pub static FUNCTION_OPS: FtraceOps = FtraceOps::new("function", function_handler, OpsFlags::empty());

#[notrace]
extern "C" fn function_handler(ip: u64, parent_ip: u64, _ops: &FtraceOps, _regs: &mut FtraceRegs) {
    // Safety: the current thread's own thread_info.
    let thread = unsafe { (*current_thread_info()).thread_id };
    BUFFERS.push(FunctionEvent { timebase: timebase(), ip, parent_ip, thread });
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
    BUFFERS.clear();
}

/// A copy of the events of every CPU (cpu, event) in time order, and how many were lost.
#[notrace]
pub fn events() -> (Vec<(usize, FunctionEvent)>, u64) {
    BUFFERS.events()
}

/// A copy of the events of every CPU in time order, with each CPU's counts.
#[notrace]
pub fn recorded() -> Recorded<FunctionEvent> {
    BUFFERS.recorded()
}

#[notrace]
fn name(address: u64) -> String {
    match super::name_of(address) {
        Some(name) => name,
        None => format!("{}", Symbolized(address)),
    }
}

/// The buffer as lines of Linux's trace file layout.
#[notrace]
pub fn render() -> Vec<String> {
    let recorded = recorded();
    let frequency = crate::time::frequency();
    let mut lines = Vec::with_capacity(recorded.events.len() + 4);
    lines.push(String::from("# tracer: function"));
    lines.push(format!(
        "# entries-in-buffer/entries-written: {}/{}   #P:{}",
        recorded.events.len(),
        recorded.written.iter().sum::<u64>(),
        online_cpus().len()
    ));
    lines.extend(recorded.lost_line());
    lines.push(String::from("#   THREAD     CPU#     TIMESTAMP  FUNCTION"));
    for (cpu, event) in recorded.events {
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
