//! Tests of dynamic ftrace: the site table, patching, the handler's view, IPMODIFY, recursion, the tracers.
use crate::arch::text;
use crate::thread::{self, ExitStatus};
use crate::trace::{self, Filter, FtraceError, FtraceOps, FtraceRegs, OpsFlags};
use alloc::vec::Vec;
use core::hint::black_box;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use macros::{ktest, notrace};
use portable::ftrace::Caller;
use portable::instruction::{self, MFLR_R0, NOP};

/// Every site's two words, in table order.
fn site_words() -> Vec<(u64, u32, u32)> {
    trace::site_summaries()
        .iter()
        .map(|site| (site.address, text::read(site.address - 4), text::read(site.address)))
        .collect()
}

fn site_of(function: u64) -> u64 {
    trace::site_summaries().iter().find(|site| site.function == function).expect("function has a site").address
}

#[inline(never)]
#[allow(clippy::too_many_arguments, reason = "eight arguments fill r3-r10, the case under test")]
fn traced_eight(a: u64, b: u64, c: u64, d: u64, e: u64, f: u64, g: u64, h: u64) -> u64 {
    black_box(a + 2 * b + 3 * c + 4 * d + 5 * e + 6 * f + 7 * g + 8 * h)
}

#[inline(never)]
#[allow(clippy::too_many_arguments)]
fn traced_ten(a: u64, b: u64, c: u64, d: u64, e: u64, f: u64, g: u64, h: u64, i: u64, j: u64) -> u64 {
    black_box(a + b + c + d + e + f + g + h + 1000 * i + 1_000_000 * j)
}

#[inline(never)]
fn call_eight() -> u64 {
    black_box(traced_eight(black_box(11), 12, 13, 14, 15, 16, 17, 18))
}

#[ktest]
fn every_site_is_validated_at_boot() {
    let sites = trace::site_summaries();
    assert!(sites.len() > 50, "{} sites", sites.len());
    for site in &sites {
        assert_eq!(text::read(site.address - 4), MFLR_R0, "{} first word", site.name);
        if site.users == 0 {
            assert_eq!(text::read(site.address), NOP, "{} second word", site.name);
        }
    }
    // notrace functions have no site.
    assert!(!sites.iter().any(|site| site.name == "kernel::exception::exception_dispatch"));
    assert!(sites.iter().any(|site| site.name.ends_with("tests::ftrace::traced_eight")));
}

static SEEN_IP: AtomicU64 = AtomicU64::new(0);
static SEEN_PARENT: AtomicU64 = AtomicU64::new(0);
static SEEN_ARGUMENTS: [AtomicU64; 8] = [const { AtomicU64::new(0) }; 8];
static CALLS: AtomicUsize = AtomicUsize::new(0);

#[notrace]
extern "C" fn recording_handler(ip: u64, parent_ip: u64, _ops: &FtraceOps, regs: &mut FtraceRegs) {
    SEEN_IP.store(ip, Ordering::SeqCst);
    SEEN_PARENT.store(parent_ip, Ordering::SeqCst);
    for (slot, value) in SEEN_ARGUMENTS.iter().zip(&regs.regs.gpr[3..=10]) {
        slot.store(*value, Ordering::SeqCst);
    }
    CALLS.fetch_add(1, Ordering::SeqCst);
}

static RECORDING: FtraceOps = FtraceOps::new("test-recording", recording_handler, OpsFlags::RECURSION_SAFE);
static RECORDING_REGS: FtraceOps =
    FtraceOps::new("test-recording-regs", recording_handler, OpsFlags::RECURSION_SAFE.union(OpsFlags::SAVE_REGS));

#[ktest]
fn enabling_patches_exactly_the_filtered_sites_and_disabling_restores_them() {
    let before = site_words();
    let count = trace::register(&RECORDING, Filter::Glob("*tests::ftrace::traced_*")).unwrap();
    assert_eq!(count, 2);
    let eight = site_of(traced_eight as *const () as u64);
    let ten = site_of(traced_ten as *const () as u64);
    for ((address, first, second), (_, first_now, second_now)) in before.iter().zip(site_words()) {
        assert_eq!(*first, first_now);
        if *address == eight || *address == ten {
            let target = instruction::branch_target(*address, second_now).expect("a bl");
            assert_eq!(target, (crate::arch::ftrace::ftrace_caller as *const () as u64, true));
        } else {
            assert_eq!(*second, second_now, "untouched site at {address:#x}");
        }
    }
    trace::unregister(&RECORDING).unwrap();
    assert_eq!(site_words(), before, "every word restored");
}

