//! Tests of threads on every CPU: where threads run, affinity and migration, the reschedule IPI, grace periods and `stop_machine`.
//!
//! The test kernel boots with two CPUs (`qemu::DEFAULT_CPUS`); every case
//! here uses CPU 0 and the first other online CPU.
use crate::arch::percpu::{BOOT_CPU, online_cpus, smp_processor_id};
use crate::arch::registers::timebase;
use crate::arch::smp::{parked_registers, stop_machine};
use crate::thread::{self, ExitStatus, current_thread_info};
use crate::{sync, time};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};
use macros::ktest;

/// The first online CPU other than the boot CPU.
fn secondary() -> usize {
    online_cpus().without(BOOT_CPU).iter().next().expect("the test kernel runs with at least two CPUs online")
}

/// Sleeps in 1 ms steps until `condition` holds or `milliseconds` passed; returns whether it held.
fn wait_for(milliseconds: u64, mut condition: impl FnMut() -> bool) -> bool {
    for _ in 0..milliseconds {
        if condition() {
            return true;
        }
        thread::sleep_milliseconds(1);
    }
    condition()
}

/// The CPU the calling thread runs on, as its thread_info records it.
fn recorded_cpu() -> u64 {
    // Safety: the calling thread's own thread_info.
    unsafe { (*current_thread_info()).cpu }
}

#[ktest]
fn a_thread_pinned_to_each_cpu_runs_there_and_its_thread_info_says_so() {
    static SEEN: [AtomicU64; boot::MAX_CPUS] = [const { AtomicU64::new(u64::MAX) }; boot::MAX_CPUS];
    let handles: Vec<_> = online_cpus()
        .iter()
        .map(|cpu| {
            SEEN[cpu].store(u64::MAX, Ordering::SeqCst);
            let handle = thread::spawn_on(cpu, "pinned", move || {
                // Where it runs, twice, across a yield: still there.
                let first = smp_processor_id();
                thread::yield_now();
                let second = smp_processor_id();
                let recorded = recorded_cpu() as usize;
                let agreed = first == second && second == recorded;
                SEEN[cpu].store(if agreed { first as u64 } else { u64::MAX - 1 }, Ordering::SeqCst);
            });
            handle.expect("room for a thread")
        })
        .collect();
    for handle in handles {
        assert_eq!(handle.join(), ExitStatus::Returned);
    }
    for cpu in online_cpus().iter() {
        assert_eq!(SEEN[cpu].load(Ordering::SeqCst), cpu as u64, "the thread pinned to CPU {cpu}");
    }
    assert!(online_cpus().len() >= 2);
}

#[ktest]
fn set_affinity_moves_a_running_thread_and_the_caller_itself() {
    static WHERE: AtomicU64 = AtomicU64::new(u64::MAX);
    static STOP: AtomicU64 = AtomicU64::new(0);
    STOP.store(0, Ordering::SeqCst);
    let other = secondary();
    let worker = thread::spawn_on(other, "migrant", || {
        while STOP.load(Ordering::SeqCst) == 0 {
            WHERE.store(smp_processor_id() as u64, Ordering::SeqCst);
        }
    })
    .expect("room for a thread");
    assert!(wait_for(500, || WHERE.load(Ordering::SeqCst) == other as u64), "it starts on CPU {other}");
    thread::set_affinity(worker.id, Some(BOOT_CPU)).expect("CPU 0 is online");
    // It moves at its CPU's next switch; here it shares CPU 0 with us, so we sleep.
    assert!(wait_for(500, || WHERE.load(Ordering::SeqCst) == BOOT_CPU as u64), "it moved to CPU 0");
    thread::set_affinity(worker.id, Some(other)).expect("the other CPU is online");
    assert!(wait_for(500, || WHERE.load(Ordering::SeqCst) == other as u64), "and back to CPU {other}");
    STOP.store(1, Ordering::SeqCst);
    assert_eq!(worker.join(), ExitStatus::Returned);
    // The caller moves itself before set_affinity returns, and back.
    let me = thread::current_id();
    thread::set_affinity(me, Some(other)).expect("the other CPU is online");
    let there = (smp_processor_id(), recorded_cpu());
    thread::set_affinity(me, Some(BOOT_CPU)).expect("CPU 0 is online");
    assert_eq!(there, (other, other as u64));
    assert_eq!(smp_processor_id(), BOOT_CPU);
}

