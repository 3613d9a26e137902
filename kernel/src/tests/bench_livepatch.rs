//! Livepatch benchmarks: the cost of a patched call and of enabling patches.
use super::bench::Tenths;
use crate::arch::percpu::{online_cpus, smp_processor_id};
use crate::arch::registers::timebase;
use crate::arch::smp::confer;
use crate::livepatch::{self, Function, Object, Patch};
use crate::thread;
use crate::trace::{self, Filter, FtraceOps, FtraceRegs, OpsFlags};
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::hint::black_box;
use core::sync::atomic::{AtomicBool, Ordering};
use macros::livepatchable;

macro_rules! targets {
    ($($name:ident),*) => {
        $(
            #[livepatchable]
            fn $name(value: u64) -> u64 {
                black_box(value + 1)
            }
        )*
        /// Names of the hundred functions a benchmark patch replaces.
        const TARGETS: &[&str] = &[$(concat!("kernel::tests::bench_livepatch::", stringify!($name))),*];
    };
}

targets!(
    target_000, target_001, target_002, target_003, target_004, target_005, target_006, target_007, target_008,
    target_009, target_010, target_011, target_012, target_013, target_014, target_015, target_016, target_017,
    target_018, target_019, target_020, target_021, target_022, target_023, target_024, target_025, target_026,
    target_027, target_028, target_029, target_030, target_031, target_032, target_033, target_034, target_035,
    target_036, target_037, target_038, target_039, target_040, target_041, target_042, target_043, target_044,
    target_045, target_046, target_047, target_048, target_049, target_050, target_051, target_052, target_053,
    target_054, target_055, target_056, target_057, target_058, target_059, target_060, target_061, target_062,
    target_063, target_064, target_065, target_066, target_067, target_068, target_069, target_070, target_071,
    target_072, target_073, target_074, target_075, target_076, target_077, target_078, target_079, target_080,
    target_081, target_082, target_083, target_084, target_085, target_086, target_087, target_088, target_089,
    target_090, target_091, target_092, target_093, target_094, target_095, target_096, target_097, target_098,
    target_099
);

#[inline(never)]
fn replacement(value: u64) -> u64 {
    black_box(value + 2)
}

fn patch(name: &str, targets: &[&str]) -> Patch {
    let functions = targets
        .iter()
        .map(|target| Function {
            old_name: String::from(*target),
            old_position: None,
            new_address: replacement as *const () as u64,
            allow_inlined: false,
        })
        .collect();
    Patch {
        name: String::from(name),
        objects: vec![Object { module: None, functions, ..Default::default() }],
        ..Default::default()
    }
}

/// (patched call minus direct call of the replacement, enable one, enable
/// hundred per function), each measured with interrupts masked by `bench`.
pub fn measure(
    loop_ticks: fn(fn()) -> u64,
    per_call_difference: fn(u64, u64) -> Tenths,
    once: fn(&mut dyn FnMut()) -> u64,
) -> (Tenths, u64, u64) {
    fn call_original() {
        black_box(target_000(black_box(1)));
    }
    fn call_replacement() {
        black_box(replacement(black_box(1)));
    }
    livepatch::add(patch("bench-one", &TARGETS[..1])).expect("unique name");
    let enable_one = once(&mut || {
        livepatch::enable("bench-one").expect("patchable");
    });
    let direct = loop_ticks(call_replacement);
    let patched = loop_ticks(call_original);
    assert_eq!(target_000(1), 3, "the patch is active");
    livepatch::disable("bench-one").expect("enabled");
    livepatch::remove("bench-one").expect("disabled");

    livepatch::add(patch("bench-hundred", TARGETS)).expect("unique name");
    let enable_hundred = once(&mut || {
        livepatch::enable("bench-hundred").expect("patchable");
    }) / TARGETS.len() as u64;
    let results: Vec<u64> = [target_000, target_050, target_099].iter().map(|target| target(1)).collect();
    assert_eq!(results, [3, 3, 3]);
    livepatch::disable("bench-hundred").expect("enabled");
    livepatch::remove("bench-hundred").expect("disabled");
    (per_call_difference(patched, direct), enable_one, enable_hundred)
}

#[macros::notrace]
extern "C" fn do_nothing(_: u64, _: u64, _: &FtraceOps, _: &mut FtraceRegs) {}
/// A do-nothing tracer on a patched function (`direct_costs`).
static TRACER: FtraceOps = FtraceOps::new("bench-patched-tracer", do_nothing, OpsFlags::RECURSION_SAFE);

