//! The other CPUs: starting them (RTAS start-cpu), IPIs (reschedule, `smp_call_function`), `stop_machine`, and the context synchronisation after text patching.
//!
//! Every CPU runs threads (docs/ARCHITECTURE.md, "CPUs"): a secondary CPU
//! starts on the stack of its idle thread and enters the scheduler's idle
//! loop (`crate::arch::secondary_idle`). Everything here is `#[notrace]`: it
//! runs in IPI handlers, and under the text changes it completes.
//!
//! Waiting for another CPU never spins: under QEMU's round-robin TCG
//! (`-icount`) a spinning CPU starves the one it waits for. Every wait is
//! "interrupts off; test; H_CEDE" (`wait_until`), woken by an IPI from the
//! CPU that made the condition true, with the decrementer as a backstop.
use super::exceptions::PtRegs;
use super::interrupts;
use super::percpu::{BOOT_CPU, area, area_mut, mark_online, online_cpus, smp_processor_id};
use super::registers::{per_cpu, set_decrementer, toc_pointer};
use super::xics;
use boot::{MAX_CPUS, MINIMAL_FRAME, THREAD_SIZE};
use core::sync::atomic::{AtomicU32, Ordering, fence};
use macros::notrace;
use portable::cpuset::CpuSet;
use spin::Mutex;

/// Serialises callers of `smp_call_function`: each mailbox has one sender at a time.
static SENDER: Mutex<()> = Mutex::new(());

/// Timebase ticks until a secondary CPU's first decrementer interrupt (then
/// the periodic tick re-arms it), set before the first CPU starts.
static BACKSTOP_TICKS: AtomicU32 = AtomicU32::new(u32::MAX >> 1);

/// The boot CPU joins: records its interrupt server, opens its priority to
/// every interrupt (or it never takes an IPI) and marks itself online.
#[notrace]
pub fn boot_cpu_online(interrupt_server: u32, backstop_ticks: u32) {
    BACKSTOP_TICKS.store(backstop_ticks, Ordering::Relaxed);
    // Safety: the boot CPU's own area, interrupts off at boot.
    unsafe { (*super::registers::per_cpu_mut()).interrupt_server = interrupt_server.into() };
    xics::set_priority(xics::LEAST_FAVOURED);
    mark_online();
}

/// Why a CPU was not started. No `Debug`: a derived one would be a traced
/// function in this module, which is all untraced (`kernel::smp` prints it).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum StartError {
    /// The tree has no RTAS `start-cpu` token.
    NoStartToken,
    /// Its number is past `MAX_CPUS`, or it is the boot CPU.
    BadNumber,
    /// RTAS `start-cpu` failed with this status.
    Rtas(i32),
}

/// Starts CPU `cpu` (interrupt server `server`) at `boot::secondary_start`:
/// fills its per-CPU area (the kernel TOC, its number and server, its idle
/// stack at `idle_base`, whose `thread_info` must be ready, and its emergency
/// stack at `emergency_base`), then calls RTAS start-cpu. The CPU marks
/// itself online (`online_cpus`) and wakes the boot CPU once it runs.
///
/// # Safety
/// Boot CPU, once per CPU; both stacks are THREAD_SIZE blocks owned by that
/// CPU from now on.
pub unsafe fn start(cpu: usize, server: u32, idle_base: u64, emergency_base: u64) -> Result<(), StartError> {
    if cpu == BOOT_CPU || cpu >= MAX_CPUS {
        return Err(StartError::BadNumber);
    }
    // Safety: the CPU is not running; only the boot CPU writes its area.
    unsafe {
        let target = area_mut(cpu);
        (*target).toc = toc_pointer();
        (*target).cpu_id = cpu as u64;
        (*target).current_thread = idle_base;
        (*target).emergency_stack = emergency_base + THREAD_SIZE as u64 - MINIMAL_FRAME as u64;
        (*target).stack_end_magic = per_cpu().stack_end_magic;
        (*target).interrupt_server = server.into();
    }
    // Every store above is visible before the CPU runs (RTAS is a hypervisor call).
    fence(Ordering::SeqCst);
    let entry = boot::secondary_start as *const () as u64;
    match super::rtas::start_cpu(server, entry, cpu as u32) {
        None => Err(StartError::NoStartToken),
        Some(0) => Ok(()),
        Some(status) => Err(StartError::Rtas(status)),
    }
}

