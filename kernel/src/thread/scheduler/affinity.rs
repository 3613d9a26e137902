//! Thread affinity: moving a thread to one CPU, or letting it run on any.
use super::{State, schedule, with_scheduler};
use crate::arch::percpu::{online_cpus, smp_processor_id};

/// Moves thread `id` to CPU `cpu` (pins it there), or lets it run anywhere
/// (`None`). A thread running on another CPU moves at that CPU's next switch
/// (its next tick at the latest); the calling thread moves before this
/// returns. Errors name what is wrong: an unknown or dead thread, a CPU
/// that is not online, or an idle thread (which never moves).
pub fn set_affinity(id: u64, cpu: Option<usize>) -> Result<(), AffinityError> {
    if let Some(cpu) = cpu
        && !online_cpus().contains(cpu)
    {
        return Err(AffinityError::CpuOffline(cpu));
    }
    let move_self = with_scheduler(|scheduler| {
        if scheduler.is_idle(id) {
            return Err(AffinityError::Idle(id));
        }
        let thread = scheduler.threads.get_mut(&id).ok_or(AffinityError::NoSuchThread(id))?;
        if matches!(thread.state, State::Dead(_)) {
            return Err(AffinityError::NoSuchThread(id));
        }
        thread.affinity = cpu;
        if let Some(queued) = scheduler.ready.iter_mut().find(|queued| queued.id == id) {
            queued.affinity = cpu;
            let queued = *queued;
            scheduler.kick(queued);
        }
        Ok(id == scheduler.current_id() && cpu.is_some_and(|cpu| cpu != smp_processor_id()))
    })?;
    if move_self {
        schedule();
    }
    Ok(())
}

/// Why `set_affinity` refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AffinityError {
    NoSuchThread(u64),
    CpuOffline(usize),
    Idle(u64),
}

impl core::fmt::Display for AffinityError {
    fn fmt(&self, formatter: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            AffinityError::NoSuchThread(id) => write!(formatter, "no live thread {id}"),
            AffinityError::CpuOffline(cpu) => write!(formatter, "CPU {cpu} is not online"),
            AffinityError::Idle(id) => write!(formatter, "thread {id} is an idle thread, bound to its CPU"),
        }
    }
}
