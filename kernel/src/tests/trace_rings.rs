//! Tests of the per-CPU trace rings across CPUs: events of two CPUs merged in time order, and a reader that never sees a torn event while another CPU writes.
//!
//! The other CPU's calls come from a thread pinned there (`thread::spawn_on`):
//! IPI handlers run no traced code (docs/ARCHITECTURE.md, "Waits and reports").
use crate::arch::percpu::{BOOT_CPU, online_cpus, smp_processor_id};
use crate::arch::registers::timebase;
use crate::thread::{self, ExitStatus};
use crate::trace::buffers::{Event, PerCpuBuffers};
use crate::{time, trace};
use alloc::string::String;
use alloc::vec::Vec;
use core::hint::black_box;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use macros::ktest;

/// The first online CPU other than the boot CPU.
fn secondary() -> usize {
    online_cpus().without(BOOT_CPU).iter().next().expect("the test kernel runs with at least two CPUs online")
}

/// Runs `work` in a thread pinned to CPU `cpu` and waits for it.
fn on_cpu(cpu: usize, work: impl FnOnce() + Send + 'static) {
    let handle = thread::spawn_on(cpu, "ring-writer", work).expect("room for a thread");
    assert_eq!(handle.join(), ExitStatus::Returned);
}

/// The function both CPUs call while the function tracer traces it.
#[inline(never)]
fn ring_traced(value: u64) -> u64 {
    black_box(value + 1)
}

#[ktest]
fn trace_rings_merge_two_cpus_in_time_order_with_their_cpu() {
    static WHERE: AtomicU64 = AtomicU64::new(u64::MAX);
    let other = secondary();
    trace::function::start("*tests::trace_rings::ring_traced").unwrap();
    ring_traced(black_box(1));
    on_cpu(other, || {
        WHERE.store(smp_processor_id() as u64, Ordering::Relaxed);
        ring_traced(black_box(2));
    });
    ring_traced(black_box(3));
    on_cpu(other, || {
        ring_traced(black_box(4));
    });
    trace::function::stop().unwrap();
    assert_eq!(WHERE.load(Ordering::Relaxed), other as u64);
    let recorded = trace::function::recorded();
    let cpus: Vec<usize> = recorded.events.iter().map(|(cpu, _)| *cpu).collect();
    assert_eq!(cpus, [BOOT_CPU, other, BOOT_CPU, other], "merged in call order");
    assert!(recorded.events.windows(2).all(|pair| pair[0].1.timebase <= pair[1].1.timebase));
    assert_eq!((recorded.written[BOOT_CPU], recorded.written[other], recorded.total_lost()), (2, 2, 0));
    let lines = trace::function::render();
    assert_eq!(lines[1], alloc::format!("# entries-in-buffer/entries-written: 4/4   #P:{}", online_cpus().len()));
    let columns: Vec<&str> = lines[3..].iter().filter_map(|line| line.split_whitespace().nth(1)).collect();
    let (here, there) = (alloc::format!("[{BOOT_CPU:03}]"), alloc::format!("[{other:03}]"));
    assert_eq!(columns, [&here, &there, &here, &there], "{lines:?}");
    assert!(lines[4].contains("tests::trace_rings::ring_traced <-"), "{}", lines[4]);
}