/// The first Rust code of a secondary CPU, called by `boot::secondary_start`
/// on its idle stack with r13 at its area and interrupts off.
#[notrace]
#[unsafe(no_mangle)]
pub extern "C" fn secondary_main(cpu: u64) -> ! {
    // The entry's contract: r13 is this CPU's own area.
    assert_eq!(smp_processor_id() as u64, cpu, "secondary_start set r13 to another CPU's area");
    xics::set_priority(xics::LEAST_FAVOURED);
    set_decrementer(BACKSTOP_TICKS.load(Ordering::Relaxed));
    mark_online();
    // The boot CPU waits (ceded) for every started CPU to come online: the
    // mark visible before the wake-up (as in `smp_call_function`).
    fence(Ordering::SeqCst);
    xics::send_ipi(area(BOOT_CPU).interrupt_server);
    // Safety: the link-time contract of `crate::arch::secondary_idle`: on
    // this CPU's idle stack, online, interrupts off.
    unsafe { crate::arch::secondary_idle() }
}

/// The idle thread's wait: H_CEDE until an interrupt, marked ceded for the
/// `cpus` command. Called with
/// interrupts off after the test for work, so a wake-up raised since is
/// pending and H_CEDE returns at once. A tick taken inside the cede may
/// switch to another thread before the mark is cleared here: the scheduler
/// clears it at every switch (`leave_cede`). (The unload scan does not go by
/// the mark: it tells a ceded context by its NIP, `interrupts::ceded_at`.)
#[notrace]
pub fn idle_wait() {
    let statistics = &per_cpu().statistics;
    statistics.ceded.store(1, Ordering::Relaxed);
    interrupts::wait();
    statistics.ceded.store(0, Ordering::Relaxed);
}

/// Clears this CPU's ceded mark: called at every switch, so that it is set
/// only while the idle thread itself is inside `idle_wait`.
#[notrace]
#[inline(always)]
pub fn leave_cede() {
    per_cpu().statistics.ceded.store(0, Ordering::Relaxed);
}

/// Wakes CPU `cpu` from its idle wait to look at the ready queue (a bare
/// IPI: its handler finds no call and returns into the idle loop). The
/// caller's stores (the queued thread) are visible first (full barrier, as
/// in `smp_call_function`).
#[notrace]
pub fn send_reschedule(cpu: usize) {
    fence(Ordering::SeqCst);
    xics::send_ipi(area(cpu).interrupt_server);
}

/// The external interrupt (0x500), on any CPU, interrupts off: accepts one
/// interrupt; for an IPI, lowers it first (so that one raised while the
/// calls run is taken again), runs any posted call, and ends it. Returns the
/// source of an interrupt that is not an IPI (after ending it): no device
/// interrupt is enabled, so the caller reports it.
#[notrace]
pub fn external_interrupt(registers: &PtRegs) -> Result<(), u32> {
    let xirr = xics::accept();
    let result = match xirr.source() {
        0 => Ok(()),
        xics::IPI_SOURCE => {
            let area = per_cpu();
            xics::clear_ipi(area.interrupt_server);
            // A full barrier between lowering the IPI and reading the
            // mailbox (Linux's mb after clearing the message): a call posted
            // after our read raises the IPI again, one posted before is seen.
            fence(Ordering::SeqCst);
            area.statistics.ipis.fetch_add(1, Ordering::Relaxed);
            if call_posted() {
                area.interrupted_registers.store(registers as *const PtRegs as u64, Ordering::Release);
                run_posted_call();
                area.interrupted_registers.store(0, Ordering::Release);
            }
            Ok(())
        }
        source => Err(source),
    };
    if xirr.source() != 0 {
        xics::end(xirr);
    }
    result
}

