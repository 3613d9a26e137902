//! Tests of direct calls: final patches reached through a trampoline, ftrace's direct API, switching paths.
use super::livepatch::{enable, retire};
use crate::arch::text;
use crate::arch::trampoline;
use crate::livepatch::{self, direct};
use crate::trace::{self, Filter, FtraceOps, FtraceRegs, OpsFlags};
use core::hint::black_box;
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

#[ktest]
fn a_final_patch_is_called_through_a_trampoline_and_leaves_none_behind() {
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
    TRACED_CALLS.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
}
static TRACED_CALLS: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
static COUNTER: FtraceOps = FtraceOps::new("direct-test-counter", count_calls, OpsFlags::RECURSION_SAFE);

#[ktest]
fn tracing_a_direct_function_takes_the_stub_and_stopping_returns_to_the_trampoline() {
    let original = direct_original as *const () as u64;
    enable("direct-traced", &[(ORIGINAL, None, direct_replacement as *const () as u64)]).expect("patchable");
    let trampoline = site_target(original).expect("direct");
    assert!(trampoline::pool().contains(&trampoline));
    trace::register(&COUNTER, Filter::Names(&[ORIGINAL])).expect("traceable");
    assert_eq!(site_target(original), Some(crate::arch::ftrace::ftrace_caller as *const () as u64), "shared: the stub");
    let before = TRACED_CALLS.load(core::sync::atomic::Ordering::Relaxed);
    assert_eq!(direct_original(1), 101, "the patch stays in effect while traced");
    assert_eq!(TRACED_CALLS.load(core::sync::atomic::Ordering::Relaxed), before + 1, "and the tracer sees the call");
    trace::unregister(&COUNTER).expect("registered");
    assert_eq!(site_target(original), Some(trampoline), "back to the same trampoline");
    assert_eq!(direct_original(1), 101, "the patch stays in effect after the tracer left");
    retire("direct-traced");
    assert_eq!(direct_original(1), 2);
}
