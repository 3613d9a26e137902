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

/// All or nothing means nothing written at all, not writes undone: with the
/// last of the filter's sites tampered, a registration fails before its
/// first write (the text log records every write; a write-then-revert
/// would leave the same words behind, which `site_words` cannot tell).
#[ktest]
fn a_tampered_last_site_fails_a_registration_before_any_write() {
    let glob = "*tests::ftrace::traced_*";
    let sites: Vec<u64> = trace::site_summaries()
        .iter()
        .filter(|site| portable::ftrace::glob_match(glob, &site.name))
        .map(|site| site.address)
        .collect();
    assert!(sites.len() >= 2, "the filter matches several sites: {}", sites.len());
    let last = *sites.iter().max().expect("several sites");
    let before = site_words();
    text::modify_code(last, NOP, instruction::BLR).unwrap();
    text::log::start();
    let result = trace::register(&RECORDING, Filter::Glob(glob));
    let steps = text::log::stop_with_addresses();
    // The stubs' call may change and change back; no site may be written.
    let site_writes: Vec<u64> = steps
        .iter()
        .filter(|&&(step, _, address)| step == text::log::Step::Written && sites.contains(&address))
        .map(|&(_, _, address)| address)
        .collect();
    text::modify_code(last, instruction::BLR, NOP).unwrap();
    assert_eq!(site_writes, [], "sites written by a registration that failed");
    assert!(matches!(result, Err(FtraceError::Text(text::TextError::Mismatch { address, .. })) if address == last));
    assert_eq!(site_words(), before);
    assert!(!trace::registered().contains(&"test-recording"));
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
            thread::spawn_on(crate::arch::percpu::BOOT_CPU, "tracee", || {
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
    let (start, retries) = (crate::time::ticks_here(), crate::time::retries());
    let until = crate::arch::registers::timebase() + 3 * crate::time::frequency() / crate::time::TICK_HZ;
    while crate::arch::registers::timebase() < until {}
    HANDLER_TICKS.store(crate::time::ticks_here() - start, Ordering::SeqCst);
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
    let bystander = thread::spawn_on(crate::arch::percpu::BOOT_CPU, "bystander", || {
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

/// A handler nested deeper than any fixed walk bound (the walk once stopped
/// after 64 frames): the stub's return address is 100 frames up the chain.
#[notrace]
#[inline(never)]
fn spin_deep_below_the_handler(depth: u32) {
    if depth == 0 {
        spin_three_tick_intervals();
    } else {
        spin_deep_below_the_handler(black_box(depth - 1));
    }
    black_box(());
}

#[notrace]
extern "C" fn slow_deep_handler(_: u64, _: u64, _: &FtraceOps, _: &mut FtraceRegs) {
    spin_deep_below_the_handler(100);
    black_box(());
}
static SLOW_DEEP: FtraceOps = FtraceOps::new("test-slow-deep", slow_deep_handler, OpsFlags::RECURSION_SAFE);

#[ktest]
fn the_timer_never_preempts_a_thread_a_hundred_frames_below_a_handler() {
    check_the_timer_never_preempts_inside(&SLOW_DEEP);
}

core::arch::global_asm!(
    r#"
    .text
    # spin_in_a_reused_frame: calls a function, then spins in a frame pushed
    # where that call's ftrace stub frame (or return_to_handler's) was.
    #
    # On entry: r3 = a function with no arguments (global entry), r4 = bytes
    # of the frame to push after it returns, r5 = &u64 that another thread
    # keeps incrementing, r6 = a timebase deadline, r7 = &u64 for the
    # spinning frame's address.
    # Calls r3 from a 64-byte frame; pushes the r4-byte frame right below
    # that (so its LR save slot is the one the stub's callee saved a return
    # into the stub in); then spins, calling nothing (so nothing writes that
    # slot), until *r5 changes or the timebase reaches r6.
    # On exit: r3 = 1 if *r5 changed (another thread ran meanwhile), else 0;
    # r0, r4-r12, CTR, CR0 clobbered.
    .globl spin_in_a_reused_frame
    .type spin_in_a_reused_frame, @function
spin_in_a_reused_frame:
    mflr    0
    std     0, 16(1)                  # our return address, in our caller's frame
    stdu    1, -64(1)                 # our frame: header (32), then r4-r7
    std     2, 24(1)                  # TOC save slot
    std     4, 32(1)
    std     5, 40(1)
    std     6, 48(1)
    std     7, 56(1)
    mtctr   3
    mr      12, 3                     # r12 = global entry, as ELFv2 requires
    bctrl                             # the traced call: its stub frame lies below our r1
    ld      2, 24(1)
    ld      4, 32(1)
    ld      5, 40(1)
    ld      6, 48(1)
    ld      7, 56(1)
    neg     4, 4
    stdux   1, 1, 4                   # push r4 bytes: r1 = where the stub's frame was
    std     1, 0(7)                   # report the spinning frame
    ld      9, 0(5)                   # r9 = the counter when the spin starts
1:  ld      10, 0(5)
    cmpld   10, 9
    bne     2f                        # another thread ran
    mftb    10
    cmpld   10, 6
    blt     1b
    li      3, 0                      # the deadline passed, nobody else ran
    b       3f
2:  li      3, 1
3:  ld      1, 0(1)                   # pop the spinning frame
    addi    1, 1, 64                  # and ours
    ld      0, 16(1)
    mtlr    0
    blr
    .size spin_in_a_reused_frame, . - spin_in_a_reused_frame
    "#
);

unsafe extern "C" {
    fn spin_in_a_reused_frame(
        function: extern "C" fn(),
        frame: u64,
        counter: *const u64,
        deadline: u64,
        spinning: *mut u64,
    ) -> u64;
}

#[inline(never)]
extern "C" fn leaf_without_arguments() {
    black_box(());
}

/// The stub frame of the last call `frame_noting_handler` saw, and what its LR save slot held then.
static STUB_FRAME: AtomicU64 = AtomicU64::new(0);
static STUB_FRAME_LINK: AtomicU64 = AtomicU64::new(0);

#[notrace]
#[inline(never)]
fn note_the_stub_frame(handler_frame: u64) {
    // Safety: the handler's frame, then the stub's, on this thread's stack;
    // the stub's LR save slot is where the handler's prologue saved its return into the stub.
    let (stub, link) = unsafe {
        let stub = *(handler_frame as *const u64);
        (stub, *((stub + boot::LINK_SAVE as u64) as *const u64))
    };
    STUB_FRAME.store(stub, Ordering::SeqCst);
    STUB_FRAME_LINK.store(link, Ordering::SeqCst);
    black_box(());
}

/// Not a leaf: its prologue saves the return into the stub in the stub's frame.
#[notrace]
extern "C" fn frame_noting_handler(_: u64, _: u64, _: &FtraceOps, _: &mut FtraceRegs) {
    note_the_stub_frame(crate::arch::registers::stack_pointer());
    black_box(());
}
static FRAME_NOTING: FtraceOps = FtraceOps::new("test-frame-noting", frame_noting_handler, OpsFlags::RECURSION_SAFE);
static FRAME_NOTING_REGS: FtraceOps =
    FtraceOps::new("test-frame-noting-regs", frame_noting_handler, OpsFlags::RECURSION_SAFE.union(OpsFlags::SAVE_REGS));

/// Calls `leaf_without_arguments` (traced by whatever the caller set up), then
/// spins in a `frame`-byte frame where the call's stub (or
/// `return_to_handler`) frame was, for up to ten tick intervals; returns
/// whether another thread ran meanwhile, and the spinning frame.
fn spin_where_a_traced_call_left_its_frame(frame: usize) -> (bool, u64) {
    static STOP: AtomicU64 = AtomicU64::new(0);
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    STOP.store(0, Ordering::SeqCst);
    let bystander = thread::spawn_on(crate::arch::percpu::BOOT_CPU, "bystander", || {
        while STOP.load(Ordering::SeqCst) == 0 {
            COUNTER.fetch_add(1, Ordering::SeqCst);
        }
    })
    .unwrap();
    thread::sleep_milliseconds(20);
    let deadline = crate::arch::registers::timebase() + 10 * crate::time::frequency() / crate::time::TICK_HZ;
    let mut spinning = 0;
    // Safety: the probe calls a function of no arguments and returns with
    // its frames popped; the counter is a live static, `spinning` a local.
    let ran = unsafe {
        spin_in_a_reused_frame(leaf_without_arguments, frame as u64, COUNTER.as_ptr(), deadline, &mut spinning)
    };
    STOP.store(1, Ordering::SeqCst);
    assert_eq!(bystander.join(), ExitStatus::Returned);
    (ran == 1, spinning)
}

#[ktest]
fn a_thread_spinning_where_a_stub_frame_was_is_still_preempted() {
    let function = leaf_without_arguments as *const () as u64;
    let graph_call = [
        &raw const crate::arch::ftrace::ftrace_graph_call as u64,
        &raw const crate::arch::ftrace::ftrace_regs_graph_call as u64,
    ];
    for (ops, graph_call) in [(&FRAME_NOTING, graph_call[0]), (&FRAME_NOTING_REGS, graph_call[1])] {
        STUB_FRAME.store(0, Ordering::SeqCst);
        trace::register(ops, Filter::Addresses(&[function])).unwrap();
        let (ran, spinning) = spin_where_a_traced_call_left_its_frame(crate::arch::ftrace::FRAME_SIZE);
        trace::unregister(ops).unwrap();
        // What makes the case: during the call the handler's prologue saved
        // the return into the stub in the very slot the spin's frame has.
        assert_eq!(STUB_FRAME.load(Ordering::SeqCst), spinning, "{}: the spin reuses the stub's frame", ops.name);
        assert_eq!(STUB_FRAME_LINK.load(Ordering::SeqCst), graph_call, "{}: the handler saved its return", ops.name);
        assert!(
            ran,
            "{}: nobody else ran in ten tick intervals: a stale return into the stub held off preemption",
            ops.name
        );
    }
    // The graph tracer's return path: ftrace_return_to_handler's prologue
    // saves its return into return_to_handler in that function's frame.
    trace::graph::start("*tests::ftrace::leaf_without_arguments").unwrap();
    let (ran, _) = spin_where_a_traced_call_left_its_frame(crate::arch::ftrace::RETURN_FRAME_SIZE);
    trace::graph::stop().unwrap();
    assert!(ran, "function_graph: nobody else ran in ten tick intervals after return_to_handler");
}

/// `xori r0, r0, 0`: changes nothing when it runs, and is neither a nop nor a call.
const HARMLESS: u32 = 0x6800_0000;

#[ktest]
fn a_mismatch_at_the_second_stub_site_leaves_the_first_unchanged() {
    use crate::arch::ftrace::{
        ftrace_call, ftrace_enable_ftrace_graph_caller, ftrace_graph_call, ftrace_regs_call, ftrace_regs_graph_call,
        ftrace_stub, ftrace_update_ftrace_func,
    };
    assert!(trace::registered().is_empty(), "{:?}", trace::registered());
    // Nothing is registered, so no site calls a stub: their call words can be changed for a while.
    let _preempt = thread::preempt_disable();
    let (call, regs_call) = (&raw const ftrace_call as u64, &raw const ftrace_regs_call as u64);
    let (call_word, regs_call_word) = (text::read(call), text::read(regs_call));
    text::modify_code(regs_call, regs_call_word, NOP).unwrap();
    let stub = ftrace_stub as *const () as u64;
    let result = ftrace_update_ftrace_func(stub, recording_handler as *const () as u64);
    assert!(matches!(result, Err(text::TextError::Mismatch { address, .. }) if address == regs_call), "{result:?}");
    assert_eq!(text::read(call), call_word, "ftrace_call changed although ftrace_regs_call was refused");
    text::modify_code(regs_call, NOP, regs_call_word).unwrap();

    let (graph_call, regs_graph_call) = (&raw const ftrace_graph_call as u64, &raw const ftrace_regs_graph_call as u64);
    assert_eq!((text::read(graph_call), text::read(regs_graph_call)), (NOP, NOP));
    text::modify_code(regs_graph_call, NOP, HARMLESS).unwrap();
    let result = ftrace_enable_ftrace_graph_caller();
    assert!(
        matches!(result, Err(text::TextError::Mismatch { address, .. }) if address == regs_graph_call),
        "{result:?}"
    );
    assert_eq!(text::read(graph_call), NOP, "ftrace_graph_call changed although ftrace_regs_graph_call was refused");
    text::modify_code(regs_graph_call, HARMLESS, NOP).unwrap();
}

#[ktest]
fn an_unregister_that_cannot_switch_the_stubs_changes_nothing() {
    use crate::arch::ftrace::ftrace_regs_call;
    let eight = site_of(traced_eight as *const () as u64);
    trace::register(&RECORDING, Filter::Addresses(&[traced_eight as *const () as u64])).unwrap();
    let before = site_words();
    let regs_call = &raw const ftrace_regs_call as u64;
    let regs_call_word = text::read(regs_call);
    // The only ops is a light one: nothing calls ftrace_regs_caller meanwhile.
    text::modify_code(regs_call, regs_call_word, NOP).unwrap();
    let result = trace::unregister(&RECORDING);
    assert!(matches!(result, Err(FtraceError::Text(text::TextError::Mismatch { .. }))), "{result:?}");
    assert_eq!(site_words(), before, "a refused unregister changed a site");
    assert!(trace::registered().contains(&"test-recording"));
    let calls = CALLS.load(Ordering::SeqCst);
    call_eight();
    assert_eq!(CALLS.load(Ordering::SeqCst), calls + 1, "the handler still runs");
    text::modify_code(regs_call, NOP, regs_call_word).unwrap();
    trace::unregister(&RECORDING).unwrap();
    assert_eq!(text::read(eight), NOP);
}

#[ktest]
fn a_call_beyond_branch_reach_is_an_error_not_a_panic() {
    let site = site_of(traced_eight as *const () as u64);
    let far = site + 64 * 1024 * 1024;
    let _preempt = thread::preempt_disable();
    let result = crate::arch::ftrace::ftrace_prepare_change(site, None, Some(far));
    assert_eq!(result.err(), Some(text::TextError::OutOfReach { address: site, target: far }));
    assert_eq!(text::read(site), NOP, "nothing written");
}