#[ktest]
fn handler_sees_ip_parent_and_eight_arguments() {
    for ops in [&RECORDING, &RECORDING_REGS] {
        trace::register(ops, Filter::Addresses(&[traced_eight as *const () as u64])).unwrap();
        let result = call_eight();
        trace::unregister(ops).unwrap();
        assert_eq!(result, 11 + 24 + 39 + 56 + 75 + 96 + 119 + 144);
        assert_eq!(SEEN_IP.load(Ordering::SeqCst), site_of(traced_eight as *const () as u64));
        let (parent, _) = crate::symbols::table().unwrap().lookup(SEEN_PARENT.load(Ordering::SeqCst)).unwrap();
        assert!(parent.name.ends_with("tests::ftrace::call_eight"), "parent {}", parent.name);
        let arguments: Vec<u64> = SEEN_ARGUMENTS.iter().map(|slot| slot.load(Ordering::SeqCst)).collect();
        assert_eq!(arguments, [11, 12, 13, 14, 15, 16, 17, 18]);
    }
}

#[ktest]
fn ten_arguments_survive_tracing() {
    let expected = traced_ten(1, 2, 3, 4, 5, 6, 7, 8, 9, 10);
    for ops in [&RECORDING, &RECORDING_REGS] {
        let calls = CALLS.load(Ordering::SeqCst);
        trace::register(ops, Filter::Addresses(&[traced_ten as *const () as u64])).unwrap();
        let traced = traced_ten(black_box(1), 2, 3, 4, 5, 6, 7, 8, black_box(9), black_box(10));
        trace::unregister(ops).unwrap();
        assert_eq!(CALLS.load(Ordering::SeqCst), calls + 1, "the handler ran");
        assert_eq!(traced, expected);
        assert_eq!(traced, 36 + 9000 + 10_000_000);
    }
}

#[notrace]
extern "C" fn nothing(_: u64, _: u64, _: &FtraceOps, _: &mut FtraceRegs) {}
static FIRST_PATCHER: FtraceOps = FtraceOps::new("first-patcher", nothing, OpsFlags::IPMODIFY);
static SECOND_PATCHER: FtraceOps = FtraceOps::new("second-patcher", nothing, OpsFlags::IPMODIFY);

#[ktest]
fn only_one_ipmodify_user_per_function() {
    let function = traced_eight as *const () as u64;
    trace::register(&FIRST_PATCHER, Filter::Addresses(&[function])).unwrap();
    let before = site_words();
    let error = trace::register(&SECOND_PATCHER, Filter::Addresses(&[function, traced_ten as *const () as u64]));
    match error {
        Err(FtraceError::Busy { owner, .. }) => assert_eq!(owner, "first-patcher"),
        other => panic!("expected busy, got {other:?}"),
    }
    assert_eq!(site_words(), before, "the refused registration changed nothing");
    assert!(!trace::registered().contains(&"second-patcher"));
    assert_eq!(SECOND_PATCHER.site_count(), 0);
    trace::unregister(&FIRST_PATCHER).unwrap();
    assert!(matches!(trace::unregister(&FIRST_PATCHER), Err(FtraceError::NotRegistered(_))));
    assert!(matches!(trace::register(&FIRST_PATCHER, Filter::Glob("no::such::*")), Err(FtraceError::NoMatch(_))));
    // A name is a name: the glob characters in it match nothing but themselves.
    let globbed = trace::register(&FIRST_PATCHER, Filter::Names(&["kernel::tests::ftrace::traced_e*"]));
    assert!(matches!(globbed, Err(FtraceError::UnknownFunction(_))), "{globbed:?}");
    assert!(matches!(
        trace::register(&FIRST_PATCHER, Filter::Addresses(&[crate::exception::exception_dispatch as *const () as u64])),
        Err(FtraceError::NotTraceable(_))
    ));
}

static RECURSIONS: AtomicUsize = AtomicUsize::new(0);

/// Not RECURSION_SAFE: calls the traced function it traces.
#[notrace]
extern "C" fn recursing_handler(_: u64, _: u64, _: &FtraceOps, _: &mut FtraceRegs) {
    RECURSIONS.fetch_add(1, Ordering::SeqCst);
    black_box(traced_eight(1, 1, 1, 1, 1, 1, 1, 1));
}
static RECURSING: FtraceOps = FtraceOps::new("test-recursing", recursing_handler, OpsFlags::empty());

