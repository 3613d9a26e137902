//! Tests of direct calls: final patches reached through a trampoline, ftrace's direct API, switching paths.
use super::livepatch::{enable, retire};
use super::settle;
use crate::arch::percpu::online_cpus;
use crate::arch::text;
use crate::arch::trampoline;
use crate::livepatch::direct;
use crate::trace::FtraceError;
use crate::trace::{self, Filter, FtraceOps, FtraceRegs, OpsFlags};
use crate::{memory, module, thread, time};
use alloc::vec::Vec;
use core::hint::black_box;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use macros::{ktest, livepatchable, notrace};
use portable::instruction::{self, NOP};

#[livepatchable]
fn direct_original(value: u64) -> u64 {
    black_box(value + 1)
}

#[inline(never)]
fn direct_replacement(value: u64) -> u64 {
    black_box(value + 100)
}

const ORIGINAL: &str = "kernel::tests::direct::direct_original";

/// The address of `function`'s ftrace site word.
fn site_of(function: u64) -> u64 {
    text::local_entry(function) + 4
}

/// Where the site word of `function` branches now (None: a nop).
fn site_target(function: u64) -> Option<u64> {
    let site = site_of(function);
    let word = text::read(site);
    if word == NOP {
        return None;
    }
    instruction::branch_target(site, word).map(|(target, _)| target)
}

/// Runs `body` with direct calls on (the livepatch suite also runs with
/// them off: these cases are about them), then restores the setting.
fn with_direct_calls(body: impl FnOnce()) {
    let before = direct::enabled();
    direct::set_enabled(true).expect("direct calls switch on");
    body();
    direct::set_enabled(before).expect("direct calls switch back");
}

#[ktest]
fn a_final_patch_is_called_through_a_trampoline_and_leaves_none_behind() {
    with_direct_calls(final_patch_through_a_trampoline);
}

fn final_patch_through_a_trampoline() {
    let original = direct_original as *const () as u64;
    let (live_before, available_before) = direct::slots_in_use();
    enable("direct-basic", &[(ORIGINAL, None, direct_replacement as *const () as u64)]).expect("patchable");
    assert_eq!(direct_original(1), 101);
    let target = site_target(original).expect("the site calls something");
    assert!(trampoline::pool().contains(&target), "the site branches to a trampoline, not {target:#x}");
    assert!(
        direct::summary().contains(&(site_of(original), direct_replacement as *const () as u64, target)),
        "{:x?}",
        direct::summary()
    );
    assert_eq!(direct::slots_in_use(), (live_before + 1, available_before - 1));
    retire("direct-basic");
    assert_eq!(direct_original(1), 2);
    assert_eq!(site_target(original), None, "the site is a nop again");
    assert_eq!(direct::slots_in_use(), (live_before, available_before));
}

#[notrace]
extern "C" fn count_calls(_: u64, _: u64, _: &FtraceOps, _: &mut FtraceRegs) {
    TRACED_CALLS.fetch_add(1, Ordering::Relaxed);
}
static TRACED_CALLS: AtomicU64 = AtomicU64::new(0);
static COUNTER: FtraceOps = FtraceOps::new("direct-test-counter", count_calls, OpsFlags::RECURSION_SAFE);

#[ktest]
fn tracing_a_direct_function_takes_the_stub_and_stopping_returns_to_the_trampoline() {
    with_direct_calls(traced_direct_function);
}

fn traced_direct_function() {
    let original = direct_original as *const () as u64;
    enable("direct-traced", &[(ORIGINAL, None, direct_replacement as *const () as u64)]).expect("patchable");
    let trampoline = site_target(original).expect("direct");
    assert!(trampoline::pool().contains(&trampoline));
    trace::register(&COUNTER, Filter::Names(&[ORIGINAL])).expect("traceable");
    assert_eq!(site_target(original), Some(crate::arch::ftrace::ftrace_caller as *const () as u64), "shared: the stub");
    let before = TRACED_CALLS.load(Ordering::Relaxed);
    assert_eq!(direct_original(1), 101, "the patch stays in effect while traced");
    assert_eq!(TRACED_CALLS.load(Ordering::Relaxed), before + 1, "and the tracer sees the call");
    trace::unregister(&COUNTER).expect("registered");
    assert_eq!(site_target(original), Some(trampoline), "back to the same trampoline");
    assert_eq!(direct_original(1), 101, "the patch stays in effect after the tracer left");
    retire("direct-traced");
    assert_eq!(direct_original(1), 2);
}

