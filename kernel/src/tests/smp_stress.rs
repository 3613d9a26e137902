//! SMP stress tests: threads on every CPU call patched and traced functions while the test thread patches, loads modules and toggles tracers.
//!
//! The Linux test-syscall analog (issue 12): every online CPU runs threads
//! that hammer the functions being changed, so each change happens while
//! other CPUs may be inside the old code, a stub, `livepatch_handler` or a
//! handler. The test thread runs on the boot CPU (the ktest runner pins it);
//! the workers are pinned, `WORKERS_PER_CPU` to each CPU, with `spawn_on`.
use super::settle;
use crate::arch::percpu::{online_cpus, smp_processor_id};
use crate::livepatch::{self, Function, Object, Patch};
use crate::module::{self, LoadError};
use crate::thread::{self, ExitStatus, LIVEPATCH_STACK_OFFSET, current_thread_info};
use crate::trace::{self, Filter, FtraceOps, FtraceRegs, OpsFlags};
use crate::{memory, time};
use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use boot::MAX_CPUS;
use core::hint::black_box;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use macros::{ktest, livepatchable, notrace};

/// Worker threads per online CPU.
const WORKERS_PER_CPU: usize = 2;

/// Bytes on the current thread's livepatch stack.
#[notrace]
fn livepatch_depth() -> u64 {
    let info = current_thread_info();
    // Safety: the current thread's own thread_info.
    unsafe { (*info).livepatch_sp - info as u64 - LIVEPATCH_STACK_OFFSET as u64 }
}

/// Entries on the current thread's function-graph return stack.
#[notrace]
fn graph_depth() -> u64 {
    // Safety: the current thread's own thread_info.
    unsafe { (*current_thread_info()).graph_depth }
}

/// A worker thread pinned to `cpu`.
struct Worker {
    cpu: usize,
    id: u64,
    join: Box<dyn FnOnce() -> ExitStatus>,
}

/// Starts `WORKERS_PER_CPU` threads pinned to each online CPU, each running `work(cpu)`.
fn on_every_cpu(name: &str, work: fn(usize)) -> Vec<Worker> {
    let limit = crate::ktest::DEFAULT_DEADLINE_SECONDS + 5;
    let until = crate::arch::registers::timebase() + crate::time::milliseconds_to_timebase(limit * 1000);
    WORKERS_UNTIL.store(until, Ordering::Relaxed);
    online_cpus()
        .iter()
        .flat_map(|cpu| (0..WORKERS_PER_CPU).map(move |_| cpu))
        .map(|cpu| {
            let handle = thread::spawn_on(cpu, name, move || work(cpu)).expect("room for a worker thread");
            Worker { cpu, id: handle.id, join: Box::new(move || handle.join()) }
        })
        .collect()
}

/// Joins every worker; each must have returned.
fn join_all(workers: Vec<Worker>) {
    for worker in workers {
        assert_eq!((worker.join)(), ExitStatus::Returned, "the worker on CPU {} returned", worker.cpu);
    }
}

/// Counts a worker that does not run on the CPU it was pinned to.
#[notrace]
fn check_cpu(cpu: usize, wrong: &AtomicU64) {
    if smp_processor_id() != cpu {
        wrong.fetch_add(1, Ordering::SeqCst);
    }
}

/// When workers stop on their own, whatever their flag says: a test that
/// fails ends its thread without setting the flag (panics do not unwind), and
/// workers spinning on every CPU would spoil every case after it. Set by
/// `on_every_cpu` to a little past the watchdog's deadline.
static WORKERS_UNTIL: AtomicU64 = AtomicU64::new(0);

/// Whether a worker goes on: its test has not said stop, and its time is not up.
fn keep_going(done: &AtomicBool) -> bool {
    !done.load(Ordering::SeqCst) && crate::arch::registers::timebase() < WORKERS_UNTIL.load(Ordering::Relaxed)
}

/// Unloads `name`, retrying while a thread (on any CPU) may still be inside
/// it; returns how often it was busy. Gives up after many tries, so that a
/// scan that can never succeed fails the test instead of hanging it.
fn unload_when_idle(name: &str) -> u64 {
    for busy in 0..1_000 {
        match module::unload(name) {
            Ok(()) => return busy,
            Err(LoadError::Busy(..)) => thread::yield_now(),
            // Its disable transition is left to the worker (a worker thread
            // was preempted, or `livepatch.transition_wait=0`): wait for it.
            Err(LoadError::InTransition(..)) => settle::wait(),
            Err(other) => panic!("unload {name}: {other}"),
        }
    }
    panic!("{name} stayed busy for 1000 tries");
}