#[ktest]
fn recursion_guard_stops_a_handler_calling_what_it_traces() {
    trace::register(&RECURSING, Filter::Addresses(&[traced_eight as *const () as u64])).unwrap();
    let result = call_eight();
    trace::unregister(&RECURSING).unwrap();
    assert_eq!(result, 564);
    assert_eq!(RECURSIONS.load(Ordering::SeqCst), 1, "the nested call was not traced again");
}

#[inline(never)]
fn original(value: u64) -> u64 {
    black_box(value + 1)
}

#[inline(never)]
fn replacement(value: u64) -> u64 {
    black_box(value * 100)
}

#[notrace]
extern "C" fn redirecting_handler(_: u64, _: u64, _: &FtraceOps, regs: &mut FtraceRegs) {
    // Same TOC: continue at the replacement's local entry (after its TOC set-up).
    let target = replacement as *const () as u64;
    regs.regs.nip = text::local_entry(target);
}
static REDIRECTING: FtraceOps =
    FtraceOps::new("test-redirect", redirecting_handler, OpsFlags::IPMODIFY.union(OpsFlags::RECURSION_SAFE));

#[ktest]
fn changing_nip_redirects_the_call() {
    assert_eq!(original(black_box(7)), 8);
    trace::register(&REDIRECTING, Filter::Addresses(&[original as *const () as u64])).unwrap();
    let redirected = original(black_box(7));
    trace::unregister(&REDIRECTING).unwrap();
    assert_eq!(redirected, 700);
    assert_eq!(original(black_box(7)), 8);
}

#[ktest]
fn patching_is_refused_when_the_old_instruction_differs() {
    let site = site_of(traced_eight as *const () as u64);
    let word = text::read(site);
    assert_eq!(word, NOP);
    let error = text::modify_code(site, MFLR_R0, instruction::TRAP).unwrap_err();
    assert_eq!(error, text::TextError::Mismatch { address: site, expected: MFLR_R0, found: NOP });
    assert!(alloc::format!("{error}").contains("expected 7c0802a6 != found 60000000"));
    assert_eq!(text::read(site), NOP, "nothing written");
    // A registration meeting a tampered site fails and leaves every other site as it was.
    text::modify_code(site, NOP, instruction::BLR).unwrap();
    let before = site_words();
    let result = trace::register(&RECORDING, Filter::Glob("*tests::ftrace::traced_*"));
    assert!(matches!(result, Err(FtraceError::Text(_))), "{result:?}");
    assert_eq!(site_words(), before);
    assert!(!trace::registered().contains(&"test-recording"));
    text::modify_code(site, instruction::BLR, NOP).unwrap();
}

#[inline(never)]
fn golden_leaf(value: u64) -> u64 {
    black_box(value + 1)
}

#[inline(never)]
fn golden_middle(value: u64) -> u64 {
    golden_leaf(black_box(value)) * 2
}

#[inline(never)]
fn golden_top(value: u64) -> u64 {
    golden_leaf(value) + golden_middle(value) + golden_leaf(value)
}

#[ktest]
fn function_graph_draws_the_call_tree() {
    trace::graph::start("*tests::ftrace::golden_*").unwrap();
    let result = golden_top(black_box(1));
    trace::graph::stop().unwrap();
    assert_eq!(result, 2 + 4 + 2);
    let lines = trace::graph::render(Some(thread::current_id()), false);
    let expected = [
        "# tracer: function_graph",
        "# CPU  DURATION                  FUNCTION CALLS",
        "# |     |   |                     |   |   |   |",
        " 0)               |  kernel::tests::ftrace::golden_top() {",
        " 0)               |    kernel::tests::ftrace::golden_leaf();",
        " 0)               |    kernel::tests::ftrace::golden_middle() {",
        " 0)               |      kernel::tests::ftrace::golden_leaf();",
        " 0)               |    } /* kernel::tests::ftrace::golden_middle */",
        " 0)               |    kernel::tests::ftrace::golden_leaf();",
        " 0)               |  } /* kernel::tests::ftrace::golden_top */",
    ];
    assert_eq!(lines, expected);
    // With durations, every closing line carries one.
    assert!(trace::graph::render(Some(thread::current_id()), true)[8].contains(" us "));
}

