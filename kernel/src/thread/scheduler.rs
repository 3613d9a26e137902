//! The round-robin scheduler of every CPU: one ready queue, sleepers, joiners, affinity, and the switch.
//!
//! One queue and one lock for all CPUs (docs/ARCHITECTURE.md, "CPUs"): each
//! CPU takes the first ready thread its affinity allows, and its own idle
//! thread when there is none. The lock is held across `switch_context`, from
//! the CPU that switches away to the thread it switches to, which releases it
//! (`finish_switch`, Linux's `finish_task_switch`): until the outgoing
//! thread's registers are saved, no other CPU can pick it.
use super::info::{self, ThreadInfo, ThreadState};
use super::stack::Stack;
use crate::arch::context::{copy_thread, switch_context};
use crate::arch::interrupts;
use crate::arch::percpu::{online_cpus, smp_processor_id};
use crate::arch::registers::{per_cpu_mut, timebase};
use crate::arch::smp;
use crate::trace::graph::ReturnStack;
use crate::{println, time};
use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::string::String;
use alloc::vec::Vec;
use boot::MAX_CPUS;
use core::sync::atomic::{AtomicUsize, Ordering};
use macros::notrace;
use portable::cpuset::CpuSet;
use portable::schedule::{Queued, Switch, pick_next};
use spin::Mutex;

mod affinity;
mod grace;
mod idle;
mod inspect;
mod patch_state;

pub use affinity::{AffinityError, set_affinity};
pub use grace::synchronize;
pub use idle::{add_idle, remove_idle};
pub use inspect::{LiveStack, current_is_idle, live_stacks, running_on, snapshot};
pub use patch_state::{Place, patch_candidates, set_patch_states, with_switched_out};

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
    /// Times it was switched in.
    switches: u64,
    /// Times it passed through `schedule`, switched out or not: a point
    /// where it held nothing across (`synchronize`).
    passes: u64,
    /// The CPU it runs on now; None while it is not running.
    running_on: Option<usize>,
    /// The CPU it ran on last (or runs on).
    last_cpu: usize,
    /// The one CPU it may run on; None: any.
    affinity: Option<usize>,
    /// Asleep in `sleep_interruptible`: `wake_interruptible` may end the
    /// sleep early (a livepatch transition's fake signal).
    interruptible: bool,
}

impl Thread {
    /// A thread record with its stack at `stack_base` (owned when `stack` is
    /// Some), in `state`, on no CPU yet, free to run anywhere, not detached:
    /// callers change what differs with `..Thread::new(..)`.
    fn new(
        name: String,
        state: State,
        stack: Option<Stack>,
        stack_base: u64,
        return_stack: Box<ReturnStack>,
    ) -> Thread {
        Thread {
            name,
            state,
            stack,
            return_stack,
            stack_base,
            joiner: None,
            detached: false,
            switches: 0,
            passes: 0,
            running_on: None,
            last_cpu: smp_processor_id(),
            affinity: None,
            interruptible: false,
        }
    }

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

/// `idle` of a CPU that has no idle thread (not started).
const NO_THREAD: u64 = u64::MAX;

struct Scheduler {
    threads: BTreeMap<u64, Box<Thread>>,
    /// Ready threads in arrival order, with their affinity; never one that is running.
    ready: VecDeque<Queued>,
    /// The thread each CPU runs.
    current: [u64; MAX_CPUS],
    /// Each CPU's idle thread (pinned to it), NO_THREAD before it starts.
    idle: [u64; MAX_CPUS],
    /// The CPUs running their idle thread now: where `kick` sends a thread.
    idling: CpuSet,
    next_id: u64,
    /// Dead detached threads whose stacks can be freed once no CPU is on them.
    reapable: Vec<u64>,
}

impl Scheduler {
    /// The thread this CPU runs: the one place that looks `current` up.
    /// Always inlined, so it adds no ftrace site to `schedule`'s timer path.
    #[inline(always)]
    fn current_thread(&mut self) -> &mut Thread {
        let current = self.current[smp_processor_id()];
        self.threads.get_mut(&current).expect("the current thread stays in the table until reaped")
    }

    /// This CPU's current thread's number.
    #[inline(always)]
    fn current_id(&self) -> u64 {
        self.current[smp_processor_id()]
    }

    /// Whether `id` is some CPU's idle thread.
    #[inline(always)]
    fn is_idle(&self, id: u64) -> bool {
        self.idle.contains(&id)
    }