/// Whether a call waits in this CPU's mailbox.
#[notrace]
#[inline(always)]
fn call_posted() -> bool {
    let mailbox = &per_cpu().mailbox;
    mailbox.posted.load(Ordering::Acquire) != mailbox.completed.load(Ordering::Relaxed)
}

/// Runs the call posted to this CPU, marks it completed, and wakes its caller.
/// Interrupts are off.
#[notrace]
fn run_posted_call() {
    let own = per_cpu();
    let mailbox = &own.mailbox;
    let posted = mailbox.posted.load(Ordering::Acquire);
    let function = mailbox.function.load(Ordering::Relaxed);
    let argument = mailbox.argument.load(Ordering::Relaxed);
    let caller = mailbox.caller.load(Ordering::Relaxed) as usize;
    // Safety: `smp_call_function` stored a `fn(u64)` here before it
    // published `posted` (release; acquired above).
    let function: fn(u64) = unsafe { core::mem::transmute::<u64, fn(u64)>(function) };
    function(argument);
    own.statistics.calls.fetch_add(1, Ordering::Relaxed);
    mailbox.completed.store(posted, Ordering::Release);
    // `completed` visible before the caller takes the wake-up (as in `smp_call_function`).
    fence(Ordering::SeqCst);
    xics::send_ipi(area(caller).interrupt_server);
}

/// Gives the rest of this CPU's time slice to the other CPUs (H_CONFER to
/// all), interrupts left as they are: the pause of a wait that may not take
/// interrupts (a report waiting for another CPU's console output), where
/// `wait_until`'s H_CEDE would enable them. Under QEMU's round-robin TCG the
/// next CPU runs at once, so a loop of these does not starve the CPU it waits for.
#[notrace]
pub fn confer() {
    super::hcall::hcall(super::hcall::CONFER, [u64::MAX, 0, 0, 0, 0, 0]);
}

/// Waits until `condition` holds, without spinning: interrupts off, test,
/// H_CEDE (which enables interrupts until one is taken), off again, test
/// again. Whoever makes the condition true must send this CPU an IPI; the
/// decrementer bounds the wait if it does not. Interrupts are as they were
/// on return (off again after each cede, the caller's state restored at the
/// end), but interrupt handlers do run during the wait: the caller must not
/// hold a lock that one of them takes.
#[notrace]
pub fn wait_until(mut condition: impl FnMut() -> bool) {
    let _caller_state = interrupts::disable();
    while !condition() {
        ceded_pause();
    }
}

/// H_CEDE, returning with interrupts off (`interrupts::wait`): the pause of
/// a wait, with the caller's interrupt state kept by its own guard.
#[notrace]
#[inline(always)]
fn ceded_pause() {
    interrupts::wait();
}

/// The registers the running IPI handler interrupted, for a function
/// `smp_call_function` runs (None outside one).
#[notrace]
pub fn interrupted_registers() -> Option<&'static PtRegs> {
    let address = per_cpu().interrupted_registers.load(Ordering::Acquire);
    // Safety: set by `external_interrupt` to its caller's PtRegs for as long as the call runs.
    (address != 0).then(|| unsafe { &*(address as *const PtRegs) })
}