#[ktest]
fn function_tracer_records_calls_with_parents() {
    trace::function::start("*tests::ftrace::golden_*").unwrap();
    golden_top(black_box(1));
    trace::function::stop().unwrap();
    let (events, lost) = trace::function::events();
    assert_eq!(lost, 0);
    let names: Vec<_> = events
        .iter()
        .map(|(_, event)| {
            crate::symbols::table().unwrap().lookup(trace::site_table().function_of(event.ip).unwrap()).unwrap().0.name
        })
        .collect();
    // top, leaf, middle, leaf (inside middle), leaf: in call order.
    assert_eq!(names.len(), 5, "{names:?}");
    assert!(names[0].ends_with("golden_top") && names[2].ends_with("golden_middle"), "{names:?}");
    assert!([1, 3, 4].iter().all(|&index| names[index].ends_with("golden_leaf")), "{names:?}");
    let rendered = trace::function::render();
    assert!(rendered[3].contains("kernel::tests::ftrace::golden_top <-"), "{}", rendered[3]);
}

#[ktest]
fn ring_buffer_overwrites_oldest_and_counts_lost_events() {
    trace::function::start("*tests::ftrace::golden_leaf").unwrap();
    for value in 0..(trace::function::CAPACITY as u64 + 10) {
        golden_leaf(value);
    }
    trace::function::stop().unwrap();
    let (events, lost) = trace::function::events();
    assert_eq!(events.len(), trace::function::CAPACITY);
    assert_eq!(lost, 10);
}

#[ktest]
fn tracing_toggles_while_other_threads_call_traced_functions() {
    static STOP: AtomicU64 = AtomicU64::new(0);
    static WRONG: AtomicU64 = AtomicU64::new(0);
    STOP.store(0, Ordering::SeqCst);
    let workers: Vec<_> = (0..3)
        .map(|_| {
            thread::spawn("tracee", || {
                while STOP.load(Ordering::SeqCst) == 0 {
                    if golden_top(black_box(5)) != 6 + 12 + 6 || traced_ten(1, 2, 3, 4, 5, 6, 7, 8, 9, 10) != 10_009_036
                    {
                        WRONG.fetch_add(1, Ordering::SeqCst);
                    }
                }
                // Safety: reading the own thread's thread_info.
                let depth = unsafe { (*thread::current_thread_info()).graph_depth };
                assert_eq!(depth, 0, "every hooked return came back");
            })
            .unwrap()
        })
        .collect();
    let me = thread::current_id();
    let top = golden_top as *const () as u64;
    let ten = traced_ten as *const () as u64;
    // On-phases in which a worker's call was recorded by each tracer.
    let (mut graphed_phases, mut recorded_phases) = (0, 0);
    for round in 0..40 {
        if round % 2 == 0 {
            trace::graph::start("*tests::ftrace::golden_*").unwrap();
            trace::function::start("*tests::ftrace::traced_*").unwrap();
        } else {
            trace::graph::stop().unwrap();
            trace::function::stop().unwrap();
            // Both buffers were emptied by `start` and keep what this on-phase recorded.
            let (graph_events, _) = trace::graph::events();
            let (function_events, _) = trace::function::events();
            if graph_events.iter().any(|(_, event)| {
                event.kind == portable::graph::Kind::Entry
                    && event.thread != me
                    && trace::site_table().function_of(event.ip) == Some(top)
            }) {
                graphed_phases += 1;
            }
            if function_events
                .iter()
                .any(|(_, event)| event.thread != me && trace::site_table().function_of(event.ip) == Some(ten))
            {
                recorded_phases += 1;
            }
        }
        thread::sleep_milliseconds(3);
    }
    STOP.store(1, Ordering::SeqCst);
    for worker in workers {
        assert_eq!(worker.join(), ExitStatus::Returned);
    }
    assert_eq!(WRONG.load(Ordering::SeqCst), 0);
    // Every on-phase let a worker run (this thread slept): each tracer saw its calls.
    assert_eq!(graphed_phases, 20, "on-phases in which function_graph recorded a worker's golden_top");
    assert_eq!(recorded_phases, 20, "on-phases in which the function tracer recorded a worker's traced_ten");
    assert!(trace::registered().is_empty(), "{:?}", trace::registered());
    assert!(trace::site_summaries().iter().all(|site| site.caller == Caller::None));
}