/// With a one-function patch final: (the patched call on the generic path,
/// direct calls off; the patched call while a do-nothing ops also traces
/// the function, so its site calls the stub again), each minus a direct
/// call of the replacement, and the instructions of one switch of its site
/// between direct and generic (`direct::set_enabled` off then on, halved).
pub fn direct_costs(
    loop_ticks: fn(fn()) -> u64,
    per_call_difference: fn(u64, u64) -> Tenths,
    once: fn(&mut dyn FnMut()) -> u64,
) -> (Tenths, Tenths, u64) {
    fn call_original() {
        black_box(target_000(black_box(1)));
    }
    fn call_replacement() {
        black_box(replacement(black_box(1)));
    }
    livepatch::add(patch("bench-direct", &TARGETS[..1])).expect("unique name");
    livepatch::enable("bench-direct").expect("patchable");
    assert_eq!(livepatch::direct::summary().len(), 1, "the patched function is called directly");
    let direct = loop_ticks(call_replacement);

    livepatch::direct::set_enabled(false).expect("direct calls go off");
    assert!(livepatch::direct::summary().is_empty(), "no direct function while they are off");
    let generic = loop_ticks(call_original);
    assert_eq!(target_000(1), 3, "the patch is in effect on the generic path");
    livepatch::direct::set_enabled(true).expect("direct calls come back");

    trace::register(&TRACER, Filter::Names(&[TARGETS[0]])).expect("the patched function is traceable");
    let traced = loop_ticks(call_original);
    assert_eq!(target_000(1), 3, "the patch is in effect while traced");
    trace::unregister(&TRACER).expect("registered");

    let switch = once(&mut || {
        livepatch::direct::set_enabled(false).expect("direct calls go off");
        livepatch::direct::set_enabled(true).expect("direct calls come back");
    }) / 2;
    assert_eq!(livepatch::direct::summary().len(), 1, "direct again");
    livepatch::disable("bench-direct").expect("enabled");
    livepatch::remove("bench-direct").expect("disabled");
    (per_call_difference(generic, direct), per_call_difference(traced, direct), switch)
}

/// Enables and disables averaged by `enable_disable_under_load`.
const HAMMERED_ROUNDS: u64 = 20;
/// Calls of the patched function by a caller thread between two H_CONFERs.
const CALLS_PER_CONFER: u64 = 100;

/// Guest instructions of one run of `body`, interrupts masked, as
/// `bench::measured`; None if this CPU took a timer interrupt meanwhile
/// (waiting for the other CPUs cedes, and the tick may come then).
fn without_a_tick(body: &mut dyn FnMut()) -> Option<u64> {
    let _masked = crate::arch::interrupts::disable();
    let ticks_before = crate::time::ticks_here();
    let start = timebase();
    body();
    let elapsed = timebase() - start;
    (crate::time::ticks_here() == ticks_before).then(|| super::bench::instructions(elapsed))
}

/// (enable, disable) of a one-function patch, each in guest instructions of
/// one whole operation averaged over `HAMMERED_ROUNDS`, while a thread on
/// every other CPU calls the patched function in a loop (conferring its
/// CPU every `CALLS_PER_CONFER` calls). Under `-icount` with round-robin
/// TCG the figure is elapsed virtual time: the callers' instructions
/// meanwhile are counted too, as is the wait for their CPUs to synchronise.
/// A round in which a tick came is done again.
pub fn enable_disable_under_load() -> (u64, u64) {
    static DONE: AtomicBool = AtomicBool::new(false);
    DONE.store(false, Ordering::SeqCst);
    let callers: Vec<_> = online_cpus()
        .without(smp_processor_id())
        .iter()
        .map(|cpu| {
            thread::spawn_on(cpu, "bench-caller", || {
                while !DONE.load(Ordering::Relaxed) {
                    for _ in 0..CALLS_PER_CONFER {
                        black_box(target_000(black_box(1)));
                    }
                    // Under round-robin TCG a CPU that never stops starves
                    // the others (arch::smp): let the next one run.
                    confer();
                    // Outside the patched function: the transition may switch it here.
                    crate::livepatch::safe_point();
                }
            })
            .expect("room for a caller thread")
        })
        .collect();
    livepatch::add(patch("bench-hammered", &TARGETS[..1])).expect("unique name");
    let (mut enable, mut disable, mut rounds) = (0, 0, 0);
    while rounds < HAMMERED_ROUNDS {
        let enabled = without_a_tick(&mut || {
            livepatch::enable("bench-hammered").expect("patchable");
        });
        let disabled = without_a_tick(&mut || {
            livepatch::disable("bench-hammered").expect("enabled");
        });
        if let (Some(enabled), Some(disabled)) = (enabled, disabled) {
            enable += enabled;
            disable += disabled;
            rounds += 1;
        }
    }
    livepatch::remove("bench-hammered").expect("disabled");
    DONE.store(true, Ordering::SeqCst);
    for caller in callers {
        caller.join();
    }
    (enable / HAMMERED_ROUNDS, disable / HAMMERED_ROUNDS)
}