// ---- 1. Patching and module loading while every CPU calls the code ------------

#[livepatchable]
fn stressed_original(value: u64) -> u64 {
    black_box(value * 2)
}

#[inline(never)]
fn stressed_replacement(value: u64) -> u64 {
    black_box(value * 3)
}

const STRESSED: &str = "kernel::tests::smp_stress::stressed_original";
const ORIGINAL_GREETING: &str = "hello from the original kernel";
const MODULE_GREETING: &str = "hello from the greeting patch module";

static STRESS_DONE: AtomicBool = AtomicBool::new(false);
static STRESS_OLD: AtomicU64 = AtomicU64::new(0);
static STRESS_NEW: AtomicU64 = AtomicU64::new(0);
static STRESS_WRONG: AtomicU64 = AtomicU64::new(0);
static STRESS_FROM_MODULE: AtomicU64 = AtomicU64::new(0);
static STRESS_UNBALANCED: AtomicU64 = AtomicU64::new(0);
static STRESS_CALLS_ON: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

/// A worker of the patch stress test: calls the patched function and the
/// function the greeting module replaces until told to stop, sorting every
/// result into old, new or wrong.
fn call_patched_functions(cpu: usize) {
    check_cpu(cpu, &STRESS_WRONG);
    let mut value = cpu as u64 + 1;
    while keep_going(&STRESS_DONE) {
        value = value.wrapping_add(7) % 1000 + 1;
        match stressed_original(black_box(value)) {
            result if result == value * 2 => STRESS_OLD.fetch_add(1, Ordering::Relaxed),
            result if result == value * 3 => STRESS_NEW.fetch_add(1, Ordering::Relaxed),
            _ => STRESS_WRONG.fetch_add(1, Ordering::SeqCst),
        };
        match crate::shell::greeting() {
            MODULE_GREETING => STRESS_FROM_MODULE.fetch_add(1, Ordering::Relaxed),
            ORIGINAL_GREETING => 0,
            _ => STRESS_WRONG.fetch_add(1, Ordering::SeqCst),
        };
        STRESS_CALLS_ON[smp_processor_id()].fetch_add(1, Ordering::Relaxed);
        if livepatch_depth() != 0 {
            // Between calls no livepatch frame may be left behind.
            STRESS_UNBALANCED.fetch_add(1, Ordering::SeqCst);
        }
        // Outside both functions: a transition may switch this thread here.
        crate::livepatch::safe_point();
    }
    check_cpu(cpu, &STRESS_WRONG);
}