static HANDLER_TICKS: AtomicU64 = AtomicU64::new(0);
static HANDLER_RETRIES: AtomicU64 = AtomicU64::new(0);
static BYSTANDER: AtomicU64 = AtomicU64::new(0);
static BYSTANDER_DURING_HANDLER: AtomicU64 = AtomicU64::new(u64::MAX);

/// Spins for three tick intervals of timebase time (not for three ticks:
/// the count of ticks taken meanwhile is the measurement).
#[notrace]
#[inline(always)]
fn spin_three_tick_intervals() {
    let before = BYSTANDER.load(Ordering::SeqCst);
    let (start, retries) = (crate::time::ticks(), crate::time::retries());
    let until = crate::arch::registers::timebase() + 3 * crate::time::frequency() / crate::time::TICK_HZ;
    while crate::arch::registers::timebase() < until {}
    HANDLER_TICKS.store(crate::time::ticks() - start, Ordering::SeqCst);
    HANDLER_RETRIES.store(crate::time::retries() - retries, Ordering::SeqCst);
    BYSTANDER_DURING_HANDLER.store(BYSTANDER.load(Ordering::SeqCst) - before, Ordering::SeqCst);
}

/// Spins in the handler itself: a tick finds LR still returning into the stub.
#[notrace]
extern "C" fn slow_handler(_: u64, _: u64, _: &FtraceOps, _: &mut FtraceRegs) {
    spin_three_tick_intervals();
}
static SLOW: FtraceOps = FtraceOps::new("test-slow", slow_handler, OpsFlags::RECURSION_SAFE);

/// Spins in a function the handler calls: a tick finds the stub's return
/// address only on the stack, in the handler's LR save slot, where
/// `in_ftrace`'s back-chain walk must find it.
#[notrace]
#[inline(never)]
fn spin_below_the_handler() {
    spin_three_tick_intervals();
    black_box(());
}

#[notrace]
extern "C" fn slow_nested_handler(_: u64, _: u64, _: &FtraceOps, _: &mut FtraceRegs) {
    spin_below_the_handler();
    black_box(());
}
static SLOW_NESTED: FtraceOps = FtraceOps::new("test-slow-nested", slow_nested_handler, OpsFlags::RECURSION_SAFE);

/// Runs `golden_leaf` traced by `ops`, whose handler spins three tick
/// intervals, while another thread counts: nobody else may run meanwhile.
fn check_the_timer_never_preempts_inside(ops: &'static FtraceOps) {
    static STOP: AtomicU64 = AtomicU64::new(0);
    STOP.store(0, Ordering::SeqCst);
    let bystander = thread::spawn("bystander", || {
        while STOP.load(Ordering::SeqCst) == 0 {
            BYSTANDER.fetch_add(1, Ordering::SeqCst);
        }
    })
    .unwrap();
    thread::sleep_milliseconds(20);
    trace::register(ops, Filter::Addresses(&[golden_leaf as *const () as u64])).unwrap();
    golden_leaf(black_box(1));
    trace::unregister(ops).unwrap();
    // Outside a handler the bystander runs again.
    let before = BYSTANDER.load(Ordering::SeqCst);
    thread::sleep_milliseconds(30);
    let after = BYSTANDER.load(Ordering::SeqCst);
    STOP.store(1, Ordering::SeqCst);
    assert_eq!(bystander.join(), ExitStatus::Returned);
    // The timer did interrupt the handler (at least once per tick interval),
    // and yet nobody else ran.
    let ticks = HANDLER_TICKS.load(Ordering::SeqCst);
    assert!(ticks >= 3, "only {ticks} timer interrupts were taken inside the handler in three tick intervals");
    // After the first tick found the handler, the rest were 20 us retries of
    // the deferred preemption, and are counted as such (what `uptime` shows):
    // at most one periodic tick per interval.
    let retries = HANDLER_RETRIES.load(Ordering::SeqCst);
    assert!(retries >= 1 && ticks - retries <= 4, "{ticks} interrupts in the handler, {retries} counted as retries");
    assert_eq!(BYSTANDER_DURING_HANDLER.load(Ordering::SeqCst), 0, "nobody else ran meanwhile");
    assert!(after > before, "preemption works outside handlers: {before} -> {after}");
}

#[ktest]
fn the_timer_never_preempts_a_thread_inside_a_handler() {
    check_the_timer_never_preempts_inside(&SLOW);
}

#[ktest]
fn the_timer_never_preempts_a_thread_in_a_function_a_handler_called() {
    check_the_timer_never_preempts_inside(&SLOW_NESTED);
}
