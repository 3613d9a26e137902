//! The consistency model: a patch is enabled or disabled thread by thread, each thread switching only when nothing the patch changes is on its stack.
//!
//! Linux's hybrid model (kernel/livepatch/transition.c), per thread:
//! - every thread has a `patch_state` in its `thread_info`: `UNDEFINED`
//!   outside a transition, otherwise `UNPATCHED` or `PATCHED`. The handler
//!   (`redirect`) gives a thread the transitioning patch's functions only
//!   when its state is not `UNPATCHED`;
//! - a transition starts with every thread in the state opposite to its
//!   target (`begin`), then switches threads one by one: a thread switches
//!   when its stack, walked reliably (`arch::stacktrace`), holds none of the
//!   code being changed (`Code`: the original, the replacement below and the
//!   patch's own, and the whole memory of a module that holds one). A
//!   thread checks itself at its safe points (`livepatch::safe_point`:
//!   yield, sleep, join, the idle loop, `klp_safe_point`); the transition
//!   checks the switched-out ones itself (`switch_threads`), holding each
//!   still under the scheduler lock while it walks its stack, and wakes idle
//!   CPUs so that their idle threads reach their safe point;
//! - a thread whose stack cannot be walked reliably (an exception frame
//!   from a preemption, a stub or handler window) is never switched: it is
//!   retried later;
//! - a new thread starts in its spawner's state (Linux's `klp_copy_process`):
//!   its closure is the spawner's code; it switches at its first safe point;
//! - when every live thread is in the target state, the transition ends
//!   (`livepatch::complete`): the table without marks is published, a grace
//!   period passes, and only then are the states cleared (`end`).
//!
//! `SWITCH` serialises the checks with changes of the target (a reversal
//! flips it; a thread checked against the old target must not write it
//! after the flip) and with the end of the transition. Lock order: the
//! livepatch registry, then `SWITCH`, then the scheduler lock.
use crate::arch::stacktrace::{Unreliable, walk_reliable, walk_reliable_current};
use crate::sync::Mutex;
use crate::thread::{self, Place, ThreadInfo};
use crate::{module, symbols};
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::ops::Range;
use core::sync::atomic::{AtomicU64, Ordering};

/// `thread_info.patch_state` outside a transition.
pub const UNDEFINED: u64 = 0;
/// The thread runs the code below the transitioning patch.
pub const UNPATCHED: u64 = 1;
/// The thread runs the transitioning patch's code.
pub const PATCHED: u64 = 2;

/// The state the transition in progress moves every thread to, once it is
/// open (`open`: its table and sites are in place); `UNDEFINED` otherwise.
/// Written under `SWITCH`; read without a lock by safe points (a stale value
/// only sends them to `SWITCH` to find out).
static TARGET: AtomicU64 = AtomicU64::new(UNDEFINED);

/// The state a transition in progress moves threads to, `UNDEFINED` if none
/// (or if it is not open yet).
#[macros::notrace]
#[inline(always)]
pub fn target() -> u64 {
    TARGET.load(Ordering::Relaxed)
}

/// The other state.
fn opposite(state: u64) -> u64 {
    if state == PATCHED { UNPATCHED } else { PATCHED }
}

/// Code a thread's stack must not hold for it to switch.
#[derive(Clone, Debug)]
pub struct Code {
    /// The global entry of the (original) function it belongs to: named from
    /// the symbol table only when it blocks a thread, so that starting a
    /// transition allocates no name per function.
    pub function: u64,
    pub range: Range<u64>,
}

/// The kernel's name of the function whose entry is `entry`.
fn function_name(entry: u64) -> String {
    match symbols::table().and_then(|table| table.lookup(entry)) {
        Some((symbol, _)) => String::from(symbol.name),
        None => alloc::format!("{entry:#x}"),
    }
}

/// The code at the function entry `address`: the kernel function's symbol,
/// or the whole memory of the module holding it (`modules`: every loaded
/// module's memory; a replacement may call helpers of its module that would
/// otherwise not count).
pub(super) fn code_at(function: u64, address: u64, modules: &[Range<u64>]) -> Code {
    let range = if let Some(memory) = modules.iter().find(|memory| memory.contains(&address)) {
        memory.clone()
    } else {
        symbols::table().and_then(|table| table.extent(address)).unwrap_or(address..address + 4)
    };
    Code { function, range }
}

