//! Tests of the per-CPU trace rings across CPUs: events of two CPUs merged in time order, and a reader that never sees a torn event while another CPU writes.
//!
//! A traced function runs on CPU 1 from a `#[notrace]` function posted with
//! `smp_call_function` (its IPI handler enters ftrace there).
use crate::arch::percpu::{online_cpus, smp_processor_id};
use crate::arch::registers::timebase;
use crate::arch::smp::{smp_call_function, wait_until};
use crate::trace::buffers::{Event, PerCpuBuffers};
use crate::{time, trace};
use alloc::vec::Vec;
use core::hint::black_box;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use macros::{ktest, notrace};
use portable::cpuset::CpuSet;

/// The function both CPUs call while the function tracer traces it.
#[inline(never)]
fn ring_traced(value: u64) -> u64 {
    black_box(value + 1)
}

/// CPU 1 records which CPU it ran on, then calls the traced function.
static OTHER_CPU: AtomicU64 = AtomicU64::new(u64::MAX);

#[notrace]
fn call_traced_elsewhere(value: u64) {
    OTHER_CPU.store(smp_processor_id() as u64, Ordering::Relaxed);
    ring_traced(value);
}

#[ktest]
fn trace_rings_merge_two_cpus_in_time_order_with_their_cpu() {
    assert!(online_cpus().len() >= 2, "the test kernel boots with two CPUs");
    trace::function::start("*tests::trace_rings::ring_traced").unwrap();
    ring_traced(black_box(1));
    smp_call_function(CpuSet::only(1), call_traced_elsewhere, 2, true);
    ring_traced(black_box(3));
    smp_call_function(CpuSet::only(1), call_traced_elsewhere, 4, true);
    trace::function::stop().unwrap();
    assert_eq!(OTHER_CPU.load(Ordering::Relaxed), 1);
    let recorded = trace::function::recorded();
    let cpus: Vec<usize> = recorded.events.iter().map(|(cpu, _)| *cpu).collect();
    assert_eq!(cpus, [0, 1, 0, 1], "merged in call order");
    assert!(recorded.events.windows(2).all(|pair| pair[0].1.timebase <= pair[1].1.timebase));
    assert_eq!((recorded.written[0], recorded.written[1], recorded.total_lost()), (2, 2, 0));
    let lines = trace::function::render();
    assert_eq!(lines[1], alloc::format!("# entries-in-buffer/entries-written: 4/4   #P:{}", online_cpus().len()));
    let columns: Vec<&str> = lines[3..].iter().filter_map(|line| line.split_whitespace().nth(1)).collect();
    assert_eq!(columns, ["[000]", "[001]", "[000]", "[001]"], "{lines:?}");
    assert!(lines[4].contains("tests::trace_rings::ring_traced <-"), "{}", lines[4]);
}

/// CPU 1 calls the traced function `count` times.
#[notrace]
fn call_traced_elsewhere_often(count: u64) {
    for value in 0..count {
        ring_traced(value);
    }
}

#[ktest]
fn trace_rings_show_what_each_cpu_lost() {
    let capacity = trace::function::CAPACITY as u64;
    trace::function::start("*tests::trace_rings::ring_traced").unwrap();
    ring_traced(black_box(1));
    smp_call_function(CpuSet::only(1), call_traced_elsewhere_often, capacity + 5, true);
    trace::function::stop().unwrap();
    let recorded = trace::function::recorded();
    assert_eq!((recorded.written[0], recorded.lost[0]), (1, 0));
    assert_eq!((recorded.written[1], recorded.lost[1]), (capacity + 5, 5));
    let lines = trace::function::render();
    assert_eq!(
        lines[1],
        alloc::format!(
            "# entries-in-buffer/entries-written: {}/{}   #P:{}",
            capacity + 1,
            capacity + 6,
            online_cpus().len()
        )
    );
    assert_eq!(lines[2], "# lost per CPU: 0:0 1:5");
    assert!(lines[3].starts_with("#   THREAD"), "{}", lines[3]);
}