#[ktest]
fn patching_500_times_and_loading_100_modules_while_every_cpu_calls_them() {
    for counter in [&STRESS_OLD, &STRESS_NEW, &STRESS_WRONG, &STRESS_FROM_MODULE, &STRESS_UNBALANCED] {
        counter.store(0, Ordering::SeqCst);
    }
    STRESS_CALLS_ON.iter().for_each(|calls| calls.store(0, Ordering::SeqCst));
    STRESS_DONE.store(false, Ordering::SeqCst);
    let cpus = online_cpus();
    assert!(cpus.len() > 1, "an SMP test needs several CPUs online; {} is", cpus.len());
    let greeting = module::embedded::find("greeting").expect("the test kernel embeds the samples");
    livepatch::add(Patch {
        name: String::from("smp-stress"),
        objects: vec![Object {
            module: None,
            functions: vec![Function {
                old_name: String::from(STRESSED),
                old_position: None,
                new_address: stressed_replacement as *const () as u64,
                allow_inlined: false,
            }],
            ..Default::default()
        }],
        ..Default::default()
    })
    .expect("adds");
    let workers = on_every_cpu("smp-stress", call_patched_functions);
    time::set_jitter(0x2545_f491_4f6c_dd1d);
    // Enables `smp-stress`, and loads the greeting module every fifth round,
    // then undoes both; returns how often the module was busy.
    let round = |round: u64| {
        settle::enable("smp-stress").expect("enables");
        if round.is_multiple_of(5) {
            settle::load(greeting).expect("the greeting module loads");
        }
        thread::yield_now();
        settle::disable("smp-stress").expect("disables");
        let busy = if round.is_multiple_of(5) { unload_when_idle("greeting") } else { 0 };
        thread::yield_now();
        busy
    };
    // Warm up with the workers running: first-use allocations and tables
    // that grow once and stay (104 bytes in the first 50 rounds) are not leaks.
    (0..50).for_each(|number| {
        round(number);
    });
    // A transition worker (started when a round's transition was left
    // pending) has a stack until it ends: measured without one.
    settle::worker_gone();
    let (heap_before, _) = memory::usage();
    let busy: u64 = (0..500).map(round).sum();
    time::set_jitter(0);
    settle::worker_gone();
    let heap_after = memory::usage().0;
    STRESS_DONE.store(true, Ordering::SeqCst);
    join_all(workers);
    livepatch::remove("smp-stress").expect("disabled");

    let (old, new, from_module) = (
        STRESS_OLD.load(Ordering::SeqCst),
        STRESS_NEW.load(Ordering::SeqCst),
        STRESS_FROM_MODULE.load(Ordering::SeqCst),
    );
    crate::println!("smp stress: {old} old, {new} new, {from_module} from the module, unload busy {busy} times");
    assert_eq!(STRESS_WRONG.load(Ordering::SeqCst), 0, "only old or new results, each worker on its own CPU");
    assert!(old > 0 && new > 0, "both the original and the replacement ran: {old} old, {new} new");
    assert!(from_module > 0, "the module's replacement ran");
    for cpu in cpus.iter() {
        assert!(STRESS_CALLS_ON[cpu].load(Ordering::SeqCst) > 0, "CPU {cpu} called the functions");
    }
    assert_eq!(STRESS_UNBALANCED.load(Ordering::SeqCst), 0, "no livepatch frame was left between calls");
    assert!(thread::snapshot().iter().all(|summary| summary.livepatch_depth == 0), "every livepatch stack balanced");
    assert!(module::summaries().is_empty());
    assert_eq!(heap_after, heap_before, "every heap byte of 500 enables and 100 module loads went back");
}

// ---- 2. Tracers toggled while every CPU calls traced functions ----------------

#[inline(never)]
fn toggled_leaf(value: u64) -> u64 {
    black_box(value ^ 0x5a)
}

#[inline(never)]
fn toggled_top(value: u64) -> u64 {
    black_box(toggled_leaf(value) + toggled_leaf(value + 1))
}

const TOGGLED: &str = "*tests::smp_stress::toggled_*";

static TOGGLE_DONE: AtomicBool = AtomicBool::new(false);
static TOGGLE_WRONG: AtomicU64 = AtomicU64::new(0);
/// Set before the counting ops is registered, cleared once its unregister
/// has returned: a handler run that finds it clear came too late.
static COUNTING_REGISTERED: AtomicBool = AtomicBool::new(false);
static HANDLER_RUNNING: AtomicU64 = AtomicU64::new(0);
static HANDLER_LATE: AtomicU64 = AtomicU64::new(0);
static HANDLER_CPUS: AtomicU64 = AtomicU64::new(0);
static HANDLER_CALLS: AtomicU64 = AtomicU64::new(0);

/// Steps of the busy loop in the counting handler, and (three times as
/// many) in a worker between two calls of the traced pair, which runs the
/// handler three times: a worker spends about half its time in the
/// handler, so an `unregister` that did not wait for the other CPUs would
/// return while one is inside in about every second round.
const HANDLER_STEPS: u64 = 2_000;

/// Records which CPU called, and stays a while inside (see `HANDLER_STEPS`).
#[notrace]
extern "C" fn count_cpu(_ip: u64, _parent_ip: u64, _ops: &FtraceOps, _regs: &mut FtraceRegs) {
    HANDLER_RUNNING.fetch_add(1, Ordering::SeqCst);
    if !COUNTING_REGISTERED.load(Ordering::SeqCst) {
        HANDLER_LATE.fetch_add(1, Ordering::SeqCst);
    }
    HANDLER_CPUS.fetch_or(1 << smp_processor_id(), Ordering::Relaxed);
    HANDLER_CALLS.fetch_add(1, Ordering::Relaxed);
    for step in 0..HANDLER_STEPS {
        black_box(step);
    }
    HANDLER_RUNNING.fetch_sub(1, Ordering::SeqCst);
}