    /// Wakes a CPU that idles and may run `queued` (now in the queue): its
    /// affinity CPU, or the first idle one other than this CPU, with a
    /// reschedule IPI. A busy CPU is not interrupted: it takes the thread at
    /// its next switch (round robin has no priorities to preempt for).
    #[inline(always)]
    fn kick(&self, queued: Queued) {
        kick_idle(self.idling, queued);
    }

    /// Queues thread `id` (ready, not running) and wakes an idle CPU for it.
    #[inline(always)]
    fn enqueue(&mut self, id: u64) {
        let affinity = self.threads.get(&id).and_then(|thread| thread.affinity);
        let queued = Queued { id, affinity };
        self.ready.push_back(queued);
        self.kick(queued);
    }
}

/// `Scheduler::kick` on its `idling` set alone (for a caller that is walking
/// the thread table).
#[notrace]
#[inline(always)]
fn kick_idle(idling: CpuSet, queued: Queued) -> Option<usize> {
    let candidates = idling.without(smp_processor_id());
    if candidates.is_empty() {
        return None;
    }
    let target = match queued.affinity {
        Some(cpu) => candidates.contains(cpu).then_some(cpu),
        None => candidates.intersection(online_cpus()).iter().next(),
    }?;
    smp::send_reschedule(target);
    Some(target)
}

/// The scheduler's state, for every CPU. Taken with interrupts off, held
/// across a switch (see the module's comment).
static SCHEDULER: Mutex<Option<Scheduler>> = Mutex::new(None);
/// The CPU holding `SCHEDULER`, plus one; 0 when it is free. Tells a kill on
/// the emergency stack whether its own CPU holds the lock (it would wait for
/// itself) or another one (it will let go).
static OWNER: AtomicUsize = AtomicUsize::new(0);
/// `Scheduler::reapable`'s length, written under the lock: `reap` looks at
/// it first and takes the lock only when there is a stack to free.
static REAPABLE: AtomicUsize = AtomicUsize::new(0);

/// Takes the scheduler lock (interrupts must be off), conferring the CPU to
/// the holder between tries (`smp::confer`): under QEMU's round-robin TCG a
/// spinning vCPU would hold off the one that holds the lock.
#[notrace]
#[inline(always)]
fn lock() -> spin::MutexGuard<'static, Option<Scheduler>> {
    let guard = crate::sync::acquire(&SCHEDULER);
    OWNER.store(smp_processor_id() + 1, Ordering::Relaxed);
    guard
}

/// Releases the scheduler lock.
#[notrace]
#[inline(always)]
fn unlock(guard: spin::MutexGuard<'static, Option<Scheduler>>) {
    OWNER.store(0, Ordering::Relaxed);
    drop(guard);
}

/// The second half of a switch, in the thread switched to: releases the
/// lock its CPU took in `schedule` before `switch_context`.
#[notrace]
#[inline(always)]
fn finish_switch() {
    OWNER.store(0, Ordering::Relaxed);
    // Safety: this CPU took the lock in `schedule` and kept it across the
    // switch (forgetting its guard) for this moment.
    unsafe { SCHEDULER.force_unlock() };
}

/// The boot thread's number.
pub const BOOT_THREAD: u64 = 0;

