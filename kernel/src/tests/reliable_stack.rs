//! Tests of the reliable stack walk (`arch::stacktrace`) on real threads: the caller, a yielding thread, a preempted one, one inside a livepatch replacement, one under function_graph.
use super::livepatch::{enable, retire};
use crate::arch::livepatch::LivepatchFrame;
use crate::arch::percpu::BOOT_CPU;
use crate::arch::registers::stack_pointer;
use crate::arch::smp::stop_machine;
use crate::arch::stacktrace::{Reason, Unreliable, walk_reliable, walk_reliable_current};
use crate::arch::thread_info::stack_bounds;
use crate::module;
use crate::symbols;
use crate::thread::{self, ExitStatus, LIVEPATCH_STACK_OFFSET, LiveStack, ThreadInfo};
use crate::trace::graph;
use alloc::string::String;
use alloc::vec::Vec;
use boot::THREAD_SIZE;
use core::hint::black_box;
use core::ops::Range;
use core::sync::atomic::{AtomicU64, Ordering};
use macros::{ktest, livepatchable};

/// Walks of a thread tried before a test gives up waiting for the state it wants.
const TRIES: usize = 2000;

/// The memory of every loaded module, read before the machine is stopped
/// (the module list's lock may be held by a CPU the stop parks).
fn module_memory() -> Vec<Range<u64>> {
    module::summaries().into_iter().map(|(_, address, size, _)| address..address + size as u64).collect()
}

/// The walk of every live thread switched out now, as (thread, walk), with
/// the machine stopped so none of them is switched in meanwhile. Leaves out
/// the idle thread of a CPU that never came online (it has no frames).
fn walk_switched_out() -> Vec<(u64, Result<Vec<u64>, Unreliable>)> {
    let modules = module_memory();
    let module_text = |address: u64| modules.iter().any(|memory| memory.contains(&address));
    stop_machine(|| {
        let mut walks = Vec::new();
        for stack in thread::live_stacks(stack_pointer()) {
            if let LiveStack::SwitchedOut { base, stack_pointer } = stack
                && stack_pointer != base + THREAD_SIZE as u64
            {
                // Safety: a live thread's stack base holds its thread_info.
                let thread = unsafe { (*(base as *const ThreadInfo)).thread_id };
                let returns = graph::return_addresses(base);
                walks.push((thread, walk_reliable(base, stack_pointer, &returns, &module_text)));
            }
        }
        walks
    })
}

/// The walk of thread `id` if it is switched out now; None while it runs.
fn walk_thread(id: u64) -> Option<Result<Vec<u64>, Unreliable>> {
    walk_switched_out().into_iter().find(|(thread, _)| *thread == id).map(|(_, walk)| walk)
}

/// Walks thread `id` until the walk is reliable (sleeping 1 ms between
/// tries); every unreliable walk on the way must be one the timer caused
/// (`ExceptionFrame`). Returns the names of the functions on its stack,
/// innermost first.
fn reliable_names(id: u64) -> Vec<String> {
    for _ in 0..TRIES {
        match walk_thread(id) {
            Some(Ok(returns)) => return names(&returns),
            Some(Err(unreliable)) => {
                assert_eq!(
                    unreliable.reason,
                    Reason::ExceptionFrame,
                    "only a tick may make it unreliable: {unreliable:?}"
                )
            }
            None => {}
        }
        thread::sleep_milliseconds(1);
    }
    panic!("thread {id} was never switched out at a point where its stack is reliable");
}

/// The function each return address lies in ("?" outside the kernel's symbols).
fn names(returns: &[u64]) -> Vec<String> {
    let table = symbols::table().expect("xtask fills the symbol table");
    returns.iter().map(|&address| String::from(table.lookup(address).map_or("?", |(symbol, _)| symbol.name))).collect()
}

/// The position of the first name ending in `function` (a path's last part), if any.
fn position(names: &[String], function: &str) -> Option<usize> {
    names.iter().position(|name| name.rsplit("::").next() == Some(function))
}

/// Asserts that `functions` appear in `names` in this order (innermost first).
fn assert_in_order(names: &[String], functions: &[&str]) {
    let positions: Vec<_> = functions.iter().map(|function| position(names, function)).collect();
    assert!(
        positions.iter().all(Option::is_some) && positions.is_sorted(),
        "{functions:?} in this order in the walk {names:?}"
    );
}

