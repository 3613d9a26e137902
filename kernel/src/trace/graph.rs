//! The function-graph tracer: hooks the return of traced calls to time them and draw the call tree.
//!
//! On entry (`ftrace_graph_call` in the stubs, then `ftrace_graph_entry`)
//! the return address into the caller is pushed on the thread's return stack
//! and replaced by `return_to_handler`; when the function returns there,
//! `ftrace_return_to_handler` pops it and records the exit. This works on a
//! function that is also livepatched: `livepatch_handler` saves and restores
//! whatever return address it finds, `return_to_handler` included.
use super::buffers::{Event, PerCpuBuffers, Recorded};
use super::{Filter, FtraceError, FtraceOps, FtraceRegs, OpsFlags, ops::traces, register, unregister};
use crate::arch::ftrace::{ftrace_disable_ftrace_graph_caller, ftrace_enable_ftrace_graph_caller, return_to_handler};
use crate::arch::registers::timebase;
use crate::thread::{self, current_thread_info};
use alloc::string::String;
use alloc::vec::Vec;
use macros::notrace;
use portable::graph::{GraphLine, Kind};

/// Nested traced calls one thread can have hooked at once.
pub const RETURN_STACK_DEPTH: usize = 64;

/// A hooked call: where it really returns, which site, and when it started.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ReturnEntry {
    pub return_address: u64,
    pub ip: u64,
    pub entry_timebase: u64,
}

/// A thread's return stack (its address is in `thread_info.graph_stack`).
#[repr(C)]
pub struct ReturnStack(pub [ReturnEntry; RETURN_STACK_DEPTH]);

impl ReturnStack {
    pub const fn new() -> Self {
        ReturnStack([ReturnEntry { return_address: 0, ip: 0, entry_timebase: 0 }; RETURN_STACK_DEPTH])
    }
}

/// The real return addresses on the return stack of the thread whose stack
/// starts at `base`, oldest first (for the reliable stack walk, which finds
/// `return_to_handler` in their place). The thread must not run meanwhile,
/// or be the caller (this function is not traced, so it adds no entry).
#[notrace]
pub fn return_addresses(base: u64) -> Vec<u64> {
    // Safety: a live thread's stack base holds its thread_info.
    let info = unsafe { &*(base as *const crate::thread::ThreadInfo) };
    if info.graph_stack == 0 {
        return Vec::new();
    }
    // Safety: thread_info.graph_stack points at the thread's own return stack.
    let stack = unsafe { &*(info.graph_stack as *const ReturnStack) };
    let depth = (info.graph_depth as usize).min(RETURN_STACK_DEPTH);
    stack.0[..depth].iter().map(|entry| entry.return_address).collect()
}

/// One recorded entry or exit.
#[derive(Clone, Copy)]
pub struct GraphEvent {
    pub kind: Kind,
    pub ip: u64,
    pub depth: u32,
    pub thread: u64,
    pub timebase: u64,
    pub duration: u64,
}

/// Bit of the first word that marks an exit (the depth is below it).
const EXIT_BIT: u64 = 1 << 32;

/// In a ring: depth and kind in one word, then ip, thread, timebase, duration.
impl Event<5> for GraphEvent {
    #[inline(always)]
    fn to_words(&self) -> [u64; 5] {
        let kind = if self.kind == Kind::Exit { EXIT_BIT } else { 0 };
        [self.depth as u64 | kind, self.ip, self.thread, self.timebase, self.duration]
    }

    fn from_words([depth_and_kind, ip, thread, timebase, duration]: [u64; 5]) -> Self {
        let kind = if depth_and_kind & EXIT_BIT != 0 { Kind::Exit } else { Kind::Entry };
        GraphEvent { kind, ip, depth: depth_and_kind as u32, thread, timebase, duration }
    }

    fn timebase(&self) -> u64 {
        self.timebase
    }
}

/// Slots per CPU (a power of two): keeps the newest 4095 events.
const SLOTS: usize = 4096;

/// The tracer's per-CPU rings.
static BUFFERS: PerCpuBuffers<GraphEvent, 5, SLOTS> = PerCpuBuffers::new();

/// The graph tracer's ops: its handler does nothing, it only switches the
/// sites of the filtered functions on; the work happens at ftrace_graph_call.
pub static GRAPH_OPS: FtraceOps = FtraceOps::new("function_graph", graph_site_handler, OpsFlags::RECURSION_SAFE);

#[notrace]
extern "C" fn graph_site_handler(_ip: u64, _parent_ip: u64, _ops: &FtraceOps, _regs: &mut FtraceRegs) {}

#[notrace]
#[inline(always)]
fn record(event: GraphEvent) {
    BUFFERS.push(event);
}

// The stubs call these two by name (declared in `crate::arch`): each must
// have the signature declared there.
const _: [unsafe extern "C" fn(&mut FtraceRegs); 2] = [ftrace_graph_entry, crate::arch::ftrace_graph_entry];
const _: [unsafe extern "C" fn() -> u64; 2] = [ftrace_return_to_handler, crate::arch::ftrace_return_to_handler];