/// Runs `function(argument)` once on every online CPU of `cpus` but the
/// calling one, each in its IPI handler (interrupts off; a ceded CPU is woken
/// by the IPI); with `wait`, returns once all have run it, ceding meanwhile.
/// Without `wait` it returns once every call is posted; the next call to a
/// CPU waits until its previous one has run.
///
/// `function` should be `#[notrace]` (it runs under text changes that wait
/// for it), must not call `smp_call_function`, and must not block. The caller is not
/// preempted meanwhile (`NoPreemption`), so no thread ever waits for one
/// switched out while it held the sender lock. Interrupts are as they were
/// on return; their handlers run while it waits (`wait_until`).
#[notrace]
pub fn smp_call_function(cpus: CpuSet, function: fn(u64), argument: u64, wait: bool) {
    // First: `me` (the targets, the caller IPI'd back) must stay this CPU.
    let _no_preemption = NoPreemption::new();
    let me = smp_processor_id();
    let targets = cpus.intersection(online_cpus()).without(me);
    if targets.is_empty() {
        return;
    }
    let _sender = lock_sender();
    for cpu in targets.iter() {
        let mailbox = &area(cpu).mailbox;
        // A call posted earlier without waiting must have run before its slot is reused.
        wait_until(|| mailbox.completed.load(Ordering::Acquire) == mailbox.posted.load(Ordering::Relaxed));
        mailbox.function.store(function as usize as u64, Ordering::Relaxed);
        mailbox.argument.store(argument, Ordering::Relaxed);
        mailbox.caller.store(me as u64, Ordering::Relaxed);
        // Publishes the three fields above to the CPU's acquire of `posted`.
        mailbox.posted.fetch_add(1, Ordering::Release);
        // A full barrier (`sync`) between publishing and raising the IPI, as
        // Linux's smp_mb before it raises one: the target must see `posted`
        // once it takes the IPI. The hcall is a barrier in QEMU and PowerVM
        // today, but PAPR does not promise it.
        fence(Ordering::SeqCst);
        xics::send_ipi(area(cpu).interrupt_server);
    }
    if wait {
        for cpu in targets.iter() {
            let mailbox = &area(cpu).mailbox;
            wait_until(|| mailbox.completed.load(Ordering::Acquire) == mailbox.posted.load(Ordering::Relaxed));
        }
    }
}

/// Keeps the running thread from being preempted while it lives: the
/// preempt count of its `thread_info`, as `thread::preempt_disable` keeps it,
/// with the same compiler barriers (the architecture owns the layout and the
/// barrier, and may not import `thread`; the timer preempts only at 0).
struct NoPreemption(*mut super::thread_info::ThreadInfo);

impl NoPreemption {
    /// Always inlined: a method cannot be `#[notrace]`.
    #[inline(always)]
    fn new() -> NoPreemption {
        let info = super::thread_info::current_thread_info();
        // Safety: the running context's own thread_info (thread, idle or
        // emergency stack); only it writes its preempt count.
        unsafe { (*info).preempt_count += 1 };
        // Nothing of the section moves before the increment (as `thread::preempt_disable`).
        super::thread_info::compiler_barrier();
        NoPreemption(info)
    }
}

impl Drop for NoPreemption {
    #[inline(always)]
    fn drop(&mut self) {
        // Nothing of the section moves after the decrement.
        super::thread_info::compiler_barrier();
        // Safety: as in `new`: the same thread_info, the thread was not switched out meanwhile.
        unsafe { (*self.0).preempt_count -= 1 };
    }
}

/// Takes the sender lock; while another CPU holds it, cedes between tries
/// (its holder sends no wake-up: the decrementer bounds the wait).
#[notrace]
fn lock_sender() -> spin::MutexGuard<'static, ()> {
    let _caller_state = interrupts::disable();
    loop {
        if let Some(guard) = SENDER.try_lock() {
            return guard;
        }
        ceded_pause();
    }
}