// ---- ftrace's direct API on its own -----------------------------------------

#[livepatchable]
fn direct_api_target(value: u64) -> u64 {
    black_box(value + 1)
}

const API_TARGET: &str = "kernel::tests::direct::direct_api_target";

unsafe extern "C" {
    /// A direct target as `trace::set_direct` describes: returns 4242 to the
    /// traced function's caller (r0), in place of the traced function.
    fn direct_test_target();
}

core::arch::global_asm!(
    r#"
    .text
    # direct_test_target: a direct target that replaces its function by `return 4242`.
    # On entry: r0 = the return address into the caller (LR is not used).
    # On exit: r3 = 4242; returns to r0; nothing else changed but LR.
    .globl direct_test_target
    .type direct_test_target, @function
direct_test_target:
    li      3, 4242                   # the result
    mtlr    0                         # LR = the return address into the caller
    blr
    .size direct_test_target, . - direct_test_target
    "#
);

static DIRECT_OWNER: FtraceOps = FtraceOps::new(
    "direct-test-owner",
    trace::ftrace_direct_handler,
    OpsFlags::IPMODIFY.union(OpsFlags::RECURSION_SAFE),
);
static NOT_OWNER: FtraceOps = FtraceOps::new("direct-test-other", count_calls, OpsFlags::RECURSION_SAFE);

#[ktest]
fn the_direct_api_points_a_site_at_its_target_falls_back_to_the_stub_and_comes_back() {
    let function = direct_api_target as *const () as u64;
    let target = direct_test_target as *const () as u64;
    assert!(matches!(
        trace::set_direct(&DIRECT_OWNER, &[(function, Some(target))]),
        Err(FtraceError::NotRegistered(_))
    ));
    trace::register(&DIRECT_OWNER, Filter::Names(&[API_TARGET])).expect("traceable");
    trace::register(&NOT_OWNER, Filter::Names(&[API_TARGET])).expect("traceable");
    // Only the IPMODIFY owner gives a direct target; refused, nothing changes.
    assert!(matches!(
        trace::set_direct(&NOT_OWNER, &[(function, Some(target))]),
        Err(FtraceError::NotDirectOwner { .. })
    ));
    assert_eq!(direct_api_target(1), 2);
    trace::set_direct(&DIRECT_OWNER, &[(function, Some(target))]).expect("the owner");
    // Shared: the stub, and the owner's handler sends the call on to the target.
    assert_eq!(site_target(function), Some(crate::arch::ftrace::ftrace_caller as *const () as u64));
    let before = TRACED_CALLS.load(Ordering::Relaxed);
    assert_eq!(direct_api_target(1), 4242);
    assert_eq!(TRACED_CALLS.load(Ordering::Relaxed), before + 1, "the other ops still sees the call");
    trace::unregister(&NOT_OWNER).expect("registered");
    // Alone: the site calls the target itself.
    assert_eq!(site_target(function), Some(target));
    assert_eq!(direct_api_target(1), 4242);
    assert_eq!(DIRECT_OWNER.direct_targets(), [(site_of(function), target)]);
    // Taken away: back to the stub and the traced function.
    trace::set_direct(&DIRECT_OWNER, &[(function, None)]).expect("the owner");
    assert_eq!(site_target(function), Some(crate::arch::ftrace::ftrace_caller as *const () as u64));
    assert_eq!(direct_api_target(1), 2);
    trace::set_direct(&DIRECT_OWNER, &[(function, Some(target))]).expect("the owner");
    // Unregistering the owner takes its direct target along.
    trace::unregister(&DIRECT_OWNER).expect("registered");
    assert_eq!(site_target(function), None);
    assert_eq!(direct_api_target(1), 2);
    assert!(DIRECT_OWNER.direct_targets().is_empty());
}