// ---- The classifier ----------------------------------------------------------------

#[ktest]
fn the_classifier_knows_each_kind_of_return_address() {
    use crate::arch::stacktrace::{Kind, classify};
    let module = 0x7000_0000;
    let module_text = |address: u64| address == module;
    // Safety: tables the assembler wrote, never changed.
    let (returned, thread_entries, boot_entries) = unsafe {
        (
            crate::arch::livepatch::livepatch_handler_windows.returned,
            crate::arch::context::thread_start_returns,
            boot::boot_entry_returns,
        )
    };
    let handler = crate::arch::livepatch::livepatch_handler as *const () as u64;
    // Safety: a word the assembler wrote, never changed.
    let exception_return = unsafe { crate::arch::exceptions::exception_dispatch_return };
    let here = the_classifier_knows_each_kind_of_return_address as *const () as u64 + 8;
    let cases = [
        (exception_return, Kind::ExceptionReturn),
        (handler + returned, Kind::LivepatchReturn),
        (handler, Kind::LivepatchWindow),
        (handler + returned - 4, Kind::LivepatchWindow),
        (handler + returned + 4, Kind::LivepatchWindow),
        (crate::arch::ftrace::return_to_handler as *const () as u64, Kind::GraphReturn),
        (crate::arch::ftrace::ftrace_caller as *const () as u64 + 4, Kind::Ftrace),
        (crate::arch::ftrace::ftrace_regs_caller as *const () as u64 + 4, Kind::Ftrace),
        (&raw const crate::arch::ftrace::ftrace_call as u64 + 4, Kind::Ftrace),
        (thread_entries[0], Kind::ThreadEntry),
        (thread_entries[1], Kind::ThreadEntry),
        (boot_entries[0], Kind::ThreadEntry),
        (boot_entries[1], Kind::ThreadEntry),
        (here, Kind::Text),
        (module, Kind::Text),
        (module + 4, Kind::Unknown),
        (0x10, Kind::Unknown),
        (&raw const STARTED as u64, Kind::Unknown),
    ];
    for (address, kind) in cases {
        assert_eq!(classify(address, &module_text), kind, "{address:#x}");
    }
}

// ---- The calling thread -------------------------------------------------------------

#[inline(never)]
fn walks_itself() -> Result<Vec<u64>, Unreliable> {
    let (base, _) = stack_bounds(stack_pointer());
    let walk = walk_reliable_current(&graph::return_addresses(base), &|_| false);
    black_box(walk)
}

#[inline(never)]
fn calls_the_walk() -> Result<Vec<u64>, Unreliable> {
    black_box(walks_itself())
}

#[ktest]
fn the_calling_thread_walks_reliably_through_its_callers() {
    let returns = calls_the_walk().expect("the caller's own stack is reliable");
    let names = names(&returns);
    assert_eq!(names.first().map(String::as_str), Some("kernel::tests::reliable_stack::walks_itself"), "{names:?}");
    assert_in_order(
        &names,
        &["walks_itself", "calls_the_walk", "the_calling_thread_walks_reliably_through_its_callers"],
    );
    assert!(!names.iter().any(|name| name == "?"), "every return is kernel text: {names:?}");
}

// ---- A thread switched out by yield_now --------------------------------------------

static YIELDING: AtomicU64 = AtomicU64::new(0);
/// Threads that got to where the test wants them (a new thread's stack,
/// before it first runs, is only its entry: reliable and empty).
static STARTED: AtomicU64 = AtomicU64::new(0);

/// Sleeps until `count` threads have started.
fn wait_for_started(count: u64) {
    while STARTED.load(Ordering::SeqCst) < count {
        thread::sleep_milliseconds(1);
    }
}

#[inline(never)]
fn yields_three() -> u64 {
    STARTED.fetch_add(1, Ordering::SeqCst);
    while YIELDING.load(Ordering::SeqCst) != 0 {
        thread::yield_now();
    }
    black_box(3)
}

#[inline(never)]
fn yields_two() -> u64 {
    black_box(yields_three()) + 1
}

#[inline(never)]
fn yields_one() -> u64 {
    black_box(yields_two()) + 1
}

