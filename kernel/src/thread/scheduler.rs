//! The round-robin scheduler: a ready queue, sleepers, joiners, and the switch.
use super::info::{self, ThreadInfo, ThreadState};
use super::stack::Stack;
use crate::arch::context::{copy_thread, switch_context};
use crate::arch::interrupts;
use crate::arch::registers::{per_cpu_mut, timebase};
use crate::trace::graph::ReturnStack;
use crate::{println, time};
use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::string::String;
use alloc::vec::Vec;
use boot::THREAD_SIZE;
use macros::notrace;
use portable::schedule::{Switch, pick_next};
use spin::Mutex;

/// How a thread ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// Its function returned.
    Returned,
    /// The kernel ended it (BUG, Oops, stack overflow).
    Killed(&'static str),
}

/// A thread's scheduling state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Running,
    Ready,
    /// Asleep until the timebase reaches this value.
    Sleeping(u64),
    /// Waiting in `join` for another thread.
    Joining,
    Dead(ExitStatus),
}

struct Thread {
    name: String,
    state: State,
    /// None for the boot thread, whose stack is static. Owned: freed on drop.
    #[allow(dead_code)]
    stack: Option<Stack>,
    /// The function-graph tracer's return stack (thread_info points at it). Owned: freed on drop.
    #[allow(dead_code)]
    return_stack: Box<ReturnStack>,
    stack_base: u64,
    /// The thread waiting in `join` for this one.
    joiner: Option<u64>,
    /// Nobody will join: free it as soon as it is dead.
    detached: bool,
    switches: u64,
}

impl Thread {
    /// Changes the state, mirrored into thread_info for the debugger.
    /// Always inlined (a method cannot be `#[notrace]`): the scheduler's
    /// timer path calls it, and it must have no ftrace site of its own.
    #[inline(always)]
    fn set_state(&mut self, state: State) {
        self.state = state;
        let code = match state {
            State::Running => ThreadState::Running,
            State::Ready => ThreadState::Ready,
            State::Sleeping(_) => ThreadState::Sleeping,
            State::Joining => ThreadState::Joining,
            State::Dead(_) => ThreadState::Dead,
        };
        // Safety: the thread's stack (and so its thread_info) lives as long as the Thread.
        unsafe { (*(self.stack_base as *mut ThreadInfo)).state = code as u64 };
    }
}

/// Points thread_info at the thread's name, for the debugger. `name` must
/// live as long as the thread: a static string, or the `Thread`'s own `name`
/// (a `String`'s bytes stay where they are when the `String` moves).
fn set_name(info: &mut ThreadInfo, name: &str) {
    info.name_address = name.as_ptr() as u64;
    info.name_length = name.len() as u64;
}

struct Scheduler {
    threads: BTreeMap<u64, Box<Thread>>,
    ready: VecDeque<u64>,
    current: u64,
    idle: u64,
    next_id: u64,
    /// Dead detached threads whose stacks can be freed once we are off them.
    reapable: Vec<u64>,
}

impl Scheduler {
    /// The thread this CPU runs: the one place that looks `current` up.
    /// Always inlined, so it adds no ftrace site to `schedule`'s timer path.
    #[inline(always)]
    fn current_thread(&mut self) -> &mut Thread {
        self.threads.get_mut(&self.current).expect("the current thread stays in the table until reaped")
    }
}

static SCHEDULER: Mutex<Option<Scheduler>> = Mutex::new(None);

/// The boot thread's number.
pub const BOOT_THREAD: u64 = 0;

#[notrace]
fn with_scheduler<R>(action: impl FnOnce(&mut Scheduler) -> R) -> R {
    let _guard = interrupts::disable();
    let mut scheduler = SCHEDULER.lock();
    action(scheduler.as_mut().expect("threads are initialised at boot"))
}

/// Runs `action` with the scheduler lock held (interrupts off), for the
/// test of a kill taken inside the scheduler's critical section.
#[cfg(feature = "ktest")]
pub fn with_scheduler_locked(action: impl FnOnce()) {
    with_scheduler(|_| action())
}