/// Set to let `transition_latency`'s and `call_in_transition`'s threads go.
static RELEASE: AtomicBool = AtomicBool::new(false);

/// Sleeps until `RELEASE`: a function a thread sits in, holding a
/// transition that changes it open.
#[livepatchable]
fn bench_sleeper() {
    while !RELEASE.load(Ordering::SeqCst) {
        thread::sleep_milliseconds(1);
    }
}

/// Guest instructions from `enable` until its transition completes, for a
/// one-function patch, with `count` more threads that either sleep (in
/// 50 ms sleeps: the transition walks their saved stacks) or are `busy`
/// (call the patched function in a loop with a safe point between calls:
/// preempted by the timer, they are unreliable until they run and switch
/// themselves). The timer runs throughout (the busy threads must run to
/// switch), so the figure includes their time slices and the enabling
/// thread's 1 ms waits between rounds: it is the latency a user sees.
pub fn transition_latency(count: usize, busy: bool) -> u64 {
    RELEASE.store(false, Ordering::SeqCst);
    let threads: Vec<_> = (0..count)
        .map(|_| {
            thread::spawn("bench-transition", move || {
                while !RELEASE.load(Ordering::SeqCst) {
                    if busy {
                        black_box(target_001(black_box(1)));
                        livepatch::safe_point();
                    } else {
                        thread::sleep_milliseconds(50);
                    }
                }
            })
            .expect("room for a thread")
        })
        .collect();
    // Every thread started and, for the sleepers, asleep.
    thread::sleep_milliseconds(20);
    livepatch::add(patch("bench-transition", &TARGETS[1..2])).expect("unique name");
    let start = timebase();
    let progress = livepatch::enable("bench-transition").expect("patchable");
    if let livepatch::Progress::Pending(_) = progress {
        assert!(matches!(livepatch::wait_for_transition(10_000), livepatch::Progress::Complete));
    }
    let elapsed = timebase() - start;
    assert_eq!(target_001(1), 3, "the patch is in effect");
    livepatch::disable("bench-transition").expect("enabled");
    assert!(matches!(livepatch::wait_for_transition(10_000), livepatch::Progress::Complete));
    livepatch::remove("bench-transition").expect("disabled");
    RELEASE.store(true, Ordering::SeqCst);
    for handle in threads {
        handle.join();
    }
    super::bench::instructions(elapsed)
}

/// The patched call while its patch is in transition (a thread asleep in
/// `bench_sleeper`, which the patch also replaces, holds it open) from a
/// thread already switched, and after the transition completed, each minus
/// a direct call of the replacement: what the per-thread choice costs.
pub fn call_in_transition(
    loop_ticks: fn(fn()) -> u64,
    per_call_difference: fn(u64, u64) -> Tenths,
) -> (Tenths, Tenths) {
    fn call_original() {
        black_box(target_002(black_box(1)));
    }
    fn call_replacement() {
        black_box(replacement(black_box(1)));
    }
    #[inline(never)]
    fn sleeper_replacement() {}
    RELEASE.store(false, Ordering::SeqCst);
    let sleeper = thread::spawn("bench-sleeper", bench_sleeper).expect("room for a thread");
    thread::sleep_milliseconds(5);
    let mut patch = patch("bench-in-transition", &TARGETS[2..3]);
    patch.objects[0].functions.push(Function {
        old_name: String::from("kernel::tests::bench_livepatch::bench_sleeper"),
        old_position: None,
        new_address: sleeper_replacement as *const () as u64,
        allow_inlined: false,
    });
    livepatch::add(patch).expect("unique name");
    let progress = livepatch::enable("bench-in-transition").expect("patchable");
    assert!(matches!(progress, livepatch::Progress::Pending(_)), "the sleeper holds the transition open");
    let direct = loop_ticks(call_replacement);
    let during = loop_ticks(call_original);
    assert_eq!(target_002(1), 3, "this thread switched: it runs the replacement");
    RELEASE.store(true, Ordering::SeqCst);
    sleeper.join();
    assert!(matches!(livepatch::wait_for_transition(10_000), livepatch::Progress::Complete));
    let after = loop_ticks(call_original);
    livepatch::disable("bench-in-transition").expect("enabled");
    assert!(matches!(livepatch::wait_for_transition(10_000), livepatch::Progress::Complete));
    livepatch::remove("bench-in-transition").expect("disabled");
    (per_call_difference(during, direct), per_call_difference(after, direct))
}