/// The last step of changing kernel text (`text::modify_code`): after the
/// writing CPU has stored the word and flushed it (`dcbst; sync; icbi; sync;
/// isync`), every other online CPU runs a context-synchronising `isync`
/// before the change is reported done. The `icbi` has invalidated the block
/// in every CPU's instruction cache, but a CPU may still hold the old word
/// among instructions it fetched earlier; only a context-synchronising event
/// on that CPU discards them (Linux's patching does the same where it must
/// be sure). docs/ftrace.md, "Text patching on several CPUs".
#[notrace]
pub fn synchronize_other_cpus() {
    let others = online_cpus().without(smp_processor_id());
    if others.is_empty() {
        return;
    }
    smp_call_function(others, context_synchronize, 0, true);
}

/// Runs on each other CPU after a text change: `isync` (the interrupt that
/// brought it here and its `rfid` synchronise too; this one says so).
#[notrace]
fn context_synchronize(_: u64) {
    // Safety: isync only discards prefetched instructions.
    unsafe { core::arch::asm!("isync", options(nostack)) };
    super::text::log::record(super::text::log::Step::Synchronized, 0);
}

/// Serialises `stop_machine`s (two at once would each wait for the other).
static STOPPER: Mutex<()> = Mutex::new(());
/// CPUs parked by the running `stop_machine`.
static PARKED: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);
/// Nonzero while the running `stop_machine` keeps the others parked.
static HOLD: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Runs `action` on this CPU while every other online CPU waits in an IPI
/// handler with interrupts off (Linux's `stop_machine`, for the rare change
/// or check that needs every CPU quiet): whatever thread another CPU was
/// running stays interrupted, its registers readable with `parked_registers`,
/// and no thread switches anywhere. The caller is not preempted meanwhile.
///
/// `action` must not wait for another CPU (an IPI, a text change, a grace
/// period) nor take a lock an interrupted context may hold with interrupts
/// on (a `sync::Mutex`); locks taken only with interrupts off (scheduler,
/// heap, console) are free, since no CPU is parked while holding one.
#[notrace]
pub fn stop_machine<R>(action: impl FnOnce() -> R) -> R {
    let _no_preemption = NoPreemption::new();
    // Wait for another stop_machine with interrupts on: its IPI parks us meanwhile.
    let _stopper = loop {
        if let Some(guard) = STOPPER.try_lock() {
            break guard;
        }
        confer();
    };
    let me = smp_processor_id();
    let others = online_cpus().without(me);
    PARKED.store(0, Ordering::Relaxed);
    HOLD.store(1, Ordering::Release);
    smp_call_function(others, park, me as u64, false);
    wait_until(|| PARKED.load(Ordering::Acquire) == others.len());
    let result = {
        let _off = interrupts::disable();
        action()
    };
    HOLD.store(0, Ordering::Release);
    // Every parked CPU leaves its handler before the next stop_machine may park it.
    wait_until(|| PARKED.load(Ordering::Acquire) == 0);
    result
}

/// A CPU's part in `stop_machine`: counts itself parked, wakes the stopping
/// CPU once all are, then waits (interrupts off, conferring its time) until released.
#[notrace]
fn park(stopper: u64) {
    PARKED.fetch_add(1, Ordering::AcqRel);
    fence(Ordering::SeqCst);
    xics::send_ipi(area(stopper as usize).interrupt_server);
    while HOLD.load(Ordering::Acquire) != 0 {
        confer();
    }
    PARKED.fetch_sub(1, Ordering::AcqRel);
    fence(Ordering::SeqCst);
    xics::send_ipi(area(stopper as usize).interrupt_server);
}

/// During `stop_machine`'s action: the registers CPU `cpu` was interrupted
/// in (None for the calling CPU or one that is not parked).
#[notrace]
pub fn parked_registers(cpu: usize) -> Option<&'static PtRegs> {
    if cpu == smp_processor_id() || HOLD.load(Ordering::Acquire) == 0 {
        return None;
    }
    let address = area(cpu).interrupted_registers.load(Ordering::Acquire);
    // Safety: a parked CPU's IPI handler keeps its PtRegs in place until released.
    (address != 0).then(|| unsafe { &*(address as *const PtRegs) })
}
