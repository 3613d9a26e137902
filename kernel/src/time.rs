//! Time: the timebase clock and the periodic decrementer tick that drives preemption.
use crate::arch::registers::{set_decrementer, timebase};
use crate::thread;
use core::sync::atomic::{AtomicU64, Ordering};
use macros::notrace;

/// Timebase ticks per second; read from the device tree at boot (512 MHz on QEMU).
static TIMEBASE_FREQUENCY: AtomicU64 = AtomicU64::new(512_000_000);
/// Timer interrupts taken since boot: the periodic ticks and the retries.
static TICKS: AtomicU64 = AtomicU64::new(0);
/// Of those, the retries of a deferred preemption (armed 20 us after a tick
/// that could not preempt). Each one armed is one interrupt taken: the tick is
/// the only code that arms the decrementer after boot, and it re-arms it at
/// once, so an armed retry is never replaced before it fires.
static RETRIES: AtomicU64 = AtomicU64::new(0);
/// Timebase at boot.
static BOOT_TIMEBASE: AtomicU64 = AtomicU64::new(0);
/// Timer interrupts per second.
pub const TICK_HZ: u64 = 100;
/// While set, each tick comes after a pseudo-random 2-64 microseconds instead
/// of 1/TICK_HZ: tests use it to preempt threads at many different points.
static JITTER: AtomicU64 = AtomicU64::new(0);

/// Turns random short tick intervals on (with a seed) or off (0).
pub fn set_jitter(seed: u64) {
    JITTER.store(seed, Ordering::Relaxed);
}

/// Records the clock rate and starts the periodic tick.
pub fn init(timebase_frequency: u64) {
    TIMEBASE_FREQUENCY.store(timebase_frequency, Ordering::Relaxed);
    BOOT_TIMEBASE.store(timebase(), Ordering::Relaxed);
    set_decrementer(tick_interval());
}

#[notrace]
fn tick_interval() -> u32 {
    let seed = JITTER.load(Ordering::Relaxed);
    if seed != 0 {
        // xorshift64: cheap, deterministic for a given seed.
        let mut next = seed;
        next ^= next << 13;
        next ^= next >> 7;
        next ^= next << 17;
        JITTER.store(next, Ordering::Relaxed);
        let microseconds = 2 + next % 63;
        return (TIMEBASE_FREQUENCY.load(Ordering::Relaxed) / 1_000_000 * microseconds) as u32;
    }
    (TIMEBASE_FREQUENCY.load(Ordering::Relaxed) / TICK_HZ) as u32
}

/// The decrementer interrupt: count, let the scheduler preempt (unless the
/// interrupted context must not be preempted), then re-arm.
/// Arming last (in whichever thread the tick returns to) guarantees that
/// thread a whole interval of progress, however short the interval and
/// however slow the host: an interval shorter than the tick's own work would
/// otherwise take the next interrupt at once, forever.
/// It also arms before switching, for the thread the tick switches to:
/// otherwise a thread that had given up the CPU itself (yield, sleep)
/// resumed with the decrementer still expired, took a tick at once and lost
/// its time slice to the thread just preempted.
#[notrace]
pub fn tick(preemptible: bool) {
    TICKS.fetch_add(1, Ordering::Relaxed);
    crate::arch::registers::per_cpu().statistics.ticks.fetch_add(1, Ordering::Relaxed);
    set_decrementer(tick_interval());
    #[cfg(feature = "ktest")]
    crate::ktest::watchdog_check();
    let deferred = !thread::timer_tick(preemptible);
    // A preemption that had to wait (inside ftrace, or preemption disabled) is
    // retried soon rather than a whole tick later: a thread that spends most
    // of its time in tracing code would otherwise keep the CPU for many ticks.
    if deferred {
        RETRIES.fetch_add(1, Ordering::Relaxed);
        set_decrementer(retry_interval());
    } else {
        set_decrementer(tick_interval());
    }
}

/// Timebase ticks between two periodic ticks (1/TICK_HZ), also the backstop
/// of the other CPUs' waits.
pub fn periodic_interval() -> u32 {
    (TIMEBASE_FREQUENCY.load(Ordering::Relaxed) / TICK_HZ) as u32
}

/// 20 microseconds: how soon a deferred preemption is tried again.
#[notrace]
fn retry_interval() -> u32 {
    (TIMEBASE_FREQUENCY.load(Ordering::Relaxed) / 50_000) as u32
}

/// Timer interrupts taken so far, by every CPU.
#[notrace]
pub fn ticks() -> u64 {
    TICKS.load(Ordering::Relaxed)
}

/// Timer interrupts the running CPU has taken so far.
#[notrace]
pub fn ticks_here() -> u64 {
    crate::arch::registers::per_cpu().statistics.ticks.load(Ordering::Relaxed)
}

/// Of `ticks()`, the interrupts that retried a deferred preemption rather
/// than mark a periodic tick.
#[notrace]
pub fn retries() -> u64 {
    RETRIES.load(Ordering::Relaxed)
}

/// Whether ticks currently come at random short intervals (`set_jitter`).
pub fn jittered() -> bool {
    JITTER.load(Ordering::Relaxed) != 0
}

/// Timebase ticks per second.
#[notrace]
pub fn frequency() -> u64 {
    TIMEBASE_FREQUENCY.load(Ordering::Relaxed)
}

/// Nanoseconds since boot.
#[notrace]
pub fn uptime_nanoseconds() -> u64 {
    let elapsed = timebase() - BOOT_TIMEBASE.load(Ordering::Relaxed);
    (elapsed as u128 * 1_000_000_000 / frequency() as u128) as u64
}

/// Converts milliseconds to timebase ticks.
#[notrace]
pub fn milliseconds_to_timebase(milliseconds: u64) -> u64 {
    milliseconds * frequency() / 1000
}

/// Converts timebase ticks to milliseconds.
#[notrace]
pub fn timebase_to_milliseconds(ticks: u64) -> u64 {
    (ticks as u128 * 1000 / frequency() as u128) as u64
}
