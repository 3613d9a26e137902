//! The other CPUs: starting them (RTAS start-cpu), their idle loop, IPIs, `smp_call_function`, and the context synchronisation after text patching.
//!
//! What runs where in this milestone (docs/ARCHITECTURE.md, "CPUs"): the
//! boot CPU runs every thread; each secondary CPU runs only its idle loop
//! (interrupts off; take any posted call; H_CEDE) and its interrupt
//! handlers: the external interrupt (IPIs, `external_interrupt`) and the
//! decrementer, which only re-arms itself. Neither ever calls the scheduler
//! or touches the boot CPU's current thread. Everything here and every
//! function a caller posts is `#[notrace]`: no secondary CPU enters ftrace or
//! a live patch yet (their grace periods know one CPU).
//!
//! Waiting for another CPU never spins: under QEMU's round-robin TCG
//! (`-icount`) a spinning CPU starves the one it waits for. Every wait is
//! "interrupts off; test; H_CEDE" (`wait_until`), woken by an IPI from the
//! CPU that made the condition true, with the decrementer as a backstop.
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

/// Timebase ticks between a secondary CPU's decrementer interrupts (the
/// backstop of its waits), set before the first CPU starts.
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
    idle_loop()
}

/// A secondary CPU's life: run what is posted to it, otherwise cede.
#[notrace]
fn idle_loop() -> ! {
    let statistics = &per_cpu().statistics;
    loop {
        let _off = interrupts::disable();
        if call_posted() {
            run_posted_call();
            continue;
        }
        statistics.ceded.store(1, Ordering::Relaxed);
        // H_CEDE enables interrupts itself: an IPI raised since the test
        // above is taken at once, so none is lost.
        interrupts::wait();
        statistics.ceded.store(0, Ordering::Relaxed);
    }
}

/// A secondary CPU's decrementer interrupt: re-arm it, nothing else (it
/// only bounds how long a wait can miss its wake-up).
#[notrace]
pub fn secondary_tick() {
    debug_assert_ne!(smp_processor_id(), BOOT_CPU);
    per_cpu().statistics.ticks.fetch_add(1, Ordering::Relaxed);
    set_decrementer(BACKSTOP_TICKS.load(Ordering::Relaxed));
}

/// The external interrupt (0x500), on any CPU, interrupts off: accepts one
/// interrupt; for an IPI, lowers it first (so that one raised while the
/// calls run is taken again), runs any posted call, and ends it. Returns the
/// source of an interrupt that is not an IPI (after ending it): no device
/// interrupt is enabled, so the caller reports it.
#[notrace]
pub fn external_interrupt() -> Result<(), u32> {
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
                run_posted_call();
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

/// H_CEDE, then interrupts off again (H_CEDE returns with them on, once one
/// was taken): the pause of a wait, with the caller's interrupt state kept by
/// its own guard.
#[notrace]
#[inline(always)]
fn ceded_pause() {
    interrupts::wait();
    core::mem::forget(interrupts::disable());
}

/// Runs `function(argument)` once on every online CPU of `cpus` but the
/// calling one, each in its IPI handler (interrupts off; a ceded CPU is woken
/// by the IPI); with `wait`, returns once all have run it, ceding meanwhile.
/// Without `wait` it returns once every call is posted; the next call to a
/// CPU waits until its previous one has run.
///
/// `function` must be `#[notrace]` (secondary CPUs do not enter ftrace yet),
/// must not call `smp_call_function`, and must not block. The caller is not
/// preempted meanwhile (`NoPreemption`), so no thread ever waits for one
/// switched out while it held the sender lock. Interrupts are as they were
/// on return; their handlers run while it waits (`wait_until`).
#[notrace]
pub fn smp_call_function(cpus: CpuSet, function: fn(u64), argument: u64, wait: bool) {
    let me = smp_processor_id();
    let targets = cpus.intersection(online_cpus()).without(me);
    if targets.is_empty() {
        return;
    }
    let _no_preemption = NoPreemption::new();
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