/// Turns the boot flow into thread 0 ("main") and starts the idle thread.
pub fn init() {
    let base = boot::BOOT_STACK.0.get() as u64;
    // Safety: the boot stack is ours; its base is below everything in use.
    unsafe { info::initialise(base, BOOT_THREAD) };
    let return_stack = Box::new(ReturnStack::new());
    // Safety: as above.
    unsafe {
        let info = &mut *(base as *mut ThreadInfo);
        info.graph_stack = &*return_stack as *const ReturnStack as u64;
        info.state = 0;
        set_name(info, "main");
    }
    crate::debug::thread_created(base);
    let main = Box::new(Thread {
        name: String::from("main"),
        state: State::Running,
        stack: None,
        return_stack,
        stack_base: base,
        joiner: None,
        detached: false,
        switches: 0,
    });
    let mut threads = BTreeMap::new();
    threads.insert(BOOT_THREAD, main);
    *SCHEDULER.lock() = Some(Scheduler {
        threads,
        ready: VecDeque::new(),
        current: BOOT_THREAD,
        idle: u64::MAX,
        next_id: 1,
        reapable: Vec::new(),
    });
    // Safety: boot CPU, interrupts off.
    unsafe { (*per_cpu_mut()).current_thread = base };
    let idle = spawn("idle", idle_loop).expect("heap has room for the idle thread");
    with_scheduler(|scheduler| {
        scheduler.idle = idle.id;
        scheduler.ready.retain(|&id| id != idle.id);
        scheduler.threads.get_mut(&idle.id).expect("idle exists").detached = true;
    });
    core::mem::forget(idle);
}

fn idle_loop() {
    loop {
        interrupts::wait();
        yield_now();
    }
}

/// A thread that can be joined. Dropping it detaches the thread.
pub struct JoinHandle {
    pub id: u64,
}

impl JoinHandle {
    /// Waits for the thread to end and returns how it ended.
    pub fn join(self) -> ExitStatus {
        let id = self.id;
        core::mem::forget(self);
        loop {
            let done = with_scheduler(|scheduler| {
                let current = scheduler.current;
                let thread = scheduler.threads.get_mut(&id).expect("joined thread exists");
                if let State::Dead(status) = thread.state {
                    let thread = scheduler.threads.remove(&id).expect("exists");
                    crate::debug::thread_removed(thread.stack_base);
                    drop(thread); // frees the stack
                    return Some(status);
                }
                thread.joiner = Some(current);
                scheduler.current_thread().set_state(State::Joining);
                None
            });
            if let Some(status) = done {
                return status;
            }
            schedule();
        }
    }
}

impl Drop for JoinHandle {
    fn drop(&mut self) {
        let id = self.id;
        with_scheduler(|scheduler| {
            if let Some(thread) = scheduler.threads.get_mut(&id) {
                thread.detached = true;
                if matches!(thread.state, State::Dead(_)) && id != scheduler.current {
                    scheduler.reapable.push(id);
                }
            }
        });
        reap();
    }
}

/// Starts a thread running `function`; None if the heap has no room for its stack.
pub fn spawn<F: FnOnce() + Send + 'static>(name: &str, function: F) -> Option<JoinHandle> {
    let stack = Stack::allocate()?;
    let closure: Box<Box<dyn FnOnce()>> = Box::new(Box::new(function));
    let id = with_scheduler(|scheduler| {
        let id = scheduler.next_id;
        scheduler.next_id += 1;
        id
    });
    let return_stack = Box::new(ReturnStack::new());
    let base = stack.base();
    // Safety: the stack is new and not running.
    unsafe {
        info::initialise(stack.base(), id);
        (*(stack.base() as *mut ThreadInfo)).graph_stack = &*return_stack as *const ReturnStack as u64;
    }
    // Safety: the stack is new; the first switch to it calls thread_entry(closure).
    let saved_stack_pointer = unsafe { copy_thread(stack.top(), thread_entry, Box::into_raw(closure) as u64) };
    let name = String::from(name);
    // Safety: the new thread's own thread_info, not running yet.
    unsafe {
        let info = &mut *(stack.base() as *mut ThreadInfo);
        info.saved_stack_pointer = saved_stack_pointer;
        set_name(info, &name);
    }
    with_scheduler(|scheduler| {
        scheduler.threads.insert(
            id,
            Box::new(Thread {
                name,
                state: State::Ready,
                stack_base: stack.base(),
                stack: Some(stack),
                return_stack,
                joiner: None,
                detached: false,
                switches: 0,
            }),
        );
        scheduler.ready.push_back(id);
    });
    crate::debug::thread_created(base);
    Some(JoinHandle { id })
}