static COUNTING: FtraceOps = FtraceOps::new("smp-stress-counting", count_cpu, OpsFlags::RECURSION_SAFE);

/// A worker of the tracer test: calls the traced pair until told to stop.
fn call_traced_functions(cpu: usize) {
    check_cpu(cpu, &TOGGLE_WRONG);
    let mut value = cpu as u64;
    while keep_going(&TOGGLE_DONE) {
        value = value.wrapping_add(1);
        if toggled_top(black_box(value)) != (value ^ 0x5a) + ((value + 1) ^ 0x5a) {
            TOGGLE_WRONG.fetch_add(1, Ordering::SeqCst);
        }
        if graph_depth() != 0 || livepatch_depth() != 0 {
            TOGGLE_WRONG.fetch_add(1, Ordering::SeqCst);
        }
        for step in 0..3 * HANDLER_STEPS {
            black_box(step);
        }
    }
    check_cpu(cpu, &TOGGLE_WRONG);
}

#[ktest]
fn tracers_toggled_100_times_while_every_cpu_calls_traced_functions() {
    for counter in [&TOGGLE_WRONG, &HANDLER_RUNNING, &HANDLER_LATE, &HANDLER_CPUS, &HANDLER_CALLS] {
        counter.store(0, Ordering::SeqCst);
    }
    TOGGLE_DONE.store(false, Ordering::SeqCst);
    let cpus = online_cpus();
    assert!(cpus.len() > 1, "an SMP test needs several CPUs online; {} is", cpus.len());
    let workers = on_every_cpu("smp-traced", call_traced_functions);
    let worker_ids: Vec<u64> = workers.iter().map(|worker| worker.id).collect();
    let traced: [u64; 2] = [toggled_leaf as *const () as u64, toggled_top as *const () as u64];
    let mut still_running = 0;
    let mut copied = 0;
    for round in 0..100 {
        COUNTING_REGISTERED.store(true, Ordering::SeqCst);
        assert_eq!(trace::register(&COUNTING, Filter::Glob(TOGGLED)).expect("traceable"), 2);
        trace::function::start(TOGGLED).expect("traceable");
        trace::graph::start(TOGGLED).expect("traceable");
        thread::yield_now();
        if round % 10 == 0 {
            // A copy while every CPU writes: every event is one of the workers'
            // calls of the two traced functions, none torn or invented.
            let recorded = trace::function::recorded();
            for (_, event) in &recorded.events {
                let function = trace::site_table().function_of(event.ip);
                if !worker_ids.contains(&event.thread) || !function.is_some_and(|entry| traced.contains(&entry)) {
                    TOGGLE_WRONG.fetch_add(1, Ordering::SeqCst);
                }
            }
            copied += recorded.events.len();
        }
        trace::graph::stop().expect("on");
        trace::function::stop().expect("on");
        trace::unregister(&COUNTING).expect("registered");
        // unregister returns once no CPU can be inside the handler any more.
        // The flag first, then the count (both SeqCst): a handler that began
        // after the unregister either sees the flag down (HANDLER_LATE) or
        // raised the count before this load, which then sees it.
        COUNTING_REGISTERED.store(false, Ordering::SeqCst);
        still_running += HANDLER_RUNNING.load(Ordering::SeqCst);
        thread::yield_now();
    }
    TOGGLE_DONE.store(true, Ordering::SeqCst);
    join_all(workers);
    assert_eq!(TOGGLE_WRONG.load(Ordering::SeqCst), 0, "right results, graph stacks empty between calls");
    assert_eq!(still_running, 0, "a handler was still running on another CPU after unregister returned");
    assert_eq!(HANDLER_LATE.load(Ordering::SeqCst), 0, "the handler ran after its unregister returned");
    let seen = HANDLER_CPUS.load(Ordering::SeqCst);
    assert_eq!(seen, cpus.bits(), "calls from every CPU reached the handler: {seen:#b}");
    assert!(HANDLER_CALLS.load(Ordering::SeqCst) > 100);
    assert!(copied > 0, "the copies taken while tracing held events");
}

// ---- 3. function_graph on every CPU at once ----------------------------------

#[inline(never)]
fn graphed_leaf(value: u64) -> u64 {
    black_box(value + 1)
}