// ---- Switching paths while every CPU calls -----------------------------------

#[livepatchable]
fn switched_original(value: u64) -> u64 {
    black_box(value * 2)
}

#[inline(never)]
fn switched_replacement(value: u64) -> u64 {
    black_box(value * 3)
}

const SWITCHED: &str = "kernel::tests::direct::switched_original";
static SWITCH_DONE: AtomicBool = AtomicBool::new(false);
/// Whether the patch is enabled and final (the workers then count an old result as wrong).
static SWITCH_FINAL: AtomicBool = AtomicBool::new(false);
static SWITCH_OLD: AtomicU64 = AtomicU64::new(0);
static SWITCH_NEW: AtomicU64 = AtomicU64::new(0);
static SWITCH_WRONG: AtomicU64 = AtomicU64::new(0);
/// For a failure's report: the round and switch the test is at (round * 100 + switch),
/// and of the first wrong call, that position, its CPU and the site's word in memory then.
static SWITCH_AT: AtomicU64 = AtomicU64::new(0);
static SWITCH_FIRST_WRONG: spin::Mutex<Option<(u64, usize, u32, u64)>> = spin::Mutex::new(None);

/// Calls the switched function until told to stop, sorting each result.
fn call_switched() {
    let mut value = 1;
    let until = crate::arch::registers::timebase() + time::milliseconds_to_timebase(60_000);
    while !SWITCH_DONE.load(Ordering::SeqCst) && crate::arch::registers::timebase() < until {
        let final_before = SWITCH_FINAL.load(Ordering::SeqCst);
        let result = switched_original(value);
        let final_after = SWITCH_FINAL.load(Ordering::SeqCst);
        if result == value * 3 {
            SWITCH_NEW.fetch_add(1, Ordering::Relaxed);
        } else if result == value * 2 && !(final_before && final_after) {
            SWITCH_OLD.fetch_add(1, Ordering::Relaxed);
        } else {
            if SWITCH_WRONG.fetch_add(1, Ordering::SeqCst) == 0 {
                let site = site_of(switched_original as *const () as u64);
                *SWITCH_FIRST_WRONG.lock() = Some((
                    SWITCH_AT.load(Ordering::SeqCst),
                    crate::arch::percpu::smp_processor_id(),
                    text::read(site),
                    result,
                ));
            }
        }
        value = value % 1000 + 1;
        // Outside the patched function: a transition may switch this thread here.
        crate::livepatch::safe_point();
    }
}