/// First Rust code of every new thread.
extern "C" fn thread_entry(closure: u64) -> ! {
    interrupts::enable();
    // Safety: `spawn` leaked exactly this box for this thread.
    let function = unsafe { Box::from_raw(closure as *mut Box<dyn FnOnce()>) };
    function();
    exit(ExitStatus::Returned)
}

/// Ends the current thread.
pub fn exit(status: ExitStatus) -> ! {
    with_scheduler(|scheduler| {
        let current = scheduler.current;
        let thread = scheduler.current_thread();
        thread.set_state(State::Dead(status));
        let (joiner, detached) = (thread.joiner.take(), thread.detached);
        if detached {
            scheduler.reapable.push(current);
        }
        if let Some(joiner) = joiner {
            make_ready(scheduler, joiner);
        }
    });
    schedule();
    unreachable!("a dead thread was scheduled")
}

/// Ends the current thread after a BUG, Oops or overflow; the boot and idle
/// threads cannot die, so there the kernel panics. Runs on the per-CPU
/// emergency stack (moving there first if need be): the thread's own stack
/// may have no room left for the message and the switch away.
#[notrace]
pub fn kill_current(reason: &'static str) -> ! {
    let kill = Kill { reason, detail: None };
    crate::arch::emergency::run(kill_on_emergency_stack, &kill as *const Kill as u64)
}

/// Why a thread is killed, and what to print about its stack first.
struct Kill {
    reason: &'static str,
    detail: Option<&'static str>,
}

#[notrace]
extern "C" fn kill_on_emergency_stack(kill: u64) -> ! {
    // Safety: a Kill in the frame of kill_current or check_current_stack,
    // which stays in place: this thread never returns there.
    let kill = unsafe { &*(kill as *const Kill) };
    let cpu = crate::arch::percpu::smp_processor_id();
    if cpu != crate::arch::percpu::BOOT_CPU {
        // Threads run on the boot CPU only: another CPU has no thread to end,
        // and must never call the scheduler (docs/ARCHITECTURE.md, "CPUs").
        panic!("{} on CPU {cpu}, which runs no threads", kill.reason);
    }
    if SCHEDULER.is_locked() {
        // One CPU, and interrupts are off while the lock is held: only the
        // context being killed can hold it (a trap inside `with_scheduler`,
        // e.g. a stack-room check in traced allocator code). Killing it would
        // wait for itself forever; end the kernel with a report instead.
        panic!("{} in thread {} while it held the scheduler lock", kill.reason, current_id());
    }
    if let Some(detail) = kill.detail {
        println!("kernel: stack of thread {} {detail}", current_id());
    }
    let (current, idle) = with_scheduler(|scheduler| (scheduler.current, scheduler.idle));
    if current == BOOT_THREAD || current == idle {
        panic!("{} in thread {current}, which cannot be killed", kill.reason);
    }
    println!("kernel: killed thread {current} ({})", kill.reason);
    // The report is over: one on another CPU need not wait for it.
    crate::console::end_report();
    exit(ExitStatus::Killed(kill.reason))
}

#[notrace]
fn make_ready(scheduler: &mut Scheduler, id: u64) {
    if let Some(thread) = scheduler.threads.get_mut(&id)
        && matches!(thread.state, State::Sleeping(_) | State::Joining)
    {
        thread.set_state(State::Ready);
        scheduler.ready.push_back(id);
    }
}

/// The running thread's number (from the per-CPU area, so that it is right
/// on the emergency stack too).
#[notrace]
pub fn current_id() -> u64 {
    let info = crate::arch::registers::per_cpu().current_thread as *const ThreadInfo;
    // Safety: per_cpu.current_thread is the running thread's stack base,
    // which holds its thread_info.
    unsafe { (*info).thread_id }
}

/// Gives the CPU to the next ready thread, if any.
pub fn yield_now() {
    schedule();
}

/// Sleeps at least `milliseconds`.
pub fn sleep_milliseconds(milliseconds: u64) {
    let until = timebase() + time::milliseconds_to_timebase(milliseconds);
    with_scheduler(|scheduler| {
        scheduler.current_thread().set_state(State::Sleeping(until));
    });
    schedule();
}

/// From the decrementer interrupt: preempt the current thread if allowed
/// (`preemptible` is false inside ftrace, see `arch::ftrace::in_ftrace`).
/// Returns false if the preemption had to be deferred.
#[notrace]
pub fn timer_tick(preemptible: bool) -> bool {
    if preemptible && super::preempt_count() == 0 {
        schedule();
        return true;
    }
    false
}