#[inline(never)]
fn graphed_middle(value: u64) -> u64 {
    black_box(graphed_leaf(value) * 2)
}

#[inline(never)]
fn graphed_top(value: u64) -> u64 {
    let first = graphed_leaf(value);
    let second = graphed_middle(first);
    black_box(graphed_leaf(second))
}

/// Calls of the tree per worker.
const TREES: usize = 20;
/// One call of `graphed_top` as the graph shows it, after the CPU column.
const TREE: [&str; 7] = [
    "|  kernel::tests::smp_stress::graphed_top() {",
    "|    kernel::tests::smp_stress::graphed_leaf();",
    "|    kernel::tests::smp_stress::graphed_middle() {",
    "|      kernel::tests::smp_stress::graphed_leaf();",
    "|    } /* kernel::tests::smp_stress::graphed_middle */",
    "|    kernel::tests::smp_stress::graphed_leaf();",
    "|  } /* kernel::tests::smp_stress::graphed_top */",
];

static GRAPH_GO: AtomicBool = AtomicBool::new(false);
static GRAPH_WRONG: AtomicU64 = AtomicU64::new(0);
static GRAPH_READY: AtomicU64 = AtomicU64::new(0);

/// A worker of the graph test: waits for the start, then calls the tree `TREES` times.
fn run_graphed_trees(cpu: usize) {
    check_cpu(cpu, &GRAPH_WRONG);
    GRAPH_READY.fetch_add(1, Ordering::SeqCst);
    // Every worker starts at once, so the trees on different CPUs overlap.
    while !GRAPH_GO.load(Ordering::SeqCst) {
        if !keep_going(&AtomicBool::new(false)) {
            return;
        }
        thread::yield_now();
    }
    for tree in 0..TREES as u64 {
        if graphed_top(black_box(tree)) != ((tree + 1) + 1) * 2 + 1 {
            GRAPH_WRONG.fetch_add(1, Ordering::SeqCst);
        }
    }
    if graph_depth() != 0 {
        GRAPH_WRONG.fetch_add(1, Ordering::SeqCst);
    }
    check_cpu(cpu, &GRAPH_WRONG);
}

#[ktest]
fn function_graph_on_every_cpu_at_once_draws_each_threads_tree_whole() {
    GRAPH_GO.store(false, Ordering::SeqCst);
    GRAPH_WRONG.store(0, Ordering::SeqCst);
    GRAPH_READY.store(0, Ordering::SeqCst);
    let cpus = online_cpus();
    assert!(cpus.len() > 1, "an SMP test needs several CPUs online; {} is", cpus.len());
    assert_eq!(trace::graph::start("*tests::smp_stress::graphed_*").expect("traceable"), 3);
    let workers = on_every_cpu("smp-graph", run_graphed_trees);
    while GRAPH_READY.load(Ordering::SeqCst) < workers.len() as u64 {
        thread::yield_now();
    }
    GRAPH_GO.store(true, Ordering::SeqCst);
    let threads: Vec<(usize, u64)> = workers.iter().map(|worker| (worker.cpu, worker.id)).collect();
    join_all(workers);
    trace::graph::stop().expect("on");
    assert_eq!(GRAPH_WRONG.load(Ordering::SeqCst), 0, "right results, each worker on its CPU, stack empty at the end");
    let (events, lost) = trace::graph::events();
    assert_eq!(lost, 0, "the rings had room for every event");
    let event_cpus = events.iter().fold(0u64, |set, (cpu, _)| set | 1 << cpu);
    assert_eq!(event_cpus, cpus.bits(), "every CPU recorded events: {event_cpus:#b}");
    for (cpu, id) in threads {
        let lines = trace::graph::render(Some(id), false);
        // Three header lines, then every tree whole and in order, each line in the thread's CPU column.
        assert_eq!(lines.len(), 3 + TREES * TREE.len(), "thread {id} on CPU {cpu}: {lines:#?}");
        for (index, line) in lines[3..].iter().enumerate() {
            let (column, rest) = line.split_once(')').expect("a CPU column");
            assert_eq!(column.trim().parse::<usize>().ok(), Some(cpu), "thread {id}: {line}");
            assert_eq!(rest.trim_start(), TREE[index % TREE.len()], "thread {id} on CPU {cpu}, line {index}");
        }
    }
    trace::graph::clear();
}
