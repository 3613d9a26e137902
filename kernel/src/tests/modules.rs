//! Tests of patch modules: the seed's case with a real separately built module, signatures, unloading.
use super::settle;
use crate::arch::registers::toc_pointer;
use crate::livepatch::api::REPORTED_TOC;
use crate::memory;
use crate::module::{self, LoadError};
use core::hint::black_box;
use core::sync::atomic::{AtomicU64, Ordering};
use macros::ktest;

fn embedded(name: &str) -> &'static [u8] {
    module::embedded::find(name).expect("xtask builds the sample modules into the test kernel")
}

static CALLER_GLOBAL: AtomicU64 = AtomicU64::new(0);

/// A: calls kernel::shell::greeting at its local entry (same TOC, no TOC
/// save), then reads a global through r2.
#[inline(never)]
fn greeting_caller() -> (usize, u64) {
    let text = crate::shell::greeting();
    (text.len(), CALLER_GLOBAL.load(Ordering::Relaxed))
}

#[ktest]
fn module_replacement_runs_with_its_own_toc_and_the_caller_gets_its_toc_back() {
    CALLER_GLOBAL.store(black_box(0x5eed), Ordering::Relaxed);
    let before = crate::shell::greeting();
    let name = settle::load(embedded("counter")).expect("the counter module loads");
    assert_eq!(name, "counter");
    REPORTED_TOC.store(0, Ordering::SeqCst);
    let (length, global) = greeting_caller();
    let text = crate::shell::greeting();
    let module_toc = module::toc_of("counter").expect("loaded");
    let seen = REPORTED_TOC.load(Ordering::SeqCst);
    // Compared while the module is loaded; what it returned is a kernel-owned copy anyway.
    assert_ne!(text, before, "the module's replacement ran");
    assert!(!module::contains(text.as_ptr() as u64), "the replacement returned a copy, not a pointer into the module");
    settle::unload("counter").expect("unloads");
    assert_eq!(global, 0x5eed, "A read its global through the kernel TOC after the call");
    assert_eq!(seen, module_toc, "inside C, r2 was the module's TOC");
    assert_ne!(seen, toc_pointer(), "not the kernel's");
    assert!(length > 0);
    assert_eq!(crate::shell::greeting(), before, "unloading restored the original");
}

#[inline(never)]
fn ten_caller() -> u64 {
    crate::livepatch::api::klp_demo_ten(black_box(1), 2, 3, 4, 5, 6, 7, 8, black_box(9), black_box(10))
}

#[ktest]
fn module_replacement_of_a_ten_argument_function_gets_all_ten() {
    assert_eq!(ten_caller(), 55);
    settle::load(embedded("ten")).expect("the ten module loads");
    REPORTED_TOC.store(0, Ordering::SeqCst);
    let patched = ten_caller();
    let module_toc = module::toc_of("ten").expect("loaded");
    let seen = REPORTED_TOC.load(Ordering::SeqCst);
    settle::unload("ten").expect("unloads");
    // The sample computes the sum of i * argument_i: 1*1 + 2*2 + ... + 10*10.
    assert_eq!(patched, (1..=10).map(|i| i * i).sum::<u64>(), "arguments 9 and 10 arrived unchanged");
    assert_eq!(seen, module_toc);
    assert_eq!(ten_caller(), 55);
}

#[ktest]
fn load_enable_disable_unload_100_times_returns_all_memory() {
    let file = embedded("greeting");
    let original = crate::shell::greeting();
    // Warm up once: first-use allocations (tables that stay, the kernel's
    // copy of the greeting) are not leaks.
    settle::load(file).expect("loads");
    assert_eq!(crate::shell::greeting(), "hello from the greeting patch module");
    settle::unload("greeting").expect("unloads");
    settle::worker_gone();
    let (before, _) = memory::usage();
    for round in 0..100 {
        module::load(file).expect("loads");
        // On the consistency model, load starts the enable transition and
        // this thread switches at its own check: it runs the module at once,
        // whether the transition completed within the load's wait or was
        // left to the worker (`livepatch.transition_wait=0`).
        assert_eq!(crate::shell::greeting(), "hello from the greeting patch module", "round {round}");
        settle::unload("greeting").expect("unloads");
        assert!(crate::livepatch::status().is_none(), "round {round}: the disable transition completed");
        assert_eq!(crate::shell::greeting(), original, "round {round}: unloading restored the original");
    }
    // Nothing of a transition stays allocated either (its blocked list, a
    // retry worker's thread).
    settle::worker_gone();
    assert_eq!(memory::usage().0, before, "heap usage back to where it started");
}

#[ktest]
fn altered_or_unsigned_modules_are_refused_and_nothing_changes() {
    let file = embedded("greeting");
    let before = crate::shell::greeting();
    let mut altered = file.to_vec();
    let middle = altered.len() / 2;
    altered[middle] ^= 0x40;
    assert!(matches!(module::load(&altered), Err(LoadError::Signature(_))));
    let unsigned = &file[..file.len() - 80];
    assert!(module::load(unsigned).is_err());
    assert!(module::load(&[]).is_err());
    assert!(module::load(b"not a module at all").is_err());
    assert_eq!(crate::shell::greeting(), before);
    assert!(module::summaries().is_empty());
    // A second load of the same patch is refused while the first is loaded.
    settle::load(file).expect("loads");
    assert!(matches!(module::load(file), Err(LoadError::AlreadyLoaded(_))));
    settle::unload("greeting").expect("unloads");
    assert!(matches!(module::unload("greeting"), Err(LoadError::NotLoaded(_))));
}

#[ktest]
fn patches_naming_missing_notrace_or_unmarked_functions_are_refused() {
    use crate::livepatch::LivepatchError;
    let before = crate::shell::greeting();
    // Warm up the allocations that stay (registry tables) before measuring.
    let _ = module::load(embedded("missing-target"));
    let (used_before, _) = memory::usage();
    match module::load(embedded("missing-target")) {
        Err(LoadError::Livepatch(LivepatchError::UnknownFunction(name))) => {
            assert_eq!(name, "kernel::shell::no_such_function")
        }
        other => panic!("expected an unknown function, got {other:?}"),
    }
    match module::load(embedded("notrace-target")) {
        Err(LoadError::Livepatch(LivepatchError::NotTraceable(name))) => assert_eq!(name, "exception_dispatch"),
        other => panic!("expected a notrace target, got {other:?}"),
    }
    // Traceable, so refused only because it is not marked #[livepatchable].
    assert!(crate::trace::site_table().named_entry("kernel::shell::uptime", None).is_ok(), "uptime has an ftrace site");
    match module::load(embedded("unmarked-target")) {
        Err(LoadError::Livepatch(error @ LivepatchError::NotLivepatchable(_))) => {
            let message = alloc::format!("{error}");
            assert!(message.contains("'kernel::shell::uptime' is not marked #[livepatchable]"), "{message}");
        }
        other => panic!("expected a target not marked #[livepatchable], got {other:?}"),
    }
    assert_eq!(memory::usage().0, used_before, "the refused modules' memory went back to the heap");
    assert!(module::summaries().is_empty(), "nothing loaded");
    assert!(crate::livepatch::list().iter().all(|patch| patch.name == "builtin-greeting"), "no patch added");
    assert_eq!(crate::shell::greeting(), before);
}