/// A second replacement, for a patch on top of `patch`'s.
#[inline(never)]
fn replacement_on_top(value: u64) -> u64 {
    black_box(value + 4)
}

/// (site, replacement) of the direct functions whose replacement is one of the benchmarks'.
fn direct_replacements() -> Vec<(u64, u64)> {
    let ours = [replacement as *const () as u64, replacement_on_top as *const () as u64];
    livepatch::direct::summary()
        .into_iter()
        .filter(|&(_, replacement, _)| ours.contains(&replacement))
        .map(|(site, replacement, _)| (site, replacement))
        .collect()
}

/// Enables `name` and waits for its transition.
fn enable_final(name: &str) {
    if let livepatch::Progress::Pending(_) = livepatch::enable(name).expect("patchable") {
        assert!(matches!(livepatch::wait_for_transition(10_000), livepatch::Progress::Complete));
    }
}

/// Disables `name`, waits for its transition and removes it.
fn disable_and_remove(name: &str) {
    if let livepatch::Progress::Pending(_) = livepatch::disable(name).expect("enabled") {
        assert!(matches!(livepatch::wait_for_transition(10_000), livepatch::Progress::Complete));
    }
    livepatch::remove(name).expect("disabled");
}

#[macros::ktest]
fn direct_batches_keep_the_sites_that_stay_and_move_the_ones_that_change() {
    // The batches `enable_hundred` measures: a patch on four functions, then
    // one on top of two of them. The two that change leave direct calls
    // while the others stay, and come back with their new replacement.
    let (first, on_top) = (replacement as *const () as u64, replacement_on_top as *const () as u64);
    let (live_before, _) = livepatch::direct::slots_in_use();
    livepatch::add(patch("direct-batch-below", &TARGETS[10..14])).expect("unique name");
    enable_final("direct-batch-below");
    let below = direct_replacements();
    assert_eq!(below.len(), 4, "every final function is called directly: {below:x?}");
    assert!(below.iter().all(|&(_, replacement)| replacement == first));
    assert!(below.is_sorted(), "summary is by site");

    let mut top = patch("direct-batch-top", &[TARGETS[11], TARGETS[13]]);
    for function in &mut top.objects[0].functions {
        function.new_address = on_top;
    }
    livepatch::add(top).expect("unique name");
    enable_final("direct-batch-top");
    let both = direct_replacements();
    let expected: Vec<(u64, u64)> = below
        .iter()
        .enumerate()
        .map(|(index, &(site, _))| (site, if index % 2 == 1 { on_top } else { first }))
        .collect();
    assert_eq!(both, expected, "the two that stayed kept their trampolines, the two that changed have new ones");
    assert_eq!(livepatch::direct::slots_in_use().0, live_before + 4, "one live slot per direct function, none leaked");
    let results: Vec<u64> = [target_010, target_011, target_012, target_013].iter().map(|target| target(1)).collect();
    assert_eq!(results, [3, 5, 3, 5]);

    disable_and_remove("direct-batch-top");
    assert_eq!(direct_replacements(), below, "back to the patch below, every one direct");
    assert_eq!(target_011(1), 3);
    disable_and_remove("direct-batch-below");
    assert!(direct_replacements().is_empty(), "no trampoline left for a patch that went");
    assert_eq!(livepatch::direct::slots_in_use().0, live_before, "every slot freed");
    assert_eq!(target_011(1), 2);
}