/// Called from `ftrace_graph_caller` for every traced call while the graph
/// tracer is on: hooks the return of the calls it filters.
#[notrace]
#[unsafe(no_mangle)]
pub extern "C" fn ftrace_graph_entry(regs: &mut FtraceRegs) {
    super::ops::check_stack_room(regs);
    // The site, not where the call continues: a livepatch may have redirected that already.
    let ip = regs.ip;
    // Safety: called from the stubs, which the timer does not preempt: a read-side section.
    if !unsafe { traces(&GRAPH_OPS, ip) } {
        return;
    }
    // Safety: the current thread's own thread_info.
    let info = unsafe { &mut *current_thread_info() };
    if info.trace_recursion != 0 || info.graph_stack == 0 || info.graph_depth as usize >= RETURN_STACK_DEPTH {
        return;
    }
    info.trace_recursion = 1;
    let depth = info.graph_depth as usize;
    let now = timebase();
    // Safety: graph_stack points at this thread's ReturnStack.
    let stack = unsafe { &mut *(info.graph_stack as *mut ReturnStack) };
    stack.0[depth] = ReturnEntry { return_address: regs.return_address(), ip, entry_timebase: now };
    info.graph_depth += 1;
    regs.set_return_address(return_to_handler as *const () as u64);
    record(GraphEvent {
        kind: Kind::Entry,
        ip,
        depth: depth as u32,
        thread: info.thread_id,
        timebase: now,
        duration: 0,
    });
    info.trace_recursion = 0;
}

/// Called by `return_to_handler`: pops the thread's return stack, records the
/// exit and returns the real return address.
#[notrace]
#[unsafe(no_mangle)]
pub extern "C" fn ftrace_return_to_handler() -> u64 {
    let now = timebase();
    // Safety: the current thread's own thread_info.
    let info = unsafe { &mut *current_thread_info() };
    if info.graph_depth == 0 || info.graph_stack == 0 {
        panic!("function graph: return with an empty return stack");
    }
    let depth = info.graph_depth as usize - 1;
    // Safety: as in ftrace_graph_entry.
    let entry = unsafe { (*(info.graph_stack as *const ReturnStack)).0[depth] };
    // The entry is read before the depth drops (Linux's
    // `ftrace_pop_return_trace` order): until then the real return address
    // is still on the return stack, where the unload scan and the debugger
    // look (`module::busy` visits the entries below `graph_depth`); in
    // between it is in no register yet and nowhere else.
    crate::arch::thread_info::compiler_barrier();
    info.graph_depth = depth as u64;
    if info.trace_recursion == 0 {
        info.trace_recursion = 1;
        let duration = now - entry.entry_timebase;
        record(GraphEvent {
            kind: Kind::Exit,
            ip: entry.ip,
            depth: depth as u32,
            thread: info.thread_id,
            timebase: now,
            duration,
        });
        info.trace_recursion = 0;
    }
    entry.return_address
}

/// Makes the stubs call (or stop calling) `ftrace_graph_entry` after the handler.
#[notrace]
fn set_graph_calls(on: bool) -> Result<(), FtraceError> {
    if on { ftrace_enable_ftrace_graph_caller() } else { ftrace_disable_ftrace_graph_caller() }
        .map_err(FtraceError::Text)
}

/// Starts the graph tracer on the functions matching `glob`.
#[notrace]
pub fn start(glob: &str) -> Result<usize, FtraceError> {
    if super::registered().contains(&GRAPH_OPS.name) {
        stop()?;
    }
    clear();
    let _preempt = thread::preempt_disable();
    let count = register(&GRAPH_OPS, Filter::Glob(glob))?;
    if let Err(error) = set_graph_calls(true) {
        // Both graph call sites or neither were written: only the registration is undone.
        if let Err(undo) = unregister(&GRAPH_OPS) {
            super::ops::report_failed_undo("function_graph's registration", &undo);
        }
        return Err(error);
    }
    Ok(count)
}

/// Stops hooking new calls. Calls already hooked still return through
/// `return_to_handler`, which stays valid, so no return is lost.
#[notrace]
pub fn stop() -> Result<(), FtraceError> {
    let _preempt = thread::preempt_disable();
    set_graph_calls(false)?;
    if let Err(error) = unregister(&GRAPH_OPS) {
        // unregister changed nothing: the graph calls go back on, as before.
        if let Err(undo) = set_graph_calls(true) {
            super::ops::report_failed_undo("function_graph's graph calls", &undo);
        }
        return Err(error);
    }
    Ok(())
}

/// Empties every buffer.
#[notrace]
pub fn clear() {
    BUFFERS.clear();
}

/// A copy of all recorded events (cpu, event), oldest first by timebase, and how many were lost.
#[notrace]
pub fn events() -> (Vec<(usize, GraphEvent)>, u64) {
    BUFFERS.events()
}

/// A copy of all recorded events in time order, with each CPU's counts.
#[notrace]
pub fn recorded() -> Recorded<GraphEvent> {
    BUFFERS.recorded()
}

/// Renders events in the function_graph layout; `thread` limits it to one thread.
#[notrace]
pub fn render(thread: Option<u64>, show_durations: bool) -> Vec<String> {
    let recorded = recorded();
    let lost_line = recorded.lost_line();
    let events = recorded.events;
    let names: Vec<String> = events.iter().map(|(_, event)| function_name(event.ip)).collect();
    let frequency = crate::time::frequency();
    let lines: Vec<GraphLine> = events
        .iter()
        .zip(&names)
        .filter(|((_, event), _)| thread.is_none_or(|thread| event.thread == thread))
        .map(|((cpu, event), name)| GraphLine {
            kind: event.kind,
            name,
            depth: event.depth,
            thread: event.thread,
            cpu: *cpu as u32,
            duration_nanoseconds: (event.duration as u128 * 1_000_000_000 / frequency as u128) as u64,
        })
        .collect();
    let mut output = alloc::vec![String::from("# tracer: function_graph")];
    output.extend(lost_line);
    output.extend(portable::graph::HEADER.iter().map(|line| String::from(*line)));
    output.extend(portable::graph::render(&lines, show_durations));
    output
}

/// The name of the function whose site is `ip`.
#[notrace]
pub fn function_name(ip: u64) -> String {
    super::name_of(ip).unwrap_or_else(|| alloc::format!("{ip:#x}"))
}