/// An event whose four words are all one counter value: a torn copy has unequal words.
#[derive(Clone, Copy)]
struct Counted([u64; 4]);

impl Event<4> for Counted {
    #[inline(always)]
    fn to_words(&self) -> [u64; 4] {
        self.0
    }

    fn from_words(words: [u64; 4]) -> Self {
        Counted(words)
    }

    fn timebase(&self) -> u64 {
        self.0[0]
    }
}

/// Small, so that the writer goes around it many times.
static COUNTED: PerCpuBuffers<Counted, 4, 64> = PerCpuBuffers::new();
/// Set by the reader when it has seen enough; the writer then stops.
static READER_DONE: AtomicBool = AtomicBool::new(false);
/// The writer's count once it stopped (0 while it writes).
static PUSHED: AtomicU64 = AtomicU64::new(0);

/// Runs on CPU 1 (interrupts off, the ring's only writer): pushes 1, 2, 3...
/// until the reader is done, at least `minimum`.
#[notrace]
fn push_counted(minimum: u64) {
    let mut value = 0;
    while value < minimum || !READER_DONE.load(Ordering::Relaxed) {
        value += 1;
        COUNTED.push(Counted([value; 4]));
    }
    PUSHED.store(value, Ordering::Release);
}

/// One copy of CPU 1's ring: no torn event, consecutive values ending at the
/// count written, and read + lost == written. Returns that count and how
/// many the copy dropped because CPU 1 overwrote them meanwhile.
fn check_counted() -> (u64, u64) {
    let recorded = COUNTED.recorded();
    assert!(recorded.events.iter().all(|(cpu, _)| *cpu == 1), "only CPU 1 wrote");
    for (_, event) in &recorded.events {
        assert!(event.0.iter().all(|&word| word == event.0[0]), "torn event {:?}", event.0);
    }
    let values: Vec<u64> = recorded.events.iter().map(|(_, event)| event.0[0]).collect();
    assert!(values.windows(2).all(|pair| pair[1] == pair[0] + 1), "consecutive: {values:?}");
    let written = recorded.written[1];
    assert_eq!(values.len() as u64 + recorded.lost[1], written, "read + lost == written");
    if let Some(&newest) = values.last() {
        assert_eq!(newest, written, "the newest copied is the last written");
    }
    (written, recorded.dropped_while_copying[1])
}

#[ktest]
fn trace_rings_reader_never_sees_a_torn_event_while_another_cpu_writes() {
    COUNTED.clear();
    READER_DONE.store(false, Ordering::Relaxed);
    PUSHED.store(0, Ordering::Relaxed);
    assert_eq!(check_counted(), (0, 0), "cleared");
    smp_call_function(CpuSet::only(1), push_counted, 10_000, false);
    // Copies until 1,000 of them overlapped the writer and some lost entries
    // to it mid-copy (or 10 s passed: the asserts below then fail; the
    // watchdog allows 20). Where the two vCPUs take turns rather than run at
    // once, a copy loses entries only when a turn ends inside it: that can
    // take thousands of copies.
    let deadline = timebase() + time::milliseconds_to_timebase(10_000);
    let (mut reads, mut dropped) = (0u64, 0u64);
    while (reads < 1000 || dropped == 0) && timebase() < deadline {
        let (written, dropped_now) = check_counted();
        if written != 0 {
            reads += 1;
            dropped += dropped_now;
        }
    }
    READER_DONE.store(true, Ordering::Relaxed);
    wait_until(|| PUSHED.load(Ordering::Acquire) != 0);
    let pushed = PUSHED.load(Ordering::Relaxed);
    assert_eq!(check_counted().0, pushed);
    let last = COUNTED.recorded();
    assert_eq!(last.events.len(), PerCpuBuffers::<Counted, 4, 64>::CAPACITY);
    assert_eq!(last.lost[1], pushed - 63);
    crate::println!("trace rings: {reads} copies while CPU 1 wrote {pushed}, {dropped} entries dropped mid-copy");
    assert!(reads >= 1000 && dropped > 0, "the copies overlapped the writer: {reads} copies, {dropped} dropped");
}
