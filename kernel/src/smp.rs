//! Bringing up the other CPUs: from the device tree's list to every CPU online in its idle loop, and what the `cpus` command shows.
//!
//! The boot CPU, once the heap, threads and the timer run: checks that the
//! interrupt controller is XICS (the only one `arch::xics` drives), joins
//! itself (`arch::smp::boot_cpu_online`), gives each other CPU of the tree
//! (up to `boot::MAX_CPUS`) an idle stack and an emergency stack, starts it
//! with RTAS start-cpu, and waits, ceded, until every started CPU is online
//! or a second has passed. Each CPU starts on its idle thread and runs
//! threads from then on (docs/ARCHITECTURE.md, "CPUs").
use crate::arch::percpu::{BOOT_CPU, area, online_cpus};
use crate::arch::registers::timebase;
use crate::arch::smp;
use crate::devicetree::Machine;
use crate::{println, thread, time};
use alloc::alloc::{Layout, alloc};
use boot::{MAX_CPUS, THREAD_SIZE};
use core::sync::atomic::Ordering;
use portable::cpuset::CpuSet;
use portable::devicetree::InterruptController;

/// CPUs in the device tree, at most `MAX_CPUS` (set by `bring_up`).
static CPUS_IN_TREE: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(1);

/// CPUs the kernel knows of: those in the device tree, at most `MAX_CPUS`.
pub fn cpus_in_tree() -> usize {
    CPUS_IN_TREE.load(Ordering::Relaxed)
}

/// How long the boot CPU waits for the CPUs it started, in milliseconds.
const ONLINE_TIMEOUT_MILLISECONDS: u64 = 1000;

/// A THREAD_SIZE-aligned block from the heap that is never freed (a CPU's stack).
fn permanent_stack() -> u64 {
    let layout = Layout::from_size_align(THREAD_SIZE, THREAD_SIZE).expect("THREAD_SIZE is a power of two");
    // Safety: the layout has a nonzero size.
    let base = unsafe { alloc(layout) };
    assert!(!base.is_null(), "no heap left for a CPU's stack");
    base as u64
}

/// Starts every CPU of the tree and reports which came online; returns the online CPUs.
pub fn bring_up(machine: &Machine) -> CpuSet {
    CPUS_IN_TREE.store(machine.cpu_servers.len().clamp(1, MAX_CPUS), Ordering::Relaxed);
    if machine.interrupt_controller != InterruptController::Xics {
        println!("smp: the interrupt controller is {:?}, not XICS: running on one CPU", machine.interrupt_controller);
        return CpuSet::only(BOOT_CPU);
    }
    let boot_server = machine.cpu_servers.first().copied().unwrap_or(0);
    smp::boot_cpu_online(boot_server, time::periodic_interval());
    if machine.cpu_servers.len() > MAX_CPUS {
        println!("smp: {} CPUs in the device tree; starting the first {MAX_CPUS}", machine.cpu_servers.len());
    }
    let mut started = CpuSet::only(BOOT_CPU);
    for (cpu, &server) in machine.cpu_servers.iter().enumerate().take(MAX_CPUS).skip(1) {
        let (idle, emergency) = (permanent_stack(), permanent_stack());
        // Safety: both stacks are new and no CPU runs on them yet; the CPU
        // starts on its idle thread's stack.
        unsafe {
            thread::add_idle(cpu, idle);
            thread::initialise_emergency(emergency);
        }
        // Safety: boot CPU, once for this CPU, with its own new stacks.
        let result = unsafe { smp::start(cpu, server, idle, emergency) };
        if result.is_err() {
            // It never runs: its idle thread must not look like a thread
            // running there (unload's scan could never read it).
            thread::remove_idle(cpu);
        }
        match result {
            Ok(()) => started = started.with(cpu),
            Err(smp::StartError::NoStartToken) => {
                println!("smp: CPU {cpu} (server {server}) not started: the tree has no RTAS start-cpu token")
            }
            Err(smp::StartError::BadNumber) => {
                println!("smp: CPU {cpu} (server {server}) not started: no area for its number")
            }
            Err(smp::StartError::Rtas(status)) => {
                println!("smp: CPU {cpu} (server {server}) not started: RTAS start-cpu status {status}")
            }
        }
    }
    let deadline = timebase() + time::milliseconds_to_timebase(ONLINE_TIMEOUT_MILLISECONDS);
    smp::wait_until(|| online_cpus().intersection(started) == started || timebase() >= deadline);
    let online = online_cpus();
    for cpu in started.iter().filter(|&cpu| !online.contains(cpu)) {
        println!("smp: CPU {cpu} (server {}) did not come online", area(cpu).interrupt_server);
    }
    online
}

/// One line per CPU for the `cpus` command: number, server, state, counters.
pub fn describe(cpu: usize) -> alloc::string::String {
    let area = area(cpu);
    let statistics = &area.statistics;
    let runs = match thread::running_on(cpu) {
        Some((id, name)) if statistics.ceded.load(Ordering::Relaxed) != 0 => {
            alloc::format!("thread {id} ({name}, ceded)")
        }
        Some((id, name)) => alloc::format!("thread {id} ({name})"),
        None => "nothing".into(),
    };
    alloc::format!(
        "{cpu:>3} {:>6} {:<7} {:>8} {:>8} {:>8}  {runs}",
        area.interrupt_server,
        if area.online.load(Ordering::Relaxed) != 0 { "online" } else { "offline" },
        statistics.ipis.load(Ordering::Relaxed),
        statistics.calls.load(Ordering::Relaxed),
        statistics.ticks.load(Ordering::Relaxed),
    )
}
