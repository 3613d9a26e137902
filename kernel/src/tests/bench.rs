//! Benchmarks: guest instructions per operation, read from the timebase under QEMU -icount.
//!
//! Under `-icount shift=0` one instruction takes 1 ns of guest time and the
//! timebase runs at 512 MHz, so instructions = timebase ticks * 1000 / 512.
use crate::arch::ppc64::registers::timebase;
use crate::{println, thread};
use core::hint::black_box;

const ITERATIONS: u64 = 10_000;

fn instructions(ticks: u64) -> u64 {
    ticks * 1_000_000_000 / crate::time::frequency()
}

/// Guest instructions per iteration of `body`, minus an empty loop's.
fn measure(mut body: impl FnMut()) -> u64 {
    let start = timebase();
    for _ in 0..ITERATIONS {
        black_box(());
    }
    let empty = timebase() - start;
    let start = timebase();
    for _ in 0..ITERATIONS {
        body();
    }
    let full = timebase() - start;
    instructions(full.saturating_sub(empty)) / ITERATIONS
}

#[inline(never)]
fn plain_function(value: u64) -> u64 {
    value.wrapping_mul(3)
}

/// Runs every benchmark and prints `bench: NAME VALUE UNIT NOTE` lines.
pub fn run_all() {
    let _guard = thread::preempt_disable();
    let call = measure(|| {
        black_box(plain_function(black_box(7)));
    });
    println!("bench: plain_call {call} instructions a call of an untraced function, loop overhead removed");
    drop(_guard);
    let switch = measure_thread_switch();
    println!("bench: thread_switch {switch} instructions one yield from a thread to another");
}

fn measure_thread_switch() -> u64 {
    let partner = thread::spawn("bench-partner", || {
        for _ in 0..ITERATIONS {
            thread::yield_now();
        }
    })
    .expect("room for the partner thread");
    let start = timebase();
    for _ in 0..ITERATIONS {
        thread::yield_now();
    }
    let ticks = timebase() - start;
    partner.join();
    instructions(ticks) / (2 * ITERATIONS)
}