/// Makes every sleeper whose time has come ready, without allocating: this
/// runs on every tick. The current thread is never one of them: `schedule`
/// has already put it back to Running if its own sleep was over.
#[notrace]
fn wake_sleepers(scheduler: &mut Scheduler, now: u64) {
    for (&id, thread) in scheduler.threads.iter_mut() {
        if matches!(thread.state, State::Sleeping(until) if until <= now) {
            thread.set_state(State::Ready);
            scheduler.ready.push_back(id);
        }
    }
}

/// Picks the next thread and switches to it (interrupts off throughout).
/// Not traceable, like Linux's `__schedule`: the timer path runs it below an
/// exception frame, within the stack guard (docs/ARCHITECTURE.md, "The
/// exception stack budget"), and a tracer here would see every switch.
#[notrace]
pub fn schedule() {
    let _guard = interrupts::disable();
    check_current_stack();
    let switch = {
        let mut scheduler = SCHEDULER.lock();
        let scheduler = scheduler.as_mut().expect("threads are initialised at boot");
        let now = timebase();
        let current_thread = scheduler.current_thread();
        let still_runnable = match current_thread.state {
            State::Running => true,
            // The running thread is never queued, not even when its own sleep
            // is over. `sleep_milliseconds` marks it Sleeping before it calls
            // `schedule`, and its time can be up by the time this one (or a
            // tick's, taken in between) looks: a 0 ms sleep, a preemption
            // between reading the clock and the marking, a guest stalled by
            // the host for longer than the sleep. Woken like any sleeper and
            // queued, it could be picked as the next thread, and a switch from
            // a thread to itself loads its saved r1, stale while it runs (its
            // last switch away, whose frame it has overwritten since). That
            // was the end-to-end crash: the shell thread back from
            // `sleep_milliseconds` with a wrong r2 and non-volatiles and a
            // return into data, after a tick taken between the marking and
            // `schedule` (tests/registers.rs,
            // `a_thread_whose_sleep_is_over_before_it_switches_away_keeps_running_with_its_registers`).
            // It keeps the CPU instead, or goes to the tail of the queue.
            State::Sleeping(until) if until <= now => {
                current_thread.set_state(State::Running);
                true
            }
            _ => false,
        };
        wake_sleepers(scheduler, now);
        let Some(Switch { next, .. }) =
            pick_next(&mut scheduler.ready, scheduler.current, still_runnable, scheduler.idle)
        else {
            return;
        };
        let current_thread = scheduler.current_thread();
        if still_runnable {
            current_thread.set_state(State::Ready);
        }
        // Safety: every live thread's stack base holds its thread_info.
        let save: *mut u64 = unsafe { &raw mut (*(current_thread.stack_base as *mut ThreadInfo)).saved_stack_pointer };
        let next_thread = scheduler.threads.get_mut(&next).expect("a ready thread is in the table");
        next_thread.set_state(State::Running);
        next_thread.switches += 1;
        scheduler.current = next;
        // Safety: interrupts are off; this CPU's own area.
        unsafe { (*per_cpu_mut()).current_thread = next_thread.stack_base };
        // Safety: as above, for the next thread.
        (save, unsafe { (*(next_thread.stack_base as *const ThreadInfo)).saved_stack_pointer })
    };
    // Safety: both stacks belong to live threads; the saved pointer of the next
    // thread came from its own switch_context or from prepare_first_switch.
    unsafe { switch_context(switch.0, switch.1) };
    reap();
}

/// Frees the stacks of dead detached threads other than the current one.
/// Not traceable: it runs on the timer path, after the switch back.
#[notrace]
fn reap() {
    let dead: Vec<Box<Thread>> = with_scheduler(|scheduler| {
        let current = scheduler.current;
        let ids: Vec<u64> = scheduler.reapable.iter().copied().filter(|&id| id != current).collect();
        scheduler.reapable.retain(|&id| id == current);
        let dead: Vec<Box<Thread>> = ids.iter().filter_map(|id| scheduler.threads.remove(id)).collect();
        for thread in &dead {
            crate::debug::thread_removed(thread.stack_base);
        }
        dead
    });
    drop(dead);
}