/// What the checks of one transition need.
struct Check {
    target: u64,
    /// Sorted by start, none overlapping (`disjoint`): searched by address.
    code: Vec<Code>,
    /// The loaded modules' memory, text to the walker (refreshed each round).
    modules: Vec<Range<u64>>,
}

impl Check {
    fn in_module(&self, address: u64) -> bool {
        self.modules.iter().any(|memory| memory.contains(&address))
    }

    /// Whether a thread with this walk may switch.
    fn verdict(&self, walk: Result<Vec<u64>, Unreliable>) -> Result<(), Blocker> {
        let addresses = walk.map_err(Blocker::Unreliable)?;
        for address in addresses {
            // The last range starting at or below the address is the only one that can hold it.
            let after = self.code.partition_point(|code| code.range.start <= address);
            if let Some(code) = after.checked_sub(1).map(|index| &self.code[index])
                && code.range.contains(&address)
            {
                return Err(Blocker::Function { function: function_name(code.function), address });
            }
        }
        Ok(())
    }
}

/// `code` sorted by start with overlapping ranges merged (the merged range
/// keeps the first one's function): a 100-function patch whose
/// replacements share a module, or one replacement, checks a few ranges.
fn disjoint(mut code: Vec<Code>) -> Vec<Code> {
    code.sort_unstable_by_key(|code| (code.range.start, code.range.end));
    let mut merged: Vec<Code> = Vec::with_capacity(code.len());
    for next in code {
        match merged.last_mut() {
            Some(last) if next.range.start < last.range.end => last.range.end = last.range.end.max(next.range.end),
            _ => merged.push(next),
        }
    }
    merged
}

/// Held while a thread is checked and switched, and while the transition
/// begins, reverses or ends (see the module comment).
static SWITCH: Mutex<Option<Check>> = Mutex::new(None);

/// Why a thread has not switched yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Blocker {
    /// It runs on another CPU: only it can check its stack, at its next safe point.
    Running { cpu: usize },
    /// Its stack holds code the patch changes: a return into `function` at `address`.
    Function { function: String, address: u64 },
    /// Its stack cannot be walked reliably.
    Unreliable(Unreliable),
}

/// A thread that blocks the transition, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocked {
    pub thread: u64,
    pub name: String,
    pub blocker: Blocker,
}

impl fmt::Display for Blocked {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "thread {} ({}): ", self.thread, self.name)?;
        match &self.blocker {
            Blocker::Running { cpu } => {
                write!(
                    formatter,
                    "running on CPU {cpu}; switches at its next safe point (yield, sleep, klp_safe_point)"
                )
            }
            Blocker::Function { function, address } => {
                let at = module::symbolize(*address)
                    .unwrap_or_else(|| alloc::format!("{:#x} {}", address, symbols::Symbolized(*address)));
                write!(formatter, "'{function}' is on its stack (a return to {at})")
            }
            Blocker::Unreliable(unreliable) => write!(
                formatter,
                "its stack cannot be walked reliably ({:?} at frame {:#x}, address {:#x}); retried",
                unreliable.reason, unreliable.frame, unreliable.address
            ),
        }
    }
}

/// Sets up a transition to `target`: every thread, also one spawned
/// meanwhile, gets the opposite state, and none may switch yet. Call before
/// publishing the table that marks the patch's functions; `open` once that
/// table and the functions' ftrace sites are in place.
///
/// Why two steps: enabling a patch turns its functions' sites on one by one.
/// A thread that switched before all of them were on could call new A while
/// B's site still sends every call to old B (on another CPU, while the
/// enabling thread is still turning sites on). Until `open`, a switched
/// thread cannot exist.
pub(super) fn begin(target: u64) {
    let _switch = SWITCH.lock();
    // Under the scheduler lock: a thread spawned meanwhile is either in the
    // table here, or copies its spawner's state, set here (`spawn_pinned`).
    thread::set_patch_states(opposite(target));
}

/// Lets threads switch to `target`, checking `code` (see `begin`).
pub(super) fn open(target: u64, code: Vec<Code>) {
    let modules = module::memory_ranges();
    let code = disjoint(code);
    let mut switch = SWITCH.lock();
    *switch = Some(Check { target, code, modules });
    TARGET.store(target, Ordering::Relaxed);
}

/// Adds `code` to what the transition in progress checks (a module's
/// functions joining the patch in transition as the module loads).
pub(super) fn add_code(code: Vec<Code>) {
    let mut switch = SWITCH.lock();
    if let Some(check) = switch.as_mut() {
        let mut all = core::mem::take(&mut check.code);
        all.extend(code);
        check.code = disjoint(all);
    }
}