#[ktest]
fn a_thread_switched_out_by_yield_now_walks_reliably_through_its_calls() {
    YIELDING.store(1, Ordering::SeqCst);
    STARTED.store(0, Ordering::SeqCst);
    // Two of them on one CPU: each yields to the other, so one is always switched out.
    let spawn = || {
        thread::spawn_on(BOOT_CPU, "yielder", || {
            black_box(yields_one());
        })
        .expect("room for a thread")
    };
    let (first, second) = (spawn(), spawn());
    wait_for_started(2);
    let names = reliable_names(first.id);
    YIELDING.store(0, Ordering::SeqCst);
    assert_eq!(first.join(), ExitStatus::Returned);
    assert_eq!(second.join(), ExitStatus::Returned);
    assert_in_order(&names, &["schedule", "yields_three", "yields_two", "yields_one"]);
}

// ---- A thread the timer preempted ----------------------------------------------

static SPINNING: AtomicU64 = AtomicU64::new(0);

#[ktest]
fn a_thread_preempted_by_the_timer_is_unreliable_for_its_exception_frame() {
    SPINNING.store(1, Ordering::SeqCst);
    STARTED.store(0, Ordering::SeqCst);
    // Two spinners that call nothing on one CPU: only the timer switches
    // them, so whichever is switched out has an interrupt frame on its stack.
    let spin = || {
        thread::spawn_on(BOOT_CPU, "spinner", || {
            STARTED.fetch_add(1, Ordering::SeqCst);
            while SPINNING.load(Ordering::Relaxed) != 0 {
                core::hint::spin_loop();
            }
        })
        .expect("room for a thread")
    };
    let (first, second) = (spin(), spin());
    wait_for_started(2);
    let mut walk = None;
    for _ in 0..TRIES {
        walk = walk_thread(first.id).or_else(|| walk_thread(second.id));
        if walk.is_some() {
            break;
        }
        thread::sleep_milliseconds(1);
    }
    SPINNING.store(0, Ordering::SeqCst);
    assert_eq!(first.join(), ExitStatus::Returned);
    assert_eq!(second.join(), ExitStatus::Returned);
    let unreliable = walk.expect("a spinner was switched out").expect_err("a preempted spinner is unreliable");
    assert_eq!(unreliable.reason, Reason::ExceptionFrame, "{unreliable:?}");
    assert!(crate::arch::exceptions::is_interrupt_frame(unreliable.address), "{unreliable:?}");
}

// ---- A thread inside a livepatch replacement ----------------------------------------

static PARKED: AtomicU64 = AtomicU64::new(0);
static RELEASE: AtomicU64 = AtomicU64::new(0);

/// Replaced by `parks_in_the_replacement` while the test runs.
#[livepatchable]
fn patched_for_the_walk() -> u64 {
    black_box(1)
}

/// Sleeps until RELEASE is set.
#[inline(never)]
fn parks() {
    PARKED.fetch_add(1, Ordering::SeqCst);
    while RELEASE.load(Ordering::SeqCst) == 0 {
        thread::sleep_milliseconds(1);
    }
}

#[inline(never)]
extern "C" fn parks_in_the_replacement() -> u64 {
    parks();
    black_box(2)
}

#[inline(never)]
fn calls_the_patched_function() -> u64 {
    black_box(patched_for_the_walk()) + 1
}

/// Sleeps until `count` threads are parked.
fn wait_for_parked(count: u64) {
    while PARKED.load(Ordering::SeqCst) < count {
        thread::sleep_milliseconds(1);
    }
}

/// Walks the parked thread `id` (asleep in the replacement, one livepatch
/// frame deep) with its livepatch frame's marker overwritten, then with its
/// livepatch stack's top in the middle of that frame, putting each back
/// before the thread could run: both walks, as (reason or Ok), in that order.
fn corrupt_livepatch_stack(id: u64) -> (Result<(), Unreliable>, Result<(), Unreliable>) {
    let modules = module_memory();
    let module_text = |address: u64| modules.iter().any(|memory| memory.contains(&address));
    let mut walks = Vec::new();
    for corruption in [core::mem::offset_of!(LivepatchFrame, marker), 0] {
        let walk = stop_machine(|| {
            let (base, stack_pointer) = thread::live_stacks(stack_pointer())
                .into_iter()
                .find_map(|stack| match stack {
                    // Safety: a live thread's stack base holds its thread_info.
                    LiveStack::SwitchedOut { base, stack_pointer }
                        if unsafe { (*(base as *const ThreadInfo)).thread_id } == id =>
                    {
                        Some((base, stack_pointer))
                    }
                    _ => None,
                })
                .expect("the parked thread is asleep");
            let info = base as *mut ThreadInfo;
            let frame = base + LIVEPATCH_STACK_OFFSET as u64;
            // Safety: the thread is switched out and stays so while the
            // machine is stopped; its one livepatch frame lies at `frame`,
            // and both words are put back below before it can run.
            unsafe {
                let word = if corruption == 0 {
                    &raw mut (*info).livepatch_sp
                } else {
                    (frame + corruption as u64) as *mut u64
                };
                let saved = *word;
                *word = if corruption == 0 { saved - 8 } else { !saved };
                let walk = walk_reliable(base, stack_pointer, &graph::return_addresses(base), &module_text);
                *word = saved;
                walk.map(drop)
            }
        });
        walks.push(walk);
    }
    (walks[0], walks[1])
}