/// Catches a stack that ran into its livepatch stack or thread_info, at every
/// switch away from a thread that is not already dying.
#[notrace]
fn check_current_stack() {
    let dying = with_scheduler(|scheduler| {
        matches!(scheduler.threads.get(&scheduler.current).map(|thread| thread.state), Some(State::Dead(_)))
    });
    if dying {
        return;
    }
    let base = crate::arch::registers::per_cpu().current_thread;
    let stack_pointer = crate::arch::registers::stack_pointer();
    // On the emergency stack the stack pointer lies elsewhere; only the magic word can be checked.
    let on_own_stack = super::stack_bounds(stack_pointer).0 == base;
    // Safety: the current thread's own thread_info.
    let livepatch_top = unsafe { (*(base as *const ThreadInfo)).livepatch_sp };
    let kill = if !info::magic_intact(base) {
        Kill { reason: "stack corrupted", detail: Some("corrupted: STACK_END_MAGIC overwritten") }
    } else if on_own_stack && stack_pointer < livepatch_top {
        Kill { reason: "stack overflow", detail: Some("ran into its livepatch stack") }
    } else {
        return;
    };
    // The message and the kill run on the emergency stack (see kill_current).
    crate::arch::emergency::run(kill_on_emergency_stack, &kill as *const Kill as u64)
}

/// What `threads` shows for one thread.
pub struct ThreadSummary {
    pub id: u64,
    pub name: String,
    pub state: State,
    pub switches: u64,
    pub stack_used: u64,
    pub livepatch_depth: u64,
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
                let stack_pointer = if id == scheduler.current { current_stack_pointer } else { saved };
                let top = thread.stack_base + THREAD_SIZE as u64;
                // Safety: every live thread's stack base holds its thread_info.
                let livepatch_sp = unsafe { (*(thread.stack_base as *const ThreadInfo)).livepatch_sp };
                ThreadSummary {
                    id,
                    name: thread.name.clone(),
                    state: thread.state,
                    switches: thread.switches,
                    stack_used: top.saturating_sub(stack_pointer),
                    livepatch_depth: livepatch_sp - thread.stack_base - super::LIVEPATCH_STACK_OFFSET as u64,
                }
            })
            .collect()
    })
}

/// The stack base and stack pointer of every thread that can still run: the
/// caller's own stack pointer for the current thread, the one `switch_context`
/// saved for the others. Dead threads are left out: they never run again, so whatever
/// their stacks still hold (a killed thread's livepatch frames, return
/// addresses into a module) refers to nothing in use.
pub fn live_stacks(current_stack_pointer: u64) -> Vec<(u64, u64)> {
    with_scheduler(|scheduler| {
        scheduler
            .threads
            .iter()
            .filter(|(_, thread)| !matches!(thread.state, State::Dead(_)))
            .map(|(&id, thread)| {
                // Safety: every live thread's stack base holds its thread_info.
                let saved = unsafe { (*(thread.stack_base as *const ThreadInfo)).saved_stack_pointer };
                (thread.stack_base, if id == scheduler.current { current_stack_pointer } else { saved })
            })
            .collect()
    })
}

/// Waits for a grace period, RCU style: returns once every other thread
/// that was ready to run when it was called has been switched in again
/// since, has blocked, or has ended. The idle thread is not waited for.
///
/// A thread switched out by the timer may be anywhere, including between
/// receiving a pointer and using it; after the grace period it has had a
/// time slice to finish with it. What it guarantees exactly: a value
/// published before the call (a module's memory, a table) and no longer
/// reachable for new readers is no longer used by a reader that holds it
/// across at most one preemption or yield. Callers: `module::unload`, before
/// it frees a module's memory.
pub fn synchronize() {
    let waiting: Vec<(u64, u64)> = with_scheduler(|scheduler| {
        scheduler
            .threads
            .iter()
            .filter(|&(&id, thread)| {
                id != scheduler.current && id != scheduler.idle && matches!(thread.state, State::Ready | State::Running)
            })
            .map(|(&id, thread)| (id, thread.switches))
            .collect()
    });
    loop {
        let pending = with_scheduler(|scheduler| {
            waiting.iter().any(|(id, switches)| {
                scheduler.threads.get(id).is_some_and(|thread| {
                    matches!(thread.state, State::Ready | State::Running) && thread.switches == *switches
                })
            })
        });
        if !pending {
            return;
        }
        yield_now();
    }
}