#[notrace]
fn with_scheduler<R>(action: impl FnOnce(&mut Scheduler) -> R) -> R {
    let _guard = interrupts::disable();
    let mut scheduler = lock();
    let result = action(scheduler.as_mut().expect("threads are initialised at boot"));
    unlock(scheduler);
    result
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
        running_on: Some(smp_processor_id()),
        ..Thread::new(String::from("main"), State::Running, None, base, return_stack)
    });
    let mut threads = BTreeMap::new();
    threads.insert(BOOT_THREAD, main);
    let mut current = [NO_THREAD; MAX_CPUS];
    current[smp_processor_id()] = BOOT_THREAD;
    *SCHEDULER.lock() = Some(Scheduler {
        threads,
        ready: VecDeque::new(),
        current,
        idle: [NO_THREAD; MAX_CPUS],
        idling: CpuSet::EMPTY,
        next_id: 1,
        reapable: Vec::new(),
    });
    // Safety: boot CPU, interrupts off.
    unsafe { (*per_cpu_mut()).current_thread = base };
    let idle =
        spawn_pinned("idle", Some(smp_processor_id()), idle::idle_loop).expect("heap has room for the idle thread");
    with_scheduler(|scheduler| {
        scheduler.idle[smp_processor_id()] = idle.id;
        scheduler.ready.retain(|queued| queued.id != idle.id);
        scheduler.threads.get_mut(&idle.id).expect("idle exists").detached = true;
    });
    core::mem::forget(idle);
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
        crate::livepatch::safe_point();
        loop {
            // Interrupts stay off from the marking (Joining) to the switch.
            let _asleep = asleep_until_switched();
            let done = with_scheduler(|scheduler| {
                let current = scheduler.current_id();
                let thread = scheduler.threads.get_mut(&id).expect("joined thread exists");
                if let State::Dead(status) = thread.state {
                    if thread.running_on.is_some() {
                        // Dead, but its CPU is still switching away from its
                        // stack: try again once it is off (the switch holds
                        // the lock, so that is the next time we get it).
                        return Some(None);
                    }
                    let thread = scheduler.threads.remove(&id).expect("exists");
                    crate::debug::thread_removed(thread.stack_base);
                    drop(thread); // frees the stack
                    return Some(Some(status));
                }
                thread.joiner = Some(current);
                scheduler.current_thread().set_state(State::Joining);
                None
            });
            match done {
                Some(Some(status)) => return status,
                Some(None) => yield_now(),
                None => schedule(),
            }
        }
    }
}

impl Drop for JoinHandle {
    fn drop(&mut self) {
        let id = self.id;
        with_scheduler(|scheduler| {
            if let Some(thread) = scheduler.threads.get_mut(&id) {
                thread.detached = true;
                if matches!(thread.state, State::Dead(_)) {
                    scheduler.reapable.push(id);
                    REAPABLE.store(scheduler.reapable.len(), Ordering::Relaxed);
                }
            }
        });
        reap();
    }
}

/// Starts a thread running `function` on any CPU; None if the heap has no room for its stack.
pub fn spawn<F: FnOnce() + Send + 'static>(name: &str, function: F) -> Option<JoinHandle> {
    spawn_pinned(name, None, function)
}

/// Starts a thread running `function` on CPU `cpu` only (until moved with
/// `set_affinity`); None if the heap has no room for its stack or `cpu` is
/// not online. (The kernel's own threads run anywhere; tests pin theirs.)
#[cfg_attr(not(feature = "ktest"), allow(dead_code))]
pub fn spawn_on<F: FnOnce() + Send + 'static>(cpu: usize, name: &str, function: F) -> Option<JoinHandle> {
    if !online_cpus().contains(cpu) {
        return None;
    }
    spawn_pinned(name, Some(cpu), function)
}

fn spawn_pinned<F: FnOnce() + Send + 'static>(name: &str, affinity: Option<usize>, function: F) -> Option<JoinHandle> {
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
    // Listed for the debugger before it can run (and end) on another CPU.
    crate::debug::thread_created(base);
    with_scheduler(|scheduler| {
        // A new thread takes its spawner's patch state, as Linux's
        // `klp_copy_process` does: its closure is the spawner's code, with the
        // spawner's view of what a transition in progress has switched; it
        // switches at its first safe point. Read under the lock, which a
        // transition also takes to set every thread's state: the new thread
        // is either in the table then, or copies a state set since.
        // Safety: the spawner's own thread_info, and the new thread's, not running yet.
        unsafe {
            (*(base as *mut ThreadInfo)).patch_state =
                core::ptr::read_volatile(&raw const (*crate::thread::current_thread_info()).patch_state)
        };
        scheduler.threads.insert(
            id,
            Box::new(Thread {
                last_cpu: affinity.unwrap_or(smp_processor_id()),
                affinity,
                ..Thread::new(name, State::Ready, Some(stack), base, return_stack)
            }),
        );
        // Room for every thread in the queue, so that queueing on the timer
        // path (`wake_sleepers`) never allocates.
        let room = scheduler.threads.len().saturating_sub(scheduler.ready.len());
        scheduler.ready.reserve(room);
        scheduler.enqueue(id);
    });
    Some(JoinHandle { id })
}

/// First Rust code of every new thread.
extern "C" fn thread_entry(closure: u64) -> ! {
    // The first switch to this thread ends here, not in `schedule`.
    finish_switch();
    interrupts::enable();
    // Safety: `spawn` leaked exactly this box for this thread.
    let function = unsafe { Box::from_raw(closure as *mut Box<dyn FnOnce()>) };
    function();
    exit(ExitStatus::Returned)
}