#[ktest]
fn set_affinity_refuses_an_offline_cpu_an_idle_thread_and_an_unknown_thread() {
    let me = thread::current_id();
    let offline = (0..boot::MAX_CPUS).find(|&cpu| !online_cpus().contains(cpu));
    if let Some(offline) = offline {
        assert_eq!(thread::set_affinity(me, Some(offline)), Err(thread::AffinityError::CpuOffline(offline)));
    }
    assert_eq!(thread::set_affinity(me, Some(boot::MAX_CPUS)), Err(thread::AffinityError::CpuOffline(boot::MAX_CPUS)));
    let idle = thread::snapshot().into_iter().find(|summary| summary.name == "idle").expect("CPU 0's idle").id;
    assert_eq!(thread::set_affinity(idle, Some(secondary())), Err(thread::AffinityError::Idle(idle)));
    assert_eq!(thread::set_affinity(u64::MAX - 7, None), Err(thread::AffinityError::NoSuchThread(u64::MAX - 7)));
    assert_eq!(smp_processor_id(), BOOT_CPU, "nothing moved");
}

#[ktest]
fn threads_free_to_run_anywhere_run_on_every_cpu() {
    static CPUS: AtomicU64 = AtomicU64::new(0);
    static STOP: AtomicU64 = AtomicU64::new(0);
    CPUS.store(0, Ordering::SeqCst);
    STOP.store(0, Ordering::SeqCst);
    let workers: Vec<_> = (0..4)
        .map(|_| {
            thread::spawn("free", || {
                while STOP.load(Ordering::SeqCst) == 0 {
                    CPUS.fetch_or(1 << smp_processor_id(), Ordering::SeqCst);
                }
            })
            .expect("room for a thread")
        })
        .collect();
    let every = online_cpus().bits();
    let spread = wait_for(1000, || CPUS.load(Ordering::SeqCst) & every == every);
    STOP.store(1, Ordering::SeqCst);
    for worker in workers {
        assert_eq!(worker.join(), ExitStatus::Returned);
    }
    assert!(spread, "CPUs that ran them: {:#b} of {every:#b}", CPUS.load(Ordering::SeqCst));
}

/// A thread made ready for an idle CPU starts there at once: the reschedule
/// IPI wakes the CPU from H_CEDE, rather than its next tick. Counted in that
/// CPU's IPIs and ticks, not in time: the thread must find an IPI taken
/// since its spawn (nothing else sends that CPU one meanwhile) in nearly
/// every round, and in some round no tick either (the host may hold a vCPU
/// back for milliseconds, so a tick can come first now and then).
#[ktest]
fn a_thread_spawned_for_an_idle_cpu_is_started_by_a_reschedule_ipi() {
    static IPIS_AT_START: AtomicU64 = AtomicU64::new(0);
    static TICKS_AT_START: AtomicU64 = AtomicU64::new(0);
    const ROUNDS: usize = 10;
    let other = secondary();
    let statistics = &crate::arch::percpu::area(other).statistics;
    let (mut signalled, mut before_tick) = (0, 0);
    for _ in 0..ROUNDS {
        // The other CPU idles meanwhile: nothing else is pinned there.
        thread::sleep_milliseconds(3);
        let (ipis, ticks) = (statistics.ipis.load(Ordering::SeqCst), statistics.ticks.load(Ordering::SeqCst));
        let handle = thread::spawn_on(other, "woken", || {
            let statistics = &crate::arch::registers::per_cpu().statistics;
            IPIS_AT_START.store(statistics.ipis.load(Ordering::SeqCst), Ordering::SeqCst);
            TICKS_AT_START.store(statistics.ticks.load(Ordering::SeqCst), Ordering::SeqCst);
        })
        .expect("room for a thread");
        assert_eq!(handle.join(), ExitStatus::Returned);
        if IPIS_AT_START.load(Ordering::SeqCst) > ipis {
            signalled += 1;
            if TICKS_AT_START.load(Ordering::SeqCst) == ticks {
                before_tick += 1;
            }
        }
    }
    assert!(signalled >= ROUNDS - 1, "only {signalled} of {ROUNDS} starts followed a reschedule IPI");
    assert!(before_tick >= 1, "no start of {ROUNDS} came before CPU {other}'s next tick");
}