#[ktest]
fn switching_between_direct_and_generic_while_every_cpu_calls_gives_only_the_replacement() {
    for counter in [&SWITCH_OLD, &SWITCH_NEW, &SWITCH_WRONG] {
        counter.store(0, Ordering::SeqCst);
    }
    *SWITCH_FIRST_WRONG.lock() = None;
    SWITCH_DONE.store(false, Ordering::SeqCst);
    let before = direct::enabled();
    let function = switched_original as *const () as u64;
    let workers: Vec<_> = online_cpus()
        .iter()
        .flat_map(|cpu| [cpu, cpu])
        .map(|cpu| thread::spawn_on(cpu, "direct-switch", call_switched).expect("room for a worker"))
        .collect();
    time::set_jitter(0x9e37_79b9_7f4a_7c15);
    let (mut direct_seen, mut generic_seen) = (0, 0);
    for round in 0..10 {
        direct::set_enabled(true).expect("on");
        enable("direct-switch", &[(SWITCHED, None, switched_replacement as *const () as u64)]).expect("patchable");
        SWITCH_FINAL.store(true, Ordering::SeqCst);
        // The patch is final: each switch, either way, keeps every call in the replacement.
        for switch in 0..20 {
            SWITCH_AT.store(round * 100 + switch, Ordering::SeqCst);
            direct::set_enabled(switch % 2 == 1).expect("switches");
            let target = site_target(function).expect("patched: the site calls something");
            if trampoline::pool().contains(&target) {
                direct_seen += 1;
            } else {
                generic_seen += 1;
            }
            thread::yield_now();
        }
        SWITCH_FINAL.store(false, Ordering::SeqCst);
        // Disabling (and the next round's enabling) from either path.
        direct::set_enabled(round % 2 == 0).expect("switches");
        retire("direct-switch");
        // The workers run the original a while (on one CPU they run only now).
        thread::sleep_milliseconds(2);
    }
    time::set_jitter(0);
    SWITCH_DONE.store(true, Ordering::SeqCst);
    workers.into_iter().for_each(|worker| {
        assert_eq!(worker.join(), thread::ExitStatus::Returned);
    });
    direct::set_enabled(before).expect("restores");
    let (old, new, wrong) =
        (SWITCH_OLD.load(Ordering::SeqCst), SWITCH_NEW.load(Ordering::SeqCst), SWITCH_WRONG.load(Ordering::SeqCst));
    crate::println!("direct switch: {old} old, {new} new, {wrong} wrong; {direct_seen} direct, {generic_seen} generic");
    assert_eq!(
        wrong,
        0,
        "while the patch was final every call ran the replacement, whichever path it took; the first wrong one \
         (round * 100 + switch, CPU, the site's word then, its result): {:x?}",
        *SWITCH_FIRST_WRONG.lock()
    );
    assert!(new > 0 && old > 0, "both results were seen: {old} old, {new} new");
    assert_eq!((direct_seen, generic_seen), (100, 100), "each switch took effect at the site");
}

// ---- What cannot be called directly keeps the generic path ------------------

unsafe extern "C" {
    /// A replacement that starts with neither a TOC set-up nor a patchable
    /// entry: no trampoline can know its TOC needs.
    fn direct_unknown_entry_replacement();
}

core::arch::global_asm!(
    r#"
    .text
    # direct_unknown_entry_replacement: returns its argument times 5.
    # On entry: r3 = the argument. On exit: r3 = 5 * r3; r4 clobbered.
    .globl direct_unknown_entry_replacement
    .type direct_unknown_entry_replacement, @function
direct_unknown_entry_replacement:
    mulli   4, 3, 5                   # r4 = 5 * argument (the first word: no TOC set-up, no patchable entry)
    mr      3, 4                      # the result
    blr
    .size direct_unknown_entry_replacement, . - direct_unknown_entry_replacement
    "#
);

#[livepatchable]
fn refused_original(value: u64) -> u64 {
    black_box(value + 1)
}

#[ktest]
fn a_replacement_no_trampoline_can_call_keeps_the_generic_path() {
    with_direct_calls(|| {
        let function = refused_original as *const () as u64;
        let refused = direct::refused();
        enable(
            "direct-refused",
            &[("kernel::tests::direct::refused_original", None, direct_unknown_entry_replacement as *const () as u64)],
        )
        .expect("patchable");
        assert_eq!(refused_original(3), 15, "the patch is in effect");
        assert_eq!(direct::refused(), refused + 1, "its function was refused a trampoline");
        assert_eq!(site_target(function), Some(crate::arch::ftrace::ftrace_caller as *const () as u64));
        retire("direct-refused");
        assert_eq!(refused_original(3), 4);
    });
}

// ---- A patch module's trampolines go with it --------------------------------

