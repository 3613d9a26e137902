//! What the scheduler tells others about its threads: `threads`, the stacks the unload scan reads, which thread each CPU runs.
use super::{State, with_scheduler};
use crate::arch::percpu::{online_cpus, smp_processor_id};
use crate::thread::info::ThreadInfo;
use alloc::string::String;
use alloc::vec::Vec;
use boot::THREAD_SIZE;

/// What `threads` shows for one thread.
pub struct ThreadSummary {
    pub id: u64,
    pub name: String,
    pub state: State,
    /// The CPU it runs on, or ran on last.
    pub cpu: usize,
    /// The CPU it is pinned to, if any.
    pub affinity: Option<usize>,
    pub switches: u64,
    /// Stack in use; None for a thread running on another CPU (its r1 moves).
    pub stack_used: Option<u64>,
    pub livepatch_depth: u64,
    /// Its livepatch transition state (`livepatch::transition`).
    pub patch_state: u64,
}

/// A copy of every thread's state.
pub fn snapshot() -> Vec<ThreadSummary> {
    let current_stack_pointer = crate::arch::registers::stack_pointer();
    with_scheduler(|scheduler| {
        scheduler
            .threads
            .iter()
            .map(|(&id, thread)| {
                // Safety: every live thread's stack base holds its thread_info.
                let saved = unsafe { (*(thread.stack_base as *const ThreadInfo)).saved_stack_pointer };
                let stack_pointer = match thread.running_on {
                    Some(cpu) if cpu == smp_processor_id() => Some(current_stack_pointer),
                    Some(_) => None,
                    None => Some(saved),
                };
                let top = thread.stack_base + THREAD_SIZE as u64;
                // Safety: every live thread's stack base holds its thread_info.
                let livepatch_sp = unsafe { (*(thread.stack_base as *const ThreadInfo)).livepatch_sp };
                ThreadSummary {
                    id,
                    name: thread.name.clone(),
                    state: thread.state,
                    cpu: thread.last_cpu,
                    affinity: thread.affinity,
                    switches: thread.switches,
                    stack_used: stack_pointer.map(|stack_pointer| top.saturating_sub(stack_pointer)),
                    livepatch_depth: livepatch_sp - thread.stack_base - crate::thread::LIVEPATCH_STACK_OFFSET as u64,
                    // Safety: every live thread's stack base holds its thread_info.
                    patch_state: unsafe { (*(thread.stack_base as *const ThreadInfo)).patch_state },
                }
            })
            .collect()
    })
}

/// Where a live thread's registers are, for a scan of what it may still
/// return or resume to (`module::busy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LiveStack {
    /// The calling thread: its stack from the caller's own r1.
    Caller { base: u64, stack_pointer: u64 },
    /// Switched out: its stack from the r1 `switch_context` saved.
    SwitchedOut { base: u64, stack_pointer: u64 },
    /// Running on another CPU: its registers are that CPU's to give (only
    /// while the machine is stopped: `arch::smp::parked_registers`).
    RunningOn { base: u64, cpu: usize },
}

/// Every thread that can still run, with where its registers are (see
/// `LiveStack`). Dead threads are left out: they never run again, so
/// whatever their stacks still hold (a killed thread's livepatch frames,
/// return addresses into a module) refers to nothing in use.
pub fn live_stacks(current_stack_pointer: u64) -> Vec<LiveStack> {
    with_scheduler(|scheduler| {
        let me = smp_processor_id();
        scheduler
            .threads
            .values()
            .filter(|thread| !matches!(thread.state, State::Dead(_)))
            .map(|thread| {
                let base = thread.stack_base;
                match thread.running_on {
                    Some(cpu) if cpu == me => LiveStack::Caller { base, stack_pointer: current_stack_pointer },
                    Some(cpu) if online_cpus().contains(cpu) => LiveStack::RunningOn { base, cpu },
                    // The idle thread of a CPU that was started but never came
                    // online: nothing runs there, and its stack holds nothing.
                    Some(_) => LiveStack::SwitchedOut { base, stack_pointer: base + THREAD_SIZE as u64 },
                    None => {
                        // Safety: every live thread's stack base holds its thread_info.
                        let stack_pointer = unsafe { (*(base as *const ThreadInfo)).saved_stack_pointer };
                        LiveStack::SwitchedOut { base, stack_pointer }
                    }
                }
            })
            .collect()
    })
}

/// Whether the calling thread is its CPU's idle thread (the test runner asks).
#[cfg_attr(not(feature = "ktest"), allow(dead_code))]
pub fn current_is_idle() -> bool {
    with_scheduler(|scheduler| scheduler.is_idle(scheduler.current_id()))
}

/// The thread CPU `cpu` runs now, as (number, name); None if it runs none.
pub fn running_on(cpu: usize) -> Option<(u64, String)> {
    with_scheduler(|scheduler| {
        let id = *scheduler.current.get(cpu)?;
        scheduler.threads.get(&id).map(|thread| (id, thread.name.clone()))
    })
}