/// `synchronize_sched` does not return while another CPU is inside a
/// read-side section (preemption disabled) that began before it.
#[ktest]
fn a_grace_period_waits_for_a_section_in_progress_on_another_cpu() {
    static INSIDE: AtomicU64 = AtomicU64::new(0);
    static LEFT_AT: AtomicU64 = AtomicU64::new(0);
    INSIDE.store(0, Ordering::SeqCst);
    let section = thread::spawn_on(secondary(), "reader", || {
        let _section = thread::preempt_disable();
        INSIDE.store(1, Ordering::SeqCst);
        let until = timebase() + time::milliseconds_to_timebase(30);
        while timebase() < until {
            core::hint::spin_loop();
        }
        LEFT_AT.store(timebase(), Ordering::SeqCst);
    })
    .expect("room for a thread");
    assert!(wait_for(500, || INSIDE.load(Ordering::SeqCst) == 1), "the reader entered its section");
    sync::synchronize_sched();
    let returned = timebase();
    assert_eq!(section.join(), ExitStatus::Returned);
    let left = LEFT_AT.load(Ordering::SeqCst);
    assert!(left != 0 && returned >= left, "the grace period ended at {returned}, the section at {left}");
}

/// With the other CPU idle, a grace period ends after at most one IPI
/// round: the ceded CPU it interrupts is preemptible and notes a quiescent
/// state in the IPI's handler.
#[ktest]
fn a_grace_period_with_the_other_cpus_idle_takes_one_ipi_round() {
    let other = secondary();
    let statistics = &crate::arch::percpu::area(other).statistics;
    let mut most = 0;
    for _ in 0..5 {
        // Nothing runs on the other CPU: it idles, ceded.
        thread::sleep_milliseconds(2);
        let before = statistics.ipis.load(Ordering::SeqCst);
        sync::synchronize_sched();
        most = most.max(statistics.ipis.load(Ordering::SeqCst) - before);
    }
    assert!(most <= 1, "a grace period took {most} IPIs to an idle CPU");
}

/// While `stop_machine` runs its action, the other CPU's thread makes no
/// progress, and its interrupted registers lie on that thread's stack.
#[ktest]
fn stop_machine_holds_the_other_cpus_and_shows_where_they_were() {
    static COUNT: AtomicU64 = AtomicU64::new(0);
    static STOP: AtomicU64 = AtomicU64::new(0);
    static BASE: AtomicU64 = AtomicU64::new(0);
    STOP.store(0, Ordering::SeqCst);
    let other = secondary();
    let counter = thread::spawn_on(other, "counter", || {
        BASE.store(current_thread_info() as u64, Ordering::SeqCst);
        while STOP.load(Ordering::SeqCst) == 0 {
            COUNT.fetch_add(1, Ordering::SeqCst);
        }
    })
    .expect("room for a thread");
    assert!(wait_for(500, || COUNT.load(Ordering::SeqCst) > 0), "the counter runs");
    let (before, after, stack_pointer) = stop_machine(|| {
        let before = COUNT.load(Ordering::SeqCst);
        let until = timebase() + time::milliseconds_to_timebase(5);
        while timebase() < until {
            core::hint::spin_loop();
        }
        let registers = parked_registers(other).expect("the other CPU is parked");
        (before, COUNT.load(Ordering::SeqCst), registers.gpr[1])
    });
    let resumed = wait_for(500, || COUNT.load(Ordering::SeqCst) > after);
    STOP.store(1, Ordering::SeqCst);
    assert_eq!(counter.join(), ExitStatus::Returned);
    assert_eq!(before, after, "the other CPU counted while the machine was stopped");
    let base = BASE.load(Ordering::SeqCst);
    assert!(
        (base..base + boot::THREAD_SIZE as u64).contains(&stack_pointer),
        "parked r1 {stack_pointer:#x} is on the counter's stack at {base:#x}"
    );
    assert!(resumed, "the counter runs again after");
    assert!(parked_registers(other).is_none(), "nobody is parked after stop_machine");
}