#[ktest]
fn loading_and_unloading_a_patch_module_50_times_frees_its_trampolines_and_memory() {
    with_direct_calls(|| {
        let greeting = module::embedded::find("greeting").expect("the test kernel embeds the samples");
        let round = || {
            let before = direct::summary().len();
            settle::load(greeting).expect("the greeting module loads");
            assert_eq!(direct::summary().len(), before + 1, "its function is called directly");
            settle::unload("greeting").expect("unloads");
        };
        // First-use allocations (tables that grow once) before the baseline.
        (0..3).for_each(|_| round());
        let slots = direct::slots_in_use();
        settle::worker_gone();
        let (heap, _) = memory::usage();
        (0..50).for_each(|_| round());
        assert_eq!(direct::slots_in_use(), slots, "every trampoline freed");
        settle::worker_gone();
        assert_eq!(memory::usage().0, heap, "every heap byte back");
    });
}

// ---- A target module's function called directly -----------------------------

#[ktest]
fn a_target_modules_function_is_called_directly_and_its_trampoline_goes_with_the_module() {
    use crate::module::{commands, embedded};
    const ORIGINAL: &str = "hello from the hello-module target module\n";
    const FIXED: &str = "hello from the hello-module-fix live patch\n";
    with_direct_calls(|| {
        let file = |name| embedded::find(name).expect("the test kernel embeds the samples");
        let (live, available) = direct::slots_in_use();
        settle::load(file("hello-module")).expect("loads");
        settle::load(file("hello-module-fix")).expect("the patch of a loaded module loads");
        assert_eq!(commands::output_of("hello-module", "").as_deref(), Some(FIXED));
        let (site, _, trampoline) = *direct::summary().first().expect("the module's function is called directly");
        let (entry, module_site) = module::resolve_function("hello-module", "hello_module_message", None)
            .map(|(entry, _)| (entry, site_of(entry)))
            .expect("resolves");
        assert_eq!(site, module_site, "the direct site is the module function's");
        assert_eq!(site_target(entry), Some(trampoline), "its site branches to the trampoline");
        // The target module goes while the patch stays: its trampoline goes too.
        settle::unload("hello-module").expect("the patched module unloads");
        assert_eq!(direct::slots_in_use(), (live, available), "the module's trampoline was freed");
        settle::load(file("hello-module")).expect("loads again");
        assert_eq!(commands::output_of("hello-module", "").as_deref(), Some(FIXED), "patched as it loads");
        assert_eq!(direct::slots_in_use().0, live + 1, "and called directly again");
        settle::unload("hello-module-fix").expect("the patch unloads");
        assert_eq!(commands::output_of("hello-module", "").as_deref(), Some(ORIGINAL));
        settle::unload("hello-module").expect("unloads");
        assert_eq!(direct::slots_in_use(), (live, available));
    });
}

// ---- The stretch of a trampoline the timer does not preempt -----------------

/// `entering` (asked by `in_ftrace` before the timer preempts) covers every
/// slot's entry half, from its first instruction up to and including the
/// `bl` of C, and nothing from the return point on: a trampoline is freed
/// after a grace period, which relies on no thread being switched out there.
#[ktest]
fn entering_covers_every_slots_entry_half_up_to_and_including_its_call() {
    let windows = trampoline::windows();
    assert_eq!(
        windows.returned,
        windows.call + 4 * portable::trampoline::CALL_WORDS as u64,
        "the bl is the last call word"
    );
    for slot in [0, 1, trampoline::SLOTS / 2, trampoline::SLOTS - 1] {
        let start = trampoline::slot_address(slot);
        for offset in (0..windows.returned).step_by(4) {
            assert!(crate::arch::livepatch::entering(start + offset), "slot {slot} +{offset:#x} is not preemptible");
        }
        for offset in (windows.returned..trampoline::SLOT_SIZE as u64).step_by(4) {
            assert!(!crate::arch::livepatch::entering(start + offset), "slot {slot} +{offset:#x} is preemptible");
        }
    }
    assert!(!crate::arch::livepatch::entering(trampoline::pool().start - 4));
    assert!(!crate::arch::livepatch::entering(trampoline::pool().end));
}

// ---- A trampoline freed while a thread is inside its replacement ------------

#[livepatchable]
fn parked_original(value: u64) -> u64 {
    black_box(value + 1)
}