/// Ends the current thread.
pub fn exit(status: ExitStatus) -> ! {
    with_scheduler(|scheduler| {
        let current = scheduler.current_id();
        let thread = scheduler.current_thread();
        thread.set_state(State::Dead(status));
        let (joiner, detached) = (thread.joiner.take(), thread.detached);
        if detached {
            scheduler.reapable.push(current);
            REAPABLE.store(scheduler.reapable.len(), Ordering::Relaxed);
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
    if OWNER.load(Ordering::Relaxed) == smp_processor_id() + 1 {
        // Interrupts are off while the lock is held, so on this CPU only the
        // context being killed can hold it (a trap inside `with_scheduler`,
        // e.g. a stack-room check in traced allocator code). Killing it would
        // wait for itself forever; end the kernel with a report instead.
        // (Another CPU holding it lets go soon: that is an ordinary wait.)
        panic!("{} in thread {} while it held the scheduler lock", kill.reason, current_id());
    }
    if let Some(detail) = kill.detail {
        println!("kernel: stack of thread {} {detail}", current_id());
    }
    let (current, idle) =
        with_scheduler(|scheduler| (scheduler.current_id(), scheduler.is_idle(scheduler.current_id())));
    if current == BOOT_THREAD || idle {
        panic!("{} in thread {current}, which cannot be killed", kill.reason);
    }
    println!("kernel: killed thread {current} ({})", kill.reason);
    // The report is over: one on another CPU need not wait for it.
    crate::console::end_report();
    exit(ExitStatus::Killed(kill.reason))
}

/// Wakes a sleeping or joining thread.
#[notrace]
fn make_ready(scheduler: &mut Scheduler, id: u64) {
    let idling = scheduler.idling;
    if let Some(thread) = scheduler.threads.get_mut(&id)
        && matches!(thread.state, State::Sleeping(_) | State::Joining)
    {
        wake(thread, id, &mut scheduler.ready, idling);
    }
}

/// Wakes `thread` (number `id`), which slept or joined. One that is still
/// running (on another CPU, between marking itself and its `schedule`) is
/// marked running again and never queued: queued, another CPU could switch
/// to it while it runs. Any other is queued, and a CPU of `idling` it may
/// run on is woken; returns that CPU. Takes the scheduler's fields apart, so
/// that `wake_sleepers` can call it while it walks the thread table.
#[notrace]
#[inline(always)]
fn wake(thread: &mut Thread, id: u64, ready: &mut VecDeque<Queued>, idling: CpuSet) -> Option<usize> {
    thread.interruptible = false;
    if thread.running_on.is_some() {
        thread.set_state(State::Running);
        return None;
    }
    thread.set_state(State::Ready);
    let queued = Queued { id, affinity: thread.affinity };
    ready.push_back(queued);
    kick_idle(idling, queued)
}

/// The running thread's number (from the per-CPU area, so that it is right
/// on the emergency stack too).
#[notrace]
pub fn current_id() -> u64 {
    // Interrupts off between reading r13 and loading through it: a thread
    // preempted there and moved to another CPU would read that CPU's area.
    let _off = interrupts::disable();
    let info = crate::arch::registers::per_cpu().current_thread as *const ThreadInfo;
    // Safety: per_cpu.current_thread is the running thread's stack base,
    // which holds its thread_info.
    unsafe { (*info).thread_id }
}

/// Gives the CPU to the next ready thread, if any.
pub fn yield_now() {
    crate::livepatch::safe_point();
    schedule();
}

/// Sleeps at least `milliseconds`.
pub fn sleep_milliseconds(milliseconds: u64) {
    crate::livepatch::safe_point();
    let until = timebase() + time::milliseconds_to_timebase(milliseconds);
    // Interrupts stay off from the marking to the switch (see `asleep_until_switched`).
    let _asleep = asleep_until_switched();
    with_scheduler(|scheduler| {
        scheduler.current_thread().set_state(State::Sleeping(until));
    });
    schedule();
}

/// Keeps interrupts off from a thread's marking itself asleep (sleeping,
/// joining) until its own `schedule` has switched it away and back. A tick
/// taken in between would switch it away from the timer path instead, its
/// state saying asleep: it would then sleep below the tick's exception
/// frame, and no livepatch transition could walk its stack for its whole
/// sleep or join (Linux keeps a preempted task runnable instead, and it goes
/// to sleep through its own `schedule`). A tick due meanwhile stays pending
/// on this CPU and is taken as soon as interrupts are on again there: by the
/// next thread to run, as its own `schedule` returns (it may lose the rest
/// of a time slice it has not begun; the window is a few hundred
/// instructions). `exit` needs no such care: a dead thread never resumes,
/// and transitions do not look at it.
fn asleep_until_switched() -> interrupts::InterruptGuard {
    interrupts::disable()
}

/// Sleeps at least `milliseconds`, unless `wake_interruptible` ends the
/// sleep early; returns whether it did. For code that can cope with an early
/// return: a livepatch transition wakes the threads asleep this way that
/// block it (Linux's fake signal), so that they leave the function it changes.
pub fn sleep_interruptible(milliseconds: u64) -> bool {
    crate::livepatch::safe_point();
    let until = timebase() + time::milliseconds_to_timebase(milliseconds);
    let asleep = asleep_until_switched();
    with_scheduler(|scheduler| {
        let thread = scheduler.current_thread();
        thread.set_state(State::Sleeping(until));
        thread.interruptible = true;
    });
    schedule();
    drop(asleep);
    with_scheduler(|scheduler| scheduler.current_thread().interruptible = false);
    timebase() < until
}

/// `sleep_interruptible` as a tick left it before `asleep_until_switched`
/// closed the window: taken after the thread marked itself asleep and
/// before its `schedule`, the tick's `schedule` found it Sleeping and
/// switched it away below an exception frame (its stack then cannot be
/// walked reliably). Here interrupts stay on and the tick is waited for:
/// tests of the fake signal (tests/consistency.rs), which wakes such a
/// sleeper too.
#[cfg(feature = "ktest")]
pub fn sleep_interruptible_switched_out_by_a_tick(milliseconds: u64) -> bool {
    crate::livepatch::safe_point();
    let until = timebase() + time::milliseconds_to_timebase(milliseconds);
    with_scheduler(|scheduler| {
        let thread = scheduler.current_thread();
        thread.set_state(State::Sleeping(until));
        thread.interruptible = true;
    });
    // The next tick on this CPU that may preempt switches it away (nothing
    // here holds a lock, disables preemption or runs inside ftrace; a tick
    // that must defer its preemption leaves it spinning for the next one);
    // it comes back here when woken, or when its time is up (Running again).
    while with_scheduler(|scheduler| matches!(scheduler.current_thread().state, State::Sleeping(_))) {
        core::hint::spin_loop();
    }
    with_scheduler(|scheduler| scheduler.current_thread().interruptible = false);
    timebase() < until
}

/// Ends the sleep of thread `id` if it sleeps in `sleep_interruptible`;
/// returns whether it did.
pub fn wake_interruptible(id: u64) -> bool {
    with_scheduler(|scheduler| {
        let idling = scheduler.idling;
        match scheduler.threads.get_mut(&id) {
            Some(thread) if thread.interruptible && matches!(thread.state, State::Sleeping(_)) => {
                wake(thread, id, &mut scheduler.ready, idling);
                true
            }
            _ => false,
        }
    })
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

/// Makes every sleeper whose time has come ready, without allocating (the
/// queue has room for every thread: `spawn_pinned` reserves it): this runs
/// on every tick. The current thread is never one of them: `schedule`
/// has already put it back to Running if its own sleep was over.
#[notrace]
fn wake_sleepers(scheduler: &mut Scheduler, now: u64) {
    // Each idle CPU is woken for one thread: the next one woken goes to another.
    let mut idling = scheduler.idling;
    for (&id, thread) in scheduler.threads.iter_mut() {
        if matches!(thread.state, State::Sleeping(until) if until <= now)
            && let Some(cpu) = wake(thread, id, &mut scheduler.ready, idling)
        {
            idling = idling.without(cpu);
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
    let cpu = smp_processor_id();
    let mut locked = lock();
    let scheduler = locked.as_mut().expect("threads are initialised at boot");
    let now = timebase();
    let current_thread = scheduler.current_thread();
    current_thread.passes += 1;
    let affinity = current_thread.affinity;
    let still_runnable = match current_thread.state {
        State::Running => true,
        // The running thread is never queued, not even when its own sleep
        // is over. `sleep_milliseconds` marks it Sleeping before it calls
        // `schedule`, and its time can be up by the time this one looks (a
        // tick's can no longer come in between: `asleep_until_switched`):
        // a 0 ms sleep, a preemption
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
        // (Other CPUs' `wake_sleepers` and `make_ready` mark it Running
        // instead of queueing it, for the same reason.)
        State::Sleeping(until) if until <= now => {
            current_thread.set_state(State::Running);
            true
        }
        // A thread marks itself asleep with interrupts off until its own
        // `schedule` (`asleep_until_switched`), so a tick's `schedule` never
        // finds one asleep: it would take it off the CPU below the tick's
        // exception frame, where Linux's preemption keeps a task runnable
        // (`__schedule(SM_PREEMPT)`). Keeping it runnable here would need an
        // on-queue flag apart from `state`: `wake_sleepers`, `make_ready` and
        // `wake_interruptible` would otherwise queue it a second time.
        _ => false,
    };
    crate::sync::note_quiescent_state();
    wake_sleepers(scheduler, now);
    let current = scheduler.current[cpu];
    let current_queued = Queued { id: current, affinity };
    let Some(Switch { next, requeue_current }) =
        pick_next(&mut scheduler.ready, current_queued, still_runnable, scheduler.idle[cpu], cpu)
    else {
        unlock(locked);
        return;
    };
    let current_thread = scheduler.current_thread();
    if still_runnable {
        current_thread.set_state(State::Ready);
    }
    current_thread.running_on = None;
    // Safety: every live thread's stack base holds its thread_info.
    let save: *mut u64 = unsafe { &raw mut (*(current_thread.stack_base as *mut ThreadInfo)).saved_stack_pointer };
    if requeue_current {
        // At the queue's tail: an idle CPU it may run on takes it.
        scheduler.kick(current_queued);
    }
    let next_thread = scheduler.threads.get_mut(&next).expect("a ready thread is in the table");
    next_thread.set_state(State::Running);
    next_thread.switches += 1;
    next_thread.running_on = Some(cpu);
    next_thread.last_cpu = cpu;
    let next_base = next_thread.stack_base;
    scheduler.current[cpu] = next;
    scheduler.idling =
        if next == scheduler.idle[cpu] { scheduler.idling.with(cpu) } else { scheduler.idling.without(cpu) };
    // This CPU is no longer inside its idle thread's cede, if it was (a tick taken there).
    smp::leave_cede();
    // Safety: every live thread's stack base holds its thread_info; this
    // CPU's own area, interrupts off.
    let resume = unsafe {
        (*(next_base as *mut ThreadInfo)).cpu = cpu as u64;
        (*per_cpu_mut()).current_thread = next_base;
        (*(next_base as *const ThreadInfo)).saved_stack_pointer
    };
    // The lock stays held across the switch: until `switch_context` has
    // stored this thread's registers and r1, another CPU that picked it
    // from the queue would resume it from its previous switch. The thread
    // switched to releases it (`finish_switch`, here or in `thread_entry`).
    core::mem::forget(locked);
    // Safety: both stacks belong to live threads; the saved pointer of the next
    // thread came from its own switch_context or from prepare_first_switch.
    unsafe { switch_context(save, resume) };
    finish_switch();
    reap();
}

/// Frees the stacks of dead detached threads other than the current one.
/// Not traceable: it runs on the timer path, after the switch back.
#[notrace]
fn reap() {
    if REAPABLE.load(Ordering::Relaxed) == 0 {
        // Nothing to free (a stale 0 only leaves a thread for the next switch).
        return;
    }
    let dead: Vec<Box<Thread>> = with_scheduler(|scheduler| {
        // A dead thread whose CPU is still switching away from it stays.
        let threads = &scheduler.threads;
        let off_cpu = |id: &u64| threads.get(id).is_none_or(|thread| thread.running_on.is_none());
        let ids: Vec<u64> = scheduler.reapable.iter().copied().filter(off_cpu).collect();
        scheduler.reapable.retain(|id| !ids.contains(id));
        REAPABLE.store(scheduler.reapable.len(), Ordering::Relaxed);
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
    let base = crate::arch::registers::per_cpu().current_thread;
    // Its own state, without the lock: only the thread itself marks itself
    // dead (`exit`); other CPUs change a thread's state only from sleeping
    // or joining to ready or running.
    // Safety: the current thread's thread_info.
    if unsafe { (*(base as *const ThreadInfo)).state } == ThreadState::Dead as u64 {
        return;
    }
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