/// Sums `depth` values through as many frames, each keeping its own part in
/// a non-volatile register across the switch below it: a thread resumed
/// from a stale or another thread's switch frame gets a wrong sum.
#[inline(never)]
fn sum_across_switches(depth: u64, round: u64) -> u64 {
    if depth == 0 {
        match round % 3 {
            0 => thread::yield_now(),
            1 => thread::sleep_milliseconds(0),
            _ => {
                // Pinned to each CPU in turn, or free, every other time.
                let cpus = online_cpus();
                let target = cpus.iter().nth((round as usize / 6) % cpus.len());
                let affinity = if round.is_multiple_of(2) { target } else { None };
                thread::set_affinity(thread::current_id(), affinity).expect("an online CPU");
            }
        }
        return 0;
    }
    let mine = core::hint::black_box(depth * 7 + round);
    mine + sum_across_switches(depth - 1, round)
}

/// Threads free to run on any CPU yield, sleep 0 ms and move themselves
/// between CPUs thousands of times under ticks at random 2-64 us intervals:
/// every switch resumes the right thread from its own latest frame (the
/// scheduler lock is held across `switch_context`, a thread still running
/// is never queued), so every sum is right and every thread ends.
#[ktest]
fn threads_switching_and_moving_between_cpus_keep_their_frames() {
    const THREADS: u64 = 4;
    const MINIMUM_ROUNDS: u64 = 30000;
    static WRONG: AtomicU64 = AtomicU64::new(0);
    static ROUNDS: AtomicU64 = AtomicU64::new(0);
    static CPUS_SEEN: AtomicU64 = AtomicU64::new(0);
    static STOP: AtomicU64 = AtomicU64::new(0);
    for counter in [&WRONG, &ROUNDS, &CPUS_SEEN, &STOP] {
        counter.store(0, Ordering::SeqCst);
    }
    time::set_jitter(0x5eed_0001);
    let workers: Vec<_> = (0..THREADS)
        .map(|index| {
            thread::spawn("switcher", move || {
                let mut round = index * 1_000_000;
                while STOP.load(Ordering::SeqCst) == 0 {
                    // Over depths 1..=8: 7 * depth + round each.
                    if sum_across_switches(8, round) != 7 * 36 + 8 * round {
                        WRONG.fetch_add(1, Ordering::SeqCst);
                    }
                    CPUS_SEEN.fetch_or(1 << smp_processor_id(), Ordering::SeqCst);
                    ROUNDS.fetch_add(1, Ordering::SeqCst);
                    round += 1;
                }
            })
            .expect("room for a thread")
        })
        .collect();
    let every = online_cpus().bits();
    let enough = wait_for(15000, || {
        ROUNDS.load(Ordering::SeqCst) >= MINIMUM_ROUNDS && CPUS_SEEN.load(Ordering::SeqCst) & every == every
    });
    STOP.store(1, Ordering::SeqCst);
    let statuses: Vec<ExitStatus> = workers.into_iter().map(|worker| worker.join()).collect();
    time::set_jitter(0);
    assert!(statuses.iter().all(|status| *status == ExitStatus::Returned), "{statuses:?}");
    assert_eq!(WRONG.load(Ordering::SeqCst), 0, "sums that came out wrong after a switch");
    let (rounds, seen) = (ROUNDS.load(Ordering::SeqCst), CPUS_SEEN.load(Ordering::SeqCst));
    assert!(enough, "{rounds} rounds on CPUs {seen:#b} of {every:#b} in 15 s");
}