static PARKED_INSIDE: AtomicBool = AtomicBool::new(false);
static PARKED_RELEASE: AtomicBool = AtomicBool::new(false);

/// Waits (yielding) inside the replacement until released.
#[inline(never)]
fn parked_replacement(value: u64) -> u64 {
    PARKED_INSIDE.store(true, Ordering::SeqCst);
    while !PARKED_RELEASE.load(Ordering::SeqCst) {
        thread::yield_now();
    }
    black_box(value + 100)
}

/// A thread inside a replacement it entered through a trampoline returns
/// through that trampoline's return half after the trampoline was freed
/// (direct calls switched off: no transition waits for the thread): the
/// entry half is `trap` by then, the return half is as it was.
#[ktest]
fn a_thread_inside_a_replacement_returns_through_its_freed_trampoline() {
    with_direct_calls(|| {
        PARKED_INSIDE.store(false, Ordering::SeqCst);
        PARKED_RELEASE.store(false, Ordering::SeqCst);
        let original = parked_original as *const () as u64;
        enable(
            "direct-parked",
            &[("kernel::tests::direct::parked_original", None, parked_replacement as *const () as u64)],
        )
        .expect("patchable");
        let slot = site_target(original).expect("direct");
        assert!(trampoline::pool().contains(&slot));
        static PARKED_RESULT: AtomicU64 = AtomicU64::new(0);
        static PARKED_DEPTH: AtomicU64 = AtomicU64::new(u64::MAX);
        let parked = thread::spawn("direct-parked", || {
            PARKED_RESULT.store(parked_original(1), Ordering::SeqCst);
            // Back in the caller: the livepatch frame was popped.
            PARKED_DEPTH.store(livepatch_depth(), Ordering::SeqCst);
        })
        .expect("room for a thread");
        while !PARKED_INSIDE.load(Ordering::SeqCst) {
            thread::yield_now();
        }
        direct::set_enabled(false).expect("off");
        assert_eq!(text::read(slot), portable::instruction::TRAP, "the trampoline was freed: its entry half is trap");
        PARKED_RELEASE.store(true, Ordering::SeqCst);
        assert_eq!(parked.join(), thread::ExitStatus::Returned);
        assert_eq!(PARKED_RESULT.load(Ordering::SeqCst), 101, "the replacement's result");
        assert_eq!(PARKED_DEPTH.load(Ordering::SeqCst), 0, "the livepatch stack balanced");
        direct::set_enabled(true).expect("on");
        retire("direct-parked");
    });
}

/// Bytes on the current thread's livepatch stack.
#[notrace]
fn livepatch_depth() -> u64 {
    let info = crate::thread::current_thread_info();
    // Safety: the current thread's own thread_info.
    unsafe { (*info).livepatch_sp - info as u64 - crate::thread::LIVEPATCH_STACK_OFFSET as u64 }
}

/// What the reliable walker makes of an address in a trampoline slot: the
/// return point stands for the newest livepatch frame's link, any other
/// address (entry half, return half, a freed or pristine slot's words) is
/// unreliable; a pool address is never taken for ordinary kernel text.
#[ktest]
fn the_reliable_walker_knows_every_slot_of_the_pool() {
    use crate::arch::stacktrace::{Kind, classify};
    let no_module = |_: u64| false;
    let windows = trampoline::windows();
    for slot in [0, trampoline::SLOTS / 3, trampoline::SLOTS - 1] {
        let start = trampoline::slot_address(slot);
        assert_eq!(classify(start + windows.returned, &no_module), Kind::LivepatchReturn, "slot {slot}'s return point");
        for offset in (0..trampoline::SLOT_SIZE as u64).step_by(4).filter(|&offset| offset != windows.returned) {
            assert_eq!(classify(start + offset, &no_module), Kind::LivepatchWindow, "slot {slot} +{offset:#x}");
        }
    }
    let after = trampoline::pool().end;
    assert_ne!(classify(after, &no_module), Kind::LivepatchWindow, "past the pool is not livepatch code");
}