#[ktest]
fn a_thread_inside_a_replacement_walks_reliably_through_the_livepatch_stack() {
    PARKED.store(0, Ordering::SeqCst);
    RELEASE.store(0, Ordering::SeqCst);
    let replacement = parks_in_the_replacement as *const () as u64;
    enable("walk-park", &[("kernel::tests::reliable_stack::patched_for_the_walk", None, replacement)]).unwrap();
    let parked = thread::spawn_on(BOOT_CPU, "in-replacement", || {
        black_box(calls_the_patched_function());
    })
    .expect("room for a thread");
    wait_for_parked(1);
    let names = reliable_names(parked.id);
    let (marker, misaligned) = corrupt_livepatch_stack(parked.id);
    RELEASE.store(1, Ordering::SeqCst);
    assert_eq!(parked.join(), ExitStatus::Returned);
    retire("walk-park");
    assert_eq!(
        marker.map_err(|unreliable| unreliable.reason),
        Err(Reason::LivepatchStackCorrupt),
        "a marker overwritten"
    );
    assert_eq!(
        misaligned.map_err(|unreliable| unreliable.reason),
        Err(Reason::LivepatchStackCorrupt),
        "a top mid-frame"
    );
    // The replacement returns into livepatch_handler; its livepatch frame
    // holds the return into the caller, which the walk reports in its place.
    assert_in_order(&names, &["parks", "parks_in_the_replacement", "calls_the_patched_function"]);
    assert!(position(&names, "livepatch_handler").is_none(), "{names:?}");
}

// ---- A thread under function_graph ------------------------------------------------

/// Traced by the graph tracer in the test below: sleeps until RELEASE is set.
#[inline(never)]
fn graphed_inner() -> u64 {
    parks();
    black_box(1)
}

#[inline(never)]
fn graphed_outer() -> u64 {
    black_box(graphed_inner()) + 1
}

#[ktest]
fn a_thread_under_function_graph_walks_reliably_through_the_return_stack() {
    PARKED.store(0, Ordering::SeqCst);
    RELEASE.store(0, Ordering::SeqCst);
    assert_eq!(graph::start("*tests::reliable_stack::graphed_*").unwrap(), 2);
    let parked = thread::spawn_on(BOOT_CPU, "under-graph", || {
        black_box(graphed_outer());
    })
    .expect("room for a thread");
    wait_for_parked(1);
    let names = reliable_names(parked.id);
    RELEASE.store(1, Ordering::SeqCst);
    assert_eq!(parked.join(), ExitStatus::Returned);
    graph::stop().unwrap();
    // Both hooked functions return into return_to_handler; the return stack
    // holds their real returns, which the walk reports in their place.
    assert_in_order(&names, &["parks", "graphed_inner", "graphed_outer"]);
    assert!(position(&names, "return_to_handler").is_none(), "{names:?}");
}

// ---- Every thread ---------------------------------------------------------------------

#[ktest]
fn every_switched_out_thread_walks_reliably_unless_the_timer_preempted_it() {
    // Idle threads (from the boot code), the test runner, whatever else is
    // alive: each ends at its outermost frame.
    let walks = walk_switched_out();
    assert!(!walks.is_empty());
    for (thread, walk) in walks {
        if let Err(unreliable) = walk {
            assert_eq!(unreliable.reason, Reason::ExceptionFrame, "thread {thread}: {unreliable:?}");
        }
    }
}