/// Reverses the transition in progress. The threads that had switched must
/// switch back; the others are there already.
pub(super) fn reverse() {
    let mut switch = SWITCH.lock();
    let check = switch.as_mut().expect("a transition is in progress");
    check.target = opposite(check.target);
    TARGET.store(check.target, Ordering::Relaxed);
}

/// Switches every thread to the target without looking at its stack
/// (`klp force`).
pub(super) fn force() {
    let switch = SWITCH.lock();
    if let Some(check) = switch.as_ref() {
        thread::set_patch_states(check.target);
    }
}

/// Ends the transition: call once the table without marks is published
/// and its grace period has passed (no handler reads a state any more).
pub(super) fn end() {
    let mut switch = SWITCH.lock();
    *switch = None;
    TARGET.store(UNDEFINED, Ordering::Relaxed);
    thread::set_patch_states(UNDEFINED);
}

/// Tries to switch every live thread not yet in the target state; returns
/// the ones that could not switch, and why.
pub(super) fn switch_threads() -> Vec<Blocked> {
    let modules = module::memory_ranges();
    let target = {
        let mut switch = SWITCH.lock();
        let Some(check) = switch.as_mut() else { return Vec::new() };
        check.modules = modules;
        check.target
    };
    let mut blocked = Vec::new();
    for candidate in thread::patch_candidates() {
        if candidate.patch_state == target {
            continue;
        }
        let result = match candidate.place {
            Place::Caller => switch_current(),
            Place::SwitchedOut => switch_switched_out(candidate.id),
            Place::RunningOn { cpu, idle } => {
                if idle {
                    // Its idle loop checks its patch state when it wakes.
                    crate::arch::smp::send_reschedule(cpu);
                }
                Err(Blocker::Running { cpu })
            }
        };
        if let Err(blocker) = result {
            blocked.push(Blocked { thread: candidate.id, name: candidate.name, blocker });
        }
    }
    blocked
}

/// The CPUs (one bit each) of the threads waiting for the transition between
/// two rounds (`livepatch::pause_between_rounds`). A thread that switches
/// itself kicks them (`switch_current`).
pub(super) static WAITERS: AtomicU64 = AtomicU64::new(0);

/// Checks the calling thread's own stack and switches it if it is clean;
/// then kicks a waiter on another CPU, which may find the transition
/// complete now (under round-robin TCG the IPI gives it its turn at once).
pub(super) fn switch_current() -> Result<(), Blocker> {
    let switch = SWITCH.lock();
    let Some(check) = switch.as_ref() else { return Ok(()) };
    let info = crate::thread::current_thread_info();
    // Safety: the calling thread's own thread_info.
    if unsafe { (*info).patch_state } == check.target {
        return Ok(());
    }
    let graph = crate::trace::graph::return_addresses(info as u64);
    let verdict = check.verdict(walk_reliable_current(&graph, &|address| check.in_module(address)));
    if verdict.is_ok() {
        // Safety: as above; volatile, as every write other CPUs may read.
        unsafe { core::ptr::write_volatile(&raw mut (*info).patch_state, check.target) };
        let me = crate::arch::percpu::smp_processor_id();
        let waiters = WAITERS.load(Ordering::SeqCst) & !(1 << me);
        for cpu in (0..boot::MAX_CPUS).filter(|cpu| waiters & (1 << cpu) != 0) {
            crate::arch::smp::send_reschedule(cpu);
        }
    }
    verdict
}

/// Checks switched-out thread `id` and switches it if its stack is clean.
fn switch_switched_out(id: u64) -> Result<(), Blocker> {
    let switch = SWITCH.lock();
    let Some(check) = switch.as_ref() else { return Ok(()) };
    let held = thread::with_switched_out(id, |base, stack_pointer| {
        let graph = crate::trace::graph::return_addresses(base);
        let verdict = check.verdict(walk_reliable(base, stack_pointer, &graph, &|address| check.in_module(address)));
        if verdict.is_ok() {
            // Safety: a live thread's thread_info; it stays switched out
            // until the scheduler lock is released, after this store.
            unsafe { core::ptr::write_volatile(&raw mut (*(base as *mut ThreadInfo)).patch_state, check.target) };
        }
        verdict
    });
    match held {
        Ok(verdict) => verdict,
        Err(Some(cpu)) => Err(Blocker::Running { cpu }),
        // It ended: it blocks nothing.
        Err(None) => Ok(()),
    }
}