#[ktest]
fn trace_rings_show_what_each_cpu_lost() {
    let capacity = trace::function::CAPACITY as u64;
    let other = secondary();
    trace::function::start("*tests::trace_rings::ring_traced").unwrap();
    ring_traced(black_box(1));
    on_cpu(other, move || {
        for value in 0..capacity + 5 {
            ring_traced(value);
        }
    });
    trace::function::stop().unwrap();
    let recorded = trace::function::recorded();
    assert_eq!((recorded.written[BOOT_CPU], recorded.lost[BOOT_CPU]), (1, 0));
    assert_eq!((recorded.written[other], recorded.lost[other]), (capacity + 5, 5));
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
    let lost: Vec<String> =
        online_cpus().iter().map(|cpu| alloc::format!("{cpu}:{}", if cpu == other { 5 } else { 0 })).collect();
    assert_eq!(lines[2], alloc::format!("# lost per CPU: {}", lost.join(" ")));
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

/// Pushes 1, 2, 3... until the reader is done, at least `minimum`: the only
/// writer of `COUNTED`, in a thread pinned to one CPU (so it writes that
/// CPU's ring only, and is that ring's one writer even when preempted).
fn push_counted(minimum: u64) {
    let mut value = 0;
    while value < minimum || !READER_DONE.load(Ordering::Relaxed) {
        value += 1;
        COUNTED.push(Counted([value; 4]));
    }
    PUSHED.store(value, Ordering::Release);
}

/// One copy of the writer CPU's ring: no torn event, consecutive values
/// ending at the count written, at most the capacity, and no more dropped
/// mid-copy than lost. Returns that count and how many the copy dropped
/// because the writer overwrote them meanwhile.
fn check_counted(writer: usize) -> (u64, u64) {
    let recorded = COUNTED.recorded();
    assert!(recorded.events.iter().all(|(cpu, _)| *cpu == writer), "only CPU {writer} wrote");
    for (_, event) in &recorded.events {
        assert!(event.0.iter().all(|&word| word == event.0[0]), "torn event {:?}", event.0);
    }
    let values: Vec<u64> = recorded.events.iter().map(|(_, event)| event.0[0]).collect();
    assert!(values.windows(2).all(|pair| pair[1] == pair[0] + 1), "consecutive: {values:?}");
    let written = recorded.written[writer];
    assert!(values.len() <= PerCpuBuffers::<Counted, 4, 64>::CAPACITY, "{} events", values.len());
    assert!(recorded.dropped_while_copying[writer] <= recorded.lost[writer], "dropped mid-copy counts as lost");
    if let Some(&newest) = values.last() {
        assert_eq!(newest, written, "the newest copied is the last written");
    }
    (written, recorded.dropped_while_copying[writer])
}

#[ktest]
fn trace_rings_reader_never_sees_a_torn_event_while_another_cpu_writes() {
    let writer = secondary();
    COUNTED.clear();
    READER_DONE.store(false, Ordering::Relaxed);
    PUSHED.store(0, Ordering::Relaxed);
    assert_eq!(check_counted(writer), (0, 0), "cleared");
    let pusher = thread::spawn_on(writer, "ring-writer", || push_counted(10_000)).expect("room for a thread");
    // Copies until 1,000 of them overlapped the writer and some lost entries
    // to it mid-copy (or 10 s passed: the asserts below then fail; the
    // watchdog allows 20). Where the two vCPUs take turns rather than run at
    // once, a copy loses entries only when a turn ends inside it: that can
    // take thousands of copies.
    let deadline = timebase() + time::milliseconds_to_timebase(10_000);
    let (mut reads, mut dropped) = (0u64, 0u64);
    while (reads < 1000 || dropped == 0) && timebase() < deadline {
        let (written, dropped_now) = check_counted(writer);
        if written != 0 {
            reads += 1;
            dropped += dropped_now;
        }
    }
    READER_DONE.store(true, Ordering::Relaxed);
    assert_eq!(pusher.join(), ExitStatus::Returned);
    let pushed = PUSHED.load(Ordering::Acquire);
    assert_eq!(check_counted(writer).0, pushed);
    let last = COUNTED.recorded();
    assert_eq!(last.events.len(), PerCpuBuffers::<Counted, 4, 64>::CAPACITY);
    assert_eq!(last.lost[writer], pushed - 63);
    crate::println!(
        "trace rings: {reads} copies while CPU {writer} wrote {pushed}, {dropped} entries dropped mid-copy"
    );
    assert!(reads >= 1000 && dropped > 0, "the copies overlapped the writer: {reads} copies, {dropped} dropped");
}
