//! What the livepatch transition needs from the scheduler: every thread's patch state, and a switched-out thread held still while its stack is walked.
use super::{State, lock, unlock, with_scheduler};
use crate::arch::interrupts;
use crate::arch::percpu::smp_processor_id;
use crate::thread::info::ThreadInfo;
use alloc::string::String;
use alloc::vec::Vec;

/// Where a live thread is, as the transition sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// The calling thread: it walks its own stack.
    Caller,
    /// Switched out: `with_switched_out` walks its saved stack.
    SwitchedOut,
    /// Running on another CPU: only the thread itself can check its stack,
    /// at its next safe point. `idle`: it is that CPU's idle thread, which
    /// reaches one as soon as the CPU is woken.
    RunningOn { cpu: usize, idle: bool },
}

/// A live thread and its patch state.
pub struct PatchCandidate {
    pub id: u64,
    pub name: String,
    pub patch_state: u64,
    pub place: Place,
}

/// Every thread that can still run (dead ones never run again, so what
/// their stacks hold blocks nothing), with its patch state and place.
pub fn patch_candidates() -> Vec<PatchCandidate> {
    with_scheduler(|scheduler| {
        let me = smp_processor_id();
        scheduler
            .threads
            .iter()
            .filter(|(_, thread)| !matches!(thread.state, State::Dead(_)))
            .map(|(&id, thread)| PatchCandidate {
                id,
                name: thread.name.clone(),
                // Safety: every live thread's stack base holds its thread_info.
                patch_state: unsafe {
                    core::ptr::read_volatile(&raw const (*(thread.stack_base as *const ThreadInfo)).patch_state)
                },
                place: match thread.running_on {
                    Some(cpu) if cpu == me => Place::Caller,
                    Some(cpu) => Place::RunningOn { cpu, idle: scheduler.is_idle(id) },
                    None => Place::SwitchedOut,
                },
            })
            .collect()
    })
}

/// Sets every thread's patch state to `state`, under the scheduler lock: a
/// thread spawned meanwhile is either in the table here, or takes the
/// transition's target itself when it is added (`spawn_pinned`), after.
pub fn set_patch_states(state: u64) {
    with_scheduler(|scheduler| {
        for thread in scheduler.threads.values() {
            // Safety: every thread's stack base holds its thread_info; the
            // handler of a thread running elsewhere reads the word only
            // while a transition marks its function (see livepatch::redirect).
            // One aligned doubleword store, volatile: a reader sees the old or
            // the new state, never a torn one.
            unsafe { core::ptr::write_volatile(&raw mut (*(thread.stack_base as *mut ThreadInfo)).patch_state, state) };
        }
    })
}

/// Runs `action(stack base, saved r1)` on thread `id` if it is live and
/// switched out, holding the scheduler lock (interrupts off) throughout, so
/// that no CPU switches it in meanwhile: its stack stays as it is for a walk,
/// and a patch state `action` writes is in place before it runs again (its
/// CPU takes the lock to switch to it). `Err(Some(cpu))`: it runs on `cpu`;
/// `Err(None)`: it is dead or gone. `action` must not take the scheduler
/// lock or a lock whose holder may wait for it.
pub fn with_switched_out<R>(id: u64, action: impl FnOnce(u64, u64) -> R) -> Result<R, Option<usize>> {
    let _off = interrupts::disable();
    let mut locked = lock();
    let scheduler = locked.as_mut().expect("threads are initialised at boot");
    let result = match scheduler.threads.get(&id) {
        None => Err(None),
        Some(thread) if matches!(thread.state, State::Dead(_)) => Err(None),
        Some(thread) => match thread.running_on {
            Some(cpu) => Err(Some(cpu)),
            None => {
                let base = thread.stack_base;
                // Safety: a switched-out thread's thread_info holds the r1 its switch saved.
                let saved = unsafe { (*(base as *const ThreadInfo)).saved_stack_pointer };
                Ok(action(base, saved))
            }
        },
    };
    unlock(locked);
    result
}
