//! Tests of the livepatch core and `livepatch_handler`, on exactly the cases the seed names.
use super::settle;
use crate::arch::livepatch::LivepatchFrame;
use crate::arch::registers::toc_pointer;
use crate::arch::text;
use crate::livepatch::{self, Function, LivepatchError, Object, Patch, PlanError};
use crate::thread::{self, ExitStatus, LIVEPATCH_STACK_OFFSET, current_thread_info};
use crate::trace::{self, Filter, FtraceError, FtraceOps, FtraceRegs, OpsFlags};
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::hint::black_box;
use core::mem::size_of;
use core::sync::atomic::{AtomicU64, Ordering};
use macros::{ktest, livepatchable, notrace};
use portable::instruction;

/// Adds a patch replacing each (name, position, replacement) and enables it.
pub(super) fn enable(name: &str, functions: &[(&str, Option<usize>, u64)]) -> Result<(), LivepatchError> {
    let functions = functions
        .iter()
        .map(|&(old_name, old_position, new_address)| Function {
            old_name: String::from(old_name),
            old_position,
            new_address,
            allow_inlined: false,
        })
        .collect();
    livepatch::add(Patch {
        name: String::from(name),
        objects: vec![Object { module: None, functions, ..Default::default() }],
        ..Default::default()
    })?;
    super::settle::enable(name).inspect_err(|_| {
        livepatch::remove(name).expect("just added");
    })
}

/// Disables and removes a patch.
pub(super) fn retire(name: &str) {
    super::settle::disable(name).expect("patch enabled");
    livepatch::remove(name).expect("patch disabled");
}

/// Bytes on the current thread's livepatch stack.
#[notrace]
fn livepatch_depth() -> u64 {
    let info = current_thread_info();
    // Safety: the current thread's own thread_info.
    unsafe { (*info).livepatch_sp - info as u64 - LIVEPATCH_STACK_OFFSET as u64 }
}

fn address(function: *const ()) -> u64 {
    function as u64
}

// ---- 1. Same-TOC caller, different-TOC replacement -------------------------

static CALLER_GLOBAL: AtomicU64 = AtomicU64::new(0x1234);

#[livepatchable]
fn toc_callee(value: u64) -> u64 {
    black_box(value + 1)
}

/// A: calls B's local entry (same TOC, so no TOC save and no `ld r2,24(r1)`
/// after the call), then reads a global through r2.
#[inline(never)]
fn toc_caller(value: u64) -> u64 {
    let result = toc_callee(black_box(value));
    result + CALLER_GLOBAL.load(Ordering::Relaxed)
}

core::arch::global_asm!(
    r#"
    .text
    # A replacement that runs with its own TOC, as a function of a separately
    # loaded module does: it computes r2 from r12 (its global entry), reads
    # its constant through that r2, records r2, and returns with r2 still
    # pointing at its own TOC.
    .globl livepatch_test_foreign_toc_replacement
    .type livepatch_test_foreign_toc_replacement, @function
livepatch_test_foreign_toc_replacement:
    addis   2, 12, (livepatch_test_foreign_toc - livepatch_test_foreign_toc_replacement)@ha
    addi    2, 2, (livepatch_test_foreign_toc - livepatch_test_foreign_toc_replacement)@l
    ld      4, 0(2)                   # r4 = the module's constant, through its TOC
    add     3, 3, 4                   # result = argument + constant
    std     2, 8(2)                   # remember the r2 seen here
    blr                               # back with the foreign r2
    .size livepatch_test_foreign_toc_replacement, . - livepatch_test_foreign_toc_replacement

    .data
    .balign 8
    .globl livepatch_test_foreign_toc
livepatch_test_foreign_toc:
    .quad 1000000                     # the constant
    .quad 0                           # r2 as seen by the replacement
    "#
);

unsafe extern "C" {
    fn livepatch_test_foreign_toc_replacement(value: u64) -> u64;
    static livepatch_test_foreign_toc: [u64; 2];
}

/// The words of A from its local entry to its first `blr`.
fn body_of(function: u64) -> Vec<(u64, u32)> {
    let start = text::local_entry(function);
    (0..256u64)
        .map(|index| start + 4 * index)
        .map(|at| (at, text::read(at)))
        .take_while(|(_, word)| *word != instruction::BLR)
        .collect()
}

#[ktest]
fn same_toc_caller_survives_a_replacement_with_another_toc() {
    // The generated code is the hard case: A calls B's local entry and does
    // not restore r2 after the call, and reads its global through r2 after it.
    let callee = address(toc_callee as *const ());
    let callee_local = text::local_entry(callee);
    let body = body_of(address(toc_caller as *const ()));
    let call = body
        .iter()
        .position(|&(at, word)| instruction::branch_target(at, word) == Some((callee_local, true)))
        .expect("A calls B's local entry with bl");
    const RESTORE_TOC: u32 = 0xe841_0018; // ld r2,24(r1)
    assert_ne!(body[call + 1].1, RESTORE_TOC, "no TOC restore after the call");
    assert!(!body.iter().any(|&(_, word)| word == RESTORE_TOC), "A never restores r2");
    let uses_toc_after_call = body[call + 1..].iter().any(|&(_, word)| word >> 26 == 15 && (word >> 16) & 0x1f == 2);
    assert!(uses_toc_after_call, "A addresses its global through r2 after the call");

    // A value the compiler cannot know, so that A really loads the global.
    CALLER_GLOBAL.store(black_box(0x1234), Ordering::Relaxed);
    let expected_original = 5 + 1 + 0x1234;
    assert_eq!(toc_caller(5), expected_original);
    enable(
        "foreign-toc",
        &[("kernel::tests::livepatch::toc_callee", None, address(livepatch_test_foreign_toc_replacement as *const ()))],
    )
    .unwrap();
    let patched = toc_caller(5);
    let seen = unsafe { core::ptr::read_volatile(&raw const livepatch_test_foreign_toc) };
    retire("foreign-toc");
    assert_eq!(patched, 5 + 1_000_000 + 0x1234, "A read its global through its own TOC");
    assert_ne!(seen[1], toc_pointer(), "the replacement ran with another TOC");
    assert_eq!(seen[1], &raw const livepatch_test_foreign_toc as u64);
    assert_eq!(toc_caller(5), expected_original);
    assert_eq!(livepatch_depth(), 0);
}

// ---- 2. More than eight arguments, and variadic ----------------------------

static RECEIVED: [AtomicU64; 12] = [const { AtomicU64::new(0) }; 12];

#[livepatchable]
#[allow(clippy::too_many_arguments)]
fn ten_original(a: u64, b: u64, c: u64, d: u64, e: u64, f: u64, g: u64, h: u64, i: u64, j: u64) -> u64 {
    black_box(a + b + c + d + e + f + g + h + i + j)
}

#[inline(never)]
#[allow(clippy::too_many_arguments)]
fn ten_replacement(a: u64, b: u64, c: u64, d: u64, e: u64, f: u64, g: u64, h: u64, i: u64, j: u64) -> u64 {
    for (slot, value) in RECEIVED.iter().zip([a, b, c, d, e, f, g, h, i, j]) {
        slot.store(value, Ordering::SeqCst);
    }
    black_box(a * b * c + i * 1000 + j * 1_000_000)
}

#[inline(never)]
fn ten_caller() -> u64 {
    ten_original(black_box(1), 2, 3, 4, 5, 6, 7, 8, black_box(9), black_box(10))
}

#[ktest]
fn ten_arguments_reach_the_replacement_unchanged() {
    assert_eq!(ten_caller(), 55);
    enable("ten", &[("kernel::tests::livepatch::ten_original", None, address(ten_replacement as *const ()))]).unwrap();
    let patched = ten_caller();
    retire("ten");
    let received: Vec<u64> = RECEIVED[..10].iter().map(|slot| slot.load(Ordering::SeqCst)).collect();
    assert_eq!(received, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], "arguments 9 and 10 come from A's frame");
    assert_eq!(patched, 6 + 9000 + 10_000_000);
    assert_eq!(ten_caller(), 55);
}

#[livepatchable]
unsafe extern "C" fn variadic_original(count: usize, mut arguments: ...) -> u64 {
    let mut sum = 0;
    for _ in 0..count {
        // Safety: the caller passes `count` u64 values.
        sum += unsafe { arguments.arg::<u64>() };
    }
    black_box(sum)
}

#[inline(never)]
unsafe extern "C" fn variadic_replacement(count: usize, mut arguments: ...) -> u64 {
    let mut weighted = 0;
    for (index, received) in RECEIVED.iter().enumerate().take(count) {
        // Safety: as above.
        let value = unsafe { arguments.arg::<u64>() };
        received.store(value, Ordering::SeqCst);
        weighted += value * (index as u64 + 1);
    }
    black_box(weighted)
}

#[inline(never)]
fn variadic_caller() -> u64 {
    // Safety: twelve u64 values, as the count says.
    unsafe {
        variadic_original(12, 1u64, 2u64, 3u64, 4u64, 5u64, 6u64, 7u64, 8u64, 9u64, 10u64, 11u64, black_box(12u64))
    }
}

#[ktest]
fn variadic_call_with_twelve_arguments_reaches_the_replacement() {
    assert_eq!(variadic_caller(), 78);
    enable(
        "variadic",
        &[("kernel::tests::livepatch::variadic_original", None, address(variadic_replacement as *const ()))],
    )
    .unwrap();
    let patched = variadic_caller();
    retire("variadic");
    let received: Vec<u64> = RECEIVED.iter().map(|slot| slot.load(Ordering::SeqCst)).collect();
    assert_eq!(received, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
    assert_eq!(patched, (1..=12).map(|value| value * value).sum::<u64>());
}

// ---- 3. Nesting and recursion ----------------------------------------------

#[livepatchable]
fn inner_original(value: u64) -> u64 {
    black_box(value + 1)
}

#[inline(never)]
fn inner_replacement(value: u64) -> u64 {
    RECEIVED[0].store(livepatch_depth(), Ordering::SeqCst);
    black_box(value + 100)
}

#[livepatchable]
fn outer_original(value: u64) -> u64 {
    black_box(value + 2)
}

#[inline(never)]
fn outer_replacement(value: u64) -> u64 {
    // Calls another patched function from inside a replacement.
    inner_original(black_box(value)) * 10
}

#[livepatchable]
fn recursive_original(depth: u64) -> u64 {
    if depth == 0 { 0 } else { black_box(recursive_original(depth - 1)) + 1 }
}

#[inline(never)]
fn recursive_replacement(depth: u64) -> u64 {
    if depth == 0 {
        RECEIVED[1].store(livepatch_depth(), Ordering::SeqCst);
        return 0;
    }
    // Through the patched original: every level passes livepatch_handler.
    black_box(recursive_original(depth - 1)) + 2
}

#[ktest]
fn nested_and_recursive_replacements_balance_the_livepatch_stack() {
    let frame = size_of::<LivepatchFrame>() as u64;
    enable(
        "nesting",
        &[
            ("kernel::tests::livepatch::outer_original", None, address(outer_replacement as *const ())),
            ("kernel::tests::livepatch::inner_original", None, address(inner_replacement as *const ())),
            ("kernel::tests::livepatch::recursive_original", None, address(recursive_replacement as *const ())),
        ],
    )
    .unwrap();
    let nested = outer_original(black_box(1));
    let recursed = recursive_original(black_box(200));
    let depth_after = livepatch_depth();
    retire("nesting");
    assert_eq!(nested, 1010);
    assert_eq!(RECEIVED[0].load(Ordering::SeqCst), 2 * frame, "two livepatch frames while inner runs inside outer");
    assert_eq!(recursed, 400);
    assert_eq!(RECEIVED[1].load(Ordering::SeqCst), 201 * frame, "one frame per level, 201 levels");
    assert_eq!(depth_after, 0);
    assert!(thread::snapshot().iter().all(|summary| summary.livepatch_depth == 0));
    assert_eq!(recursive_original(200), 200);
}

// ---- 4. Stacked patches ------------------------------------------------------

#[livepatchable]
fn stacked_original() -> u64 {
    black_box(1)
}

#[inline(never)]
fn stacked_first() -> u64 {
    black_box(2)
}

#[inline(never)]
fn stacked_second() -> u64 {
    black_box(3)
}

#[ktest]
fn stacked_patches_fall_back_in_order() {
    let name = "kernel::tests::livepatch::stacked_original";
    assert_eq!(stacked_original(), 1);
    enable("stack-first", &[(name, None, address(stacked_first as *const ()))]).unwrap();
    assert_eq!(stacked_original(), 2);
    enable("stack-second", &[(name, None, address(stacked_second as *const ()))]).unwrap();
    assert_eq!(stacked_original(), 3, "the newest enabled patch wins");
    match livepatch::disable("stack-first") {
        Err(LivepatchError::Plan(PlanError::NotTopmost { topmost, .. })) => assert_eq!(topmost, "stack-second"),
        other => panic!("expected not topmost, got {other:?}"),
    }
    assert_eq!(stacked_original(), 3, "the refused disable changed nothing");
    retire("stack-second");
    assert_eq!(stacked_original(), 2, "back to the previous patch");
    retire("stack-first");
    assert_eq!(stacked_original(), 1, "back to the original");
}

#[livepatchable]
fn stacked_busy() -> u64 {
    black_box(4)
}

#[ktest]
fn a_patch_refused_on_top_of_another_leaves_the_redirect_table_as_it_was() {
    let name = "kernel::tests::livepatch::stacked_original";
    let busy = "kernel::tests::livepatch::stacked_busy";
    enable("stack-first", &[(name, None, address(stacked_first as *const ()))]).unwrap();
    trace::register(&OTHER_IPMODIFY, Filter::Names(&[busy])).unwrap();
    let second = address(stacked_second as *const ());
    let error = enable("stack-refused", &[(name, None, second), (busy, None, second)]).unwrap_err();
    trace::unregister(&OTHER_IPMODIFY).unwrap();
    assert!(matches!(error, LivepatchError::Busy { .. }), "{error}");
    // The refused patch's table was published before ftrace refused; it must
    // not stay: the first patch's site is still on and reads the table.
    assert_eq!(stacked_original(), 2, "the enabled patch still runs");
    assert_eq!(stacked_busy(), 4);
    retire("stack-first");
    assert_eq!(stacked_original(), 1, "back to the original");
}

// ---- 5. Marker corruption ----------------------------------------------------

#[livepatchable]
fn marker_original() -> u64 {
    black_box(1)
}

#[inline(never)]
fn marker_replacement() -> u64 {
    // Overwrite this call's marker: the return path must trap.
    let info = current_thread_info();
    // Safety: the top livepatch frame of this thread is this call's.
    unsafe {
        let top = (*info).livepatch_sp;
        ((top - size_of::<LivepatchFrame>() as u64 + core::mem::offset_of!(LivepatchFrame, marker) as u64) as *mut u64)
            .write_volatile(0xdead_beef);
    }
    black_box(2)
}

/// `livepatch_handler`'s code.
fn handler_range() -> core::ops::Range<u64> {
    crate::arch::livepatch::livepatch_handler as *const () as u64
        ..&raw const crate::arch::livepatch::livepatch_handler_end as u64
}

/// The code a final patch's calls pass now: the trampolines' template with
/// direct calls on (their BUGs are reported as its), `livepatch_handler`
/// with them off (the livepatch suite runs both ways).
fn patched_call_code() -> core::ops::Range<u64> {
    if crate::livepatch::direct::enabled() {
        let template = crate::arch::trampoline::livepatch_trampoline_template as *const () as u64;
        template..template + crate::arch::trampoline::windows().end
    } else {
        handler_range()
    }
}

/// The lines of the two BUG sites (overflow check, marker check) in the
/// code a final patch's calls pass (`patched_call_code`).
fn livepatch_bug_lines() -> (u32, u32) {
    let code = patched_call_code();
    let mut lines: Vec<u32> = crate::bug::entries()
        .iter()
        .filter(|entry| code.contains(&entry.trap_address))
        .map(|entry| entry.location.line)
        .collect();
    lines.sort_unstable();
    assert_eq!(lines.len(), 2, "livepatch_handler and the trampolines' template each record two BUG sites");
    (lines[0], lines[1])
}

#[ktest]
fn overwritten_marker_is_a_bug_that_kills_only_its_thread() {
    enable("marker", &[("kernel::tests::livepatch::marker_original", None, address(marker_replacement as *const ()))])
        .unwrap();
    let victim = thread::spawn_on(crate::arch::percpu::BOOT_CPU, "marker-victim", || {
        black_box(marker_original());
    })
    .unwrap();
    let status = victim.join();
    retire("marker");
    assert_eq!(status, ExitStatus::Killed("BUG"));
    let location = crate::bug::last().expect("a BUG was taken");
    let code_file = crate::bug::entries()
        .iter()
        .find(|entry| patched_call_code().contains(&entry.trap_address))
        .map(|entry| entry.location.file());
    assert_eq!(
        Some(location.file()),
        code_file,
        "the BUG is the trampoline's (or, direct calls off, livepatch_handler's)"
    );
    assert_eq!(location.line, livepatch_bug_lines().1, "the marker check's line");
    assert_eq!(marker_original(), 1, "the kernel goes on");
}

// ---- 6. Livepatch stack overflow ---------------------------------------------

static OVERFLOW_BASE: AtomicU64 = AtomicU64::new(0);

#[livepatchable]
fn runaway_original(depth: u64) -> u64 {
    black_box(depth)
}

#[inline(never)]
fn runaway_replacement(depth: u64) -> u64 {
    black_box(runaway_original(depth + 1)) + 1
}

#[ktest(isolated)]
fn livepatch_stack_overflow_is_caught_before_it_overwrites_anything() {
    enable(
        "runaway",
        &[("kernel::tests::livepatch::runaway_original", None, address(runaway_replacement as *const ()))],
    )
    .unwrap();
    let victim = thread::spawn_on(crate::arch::percpu::BOOT_CPU, "runaway", || {
        OVERFLOW_BASE.store(current_thread_info() as u64, Ordering::SeqCst);
        black_box(runaway_original(0));
    })
    .unwrap();
    thread::sleep_milliseconds(50);
    // The victim is dead but not yet joined: its stack is still there to inspect.
    let base = OVERFLOW_BASE.load(Ordering::SeqCst);
    // Safety: the dead thread's stack stays allocated until join.
    let (magic, livepatch_sp) = unsafe {
        (*((base + thread::MAGIC_OFFSET as u64) as *const u64), (*(base as *const thread::ThreadInfo)).livepatch_sp)
    };
    let status = victim.join();
    retire("runaway");
    assert_eq!(status, ExitStatus::Killed("BUG"));
    assert_eq!(crate::bug::last().map(|location| location.line), Some(livepatch_bug_lines().0), "the overflow check");
    assert_eq!(magic, thread::STACK_END_MAGIC, "nothing below the livepatch stack was touched");
    assert!(livepatch_sp > base + 8192, "the livepatch stack had grown deep: {:#x}", livepatch_sp - base);
}

// ---- 7. Preemption -------------------------------------------------------------

#[livepatchable]
fn contended_original(value: u64) -> u64 {
    black_box(value * 2)
}

#[inline(never)]
fn contended_replacement(value: u64) -> u64 {
    black_box(value * 3)
}

#[ktest]
fn patching_500_times_under_random_preemption_gives_old_or_new_results_only() {
    static DONE: AtomicU64 = AtomicU64::new(0);
    static WRONG: AtomicU64 = AtomicU64::new(0);
    static CALLS: AtomicU64 = AtomicU64::new(0);
    static OLD: AtomicU64 = AtomicU64::new(0);
    static NEW: AtomicU64 = AtomicU64::new(0);
    static FROM_MODULE: AtomicU64 = AtomicU64::new(0);
    for counter in [&DONE, &WRONG, &CALLS, &OLD, &NEW, &FROM_MODULE] {
        counter.store(0, Ordering::SeqCst);
    }
    let original_greeting = crate::shell::greeting();
    let workers: Vec<_> = (0..4u64)
        .map(|worker| {
            thread::spawn_on(crate::arch::percpu::BOOT_CPU, "caller", move || {
                let mut value = worker;
                while DONE.load(Ordering::SeqCst) == 0 {
                    value = value.wrapping_add(7) % 1000 + 1;
                    let result = contended_original(black_box(value));
                    if result == value * 2 {
                        OLD.fetch_add(1, Ordering::SeqCst);
                    } else if result == value * 3 {
                        NEW.fetch_add(1, Ordering::SeqCst);
                    } else {
                        WRONG.fetch_add(1, Ordering::SeqCst);
                    }
                    // The function the greeting module replaces, loaded and unloaded meanwhile.
                    let text = crate::shell::greeting();
                    if text == "hello from the greeting patch module" {
                        FROM_MODULE.fetch_add(1, Ordering::SeqCst);
                    } else if text != original_greeting {
                        WRONG.fetch_add(1, Ordering::SeqCst);
                    }
                    CALLS.fetch_add(1, Ordering::SeqCst);
                    // Outside both functions: a transition may switch this thread here.
                    livepatch::safe_point();
                }
                assert_eq!(livepatch_depth(), 0, "this thread's livepatch stack is balanced");
            })
            .unwrap()
        })
        .collect();
    let name = "kernel::tests::livepatch::contended_original";
    livepatch::add(Patch {
        name: String::from("contended"),
        objects: vec![Object {
            module: None,
            functions: vec![Function {
                old_name: String::from(name),
                old_position: None,
                new_address: address(contended_replacement as *const ()),
                allow_inlined: false,
            }],
            ..Default::default()
        }],
        ..Default::default()
    })
    .unwrap();
    let greeting = crate::module::embedded::find("greeting").expect("the test kernel embeds the samples");
    let toggler = thread::spawn_on(crate::arch::percpu::BOOT_CPU, "toggler", move || {
        crate::time::set_jitter(0x9e37_79b9_7f4a_7c15);
        for round in 0..500 {
            settle::enable("contended").unwrap();
            if round % 10 == 0 {
                crate::module::load(greeting).expect("the greeting module loads");
            }
            thread::yield_now();
            settle::disable("contended").unwrap();
            if round % 10 == 0 {
                settle::unload("greeting").expect("the greeting module unloads");
            }
            thread::yield_now();
        }
        crate::time::set_jitter(0);
    })
    .unwrap();
    assert_eq!(toggler.join(), ExitStatus::Returned);
    DONE.store(1, Ordering::SeqCst);
    for worker in workers {
        assert_eq!(worker.join(), ExitStatus::Returned);
    }
    livepatch::remove("contended").unwrap();
    let (old, new, from_module) =
        (OLD.load(Ordering::SeqCst), NEW.load(Ordering::SeqCst), FROM_MODULE.load(Ordering::SeqCst));
    assert_eq!(WRONG.load(Ordering::SeqCst), 0);
    assert!(CALLS.load(Ordering::SeqCst) > 1000, "{} calls", CALLS.load(Ordering::SeqCst));
    assert!(old > 0 && new > 0, "both the original and the replacement ran: {old} old, {new} new");
    assert!(from_module > 0, "the module's replacement ran");
    assert!(crate::module::summaries().is_empty());
    assert!(thread::snapshot().iter().all(|summary| summary.livepatch_depth == 0));
}

// ---- Errors leave everything as it was -------------------------------------------

#[notrace]
extern "C" fn other_ipmodify(_: u64, _: u64, _: &FtraceOps, regs: &mut FtraceRegs) {
    let _ = regs;
}
static OTHER_IPMODIFY: FtraceOps = FtraceOps::new("other-ipmodify", other_ipmodify, OpsFlags::IPMODIFY);

fn ambiguous_twins() -> u64 {
    let first = {
        #[livepatchable]
        fn twin(value: u64) -> u64 {
            black_box(value + 1)
        }
        twin(black_box(1))
    };
    let second = {
        #[livepatchable]
        fn twin(value: u64) -> u64 {
            black_box(value + 2)
        }
        twin(black_box(1))
    };
    first * 10 + second
}

#[inline(never)]
fn twin_replacement(value: u64) -> u64 {
    black_box(value + 7)
}

fn site_words() -> Vec<u32> {
    trace::site_summaries().iter().map(|site| text::read(site.address)).collect()
}

#[ktest]
fn bad_patches_get_clear_errors_and_change_nothing() {
    let before = site_words();
    let replacement = address(stacked_first as *const ());
    let error = enable("unknown", &[("kernel::no::such::function", None, replacement)]).unwrap_err();
    assert!(matches!(error, LivepatchError::UnknownFunction(_)), "{error}");
    let error = enable("notrace", &[("exception_dispatch", None, replacement)]).unwrap_err();
    assert!(matches!(error, LivepatchError::NotTraceable(_)), "{error}");
    // Half good, half bad: the good half must not stay patched.
    let error = enable(
        "half",
        &[("kernel::tests::livepatch::stacked_original", None, replacement), ("kernel::no::such", None, replacement)],
    )
    .unwrap_err();
    assert!(matches!(error, LivepatchError::UnknownFunction(_)), "{error}");
    assert_eq!(stacked_original(), 1);

    trace::register(&OTHER_IPMODIFY, Filter::Names(&["kernel::tests::livepatch::stacked_original"])).unwrap();
    let error = enable("busy", &[("kernel::tests::livepatch::stacked_original", None, replacement)]).unwrap_err();
    trace::unregister(&OTHER_IPMODIFY).unwrap();
    match error {
        LivepatchError::Busy { owner, .. } => assert_eq!(owner, "other-ipmodify"),
        other => panic!("expected busy, got {other}"),
    }
    assert!(matches!(livepatch::enable("never-added"), Err(LivepatchError::Plan(PlanError::UnknownPatch(_)))));
    enable("twice", &[("kernel::tests::livepatch::stacked_original", None, replacement)]).unwrap();
    assert!(matches!(livepatch::enable("twice"), Err(LivepatchError::Plan(PlanError::AlreadyEnabled(_)))));
    match livepatch::remove("twice") {
        Err(LivepatchError::Plan(PlanError::StillEnabled(name))) => assert_eq!(name, "twice"),
        Err(other) => panic!("removing an enabled patch: expected StillEnabled, got {other}"),
        Ok(_) => panic!("an enabled patch was removed"),
    }
    assert_eq!(stacked_original(), 2, "the enabled patch still runs after the refused remove");
    assert!(matches!(
        livepatch::add(Patch { name: String::from("twice"), ..Default::default() }),
        Err(LivepatchError::Plan(PlanError::DuplicatePatch(_)))
    ));
    retire("twice");
    assert!(matches!(livepatch::disable("nope"), Err(LivepatchError::Plan(PlanError::UnknownPatch(_)))));
    assert_eq!(site_words(), before, "no site changed");
    assert!(livepatch::list().iter().all(|patch| patch.name == "builtin-greeting"), "only the built-in patch is left");
    let _ = FtraceError::NoMatch(String::new());
}

#[ktest]
fn ambiguous_names_need_a_position() {
    let name = "kernel::tests::livepatch::ambiguous_twins::twin";
    assert_eq!(ambiguous_twins(), 23);
    let replacement = address(twin_replacement as *const ());
    match enable("twin", &[(name, None, replacement)]) {
        Err(LivepatchError::Ambiguous { count, .. }) => assert_eq!(count, 2),
        other => panic!("expected ambiguous, got {other:?}"),
    }
    assert!(matches!(enable("twin", &[(name, Some(3), replacement)]), Err(LivepatchError::BadPosition { .. })));
    enable("twin", &[(name, Some(2), replacement)]).unwrap();
    let patched = ambiguous_twins();
    retire("twin");
    // Position 2 is the second in address order: one of the two, not both.
    assert!(patched == 80 + 3 || patched == 20 + 8, "{patched}");
}

// ---- Who changed nip -----------------------------------------------------------

#[livepatchable]
fn redirected_original() -> u64 {
    black_box(1)
}

#[inline(never)]
fn redirected_target() -> u64 {
    black_box(livepatch_depth() + 1000)
}

#[notrace]
extern "C" fn plain_redirect(_: u64, _: u64, _: &FtraceOps, regs: &mut FtraceRegs) {
    let target = redirected_target as *const () as u64;
    regs.regs.nip = text::local_entry(target);
}
static PLAIN_REDIRECT: FtraceOps =
    FtraceOps::new("plain-redirect", plain_redirect, OpsFlags::IPMODIFY.union(OpsFlags::RECURSION_SAFE));

#[ktest]
fn another_nip_changing_handler_is_not_taken_for_a_livepatch() {
    trace::register(&PLAIN_REDIRECT, Filter::Names(&["kernel::tests::livepatch::redirected_original"])).unwrap();
    let plain = redirected_original();
    trace::unregister(&PLAIN_REDIRECT).unwrap();
    assert_eq!(plain, 1000, "redirected without a livepatch frame");
    enable(
        "redirect",
        &[("kernel::tests::livepatch::redirected_original", None, address(redirected_target as *const ()))],
    )
    .unwrap();
    let patched = redirected_original();
    retire("redirect");
    assert_eq!(patched, 1000 + size_of::<LivepatchFrame>() as u64, "a livepatch call runs with one frame");
}

#[ktest]
fn function_graph_keeps_working_on_a_patched_function() {
    enable("graphed", &[("kernel::tests::livepatch::stacked_original", None, address(stacked_second as *const ()))])
        .unwrap();
    trace::graph::start("kernel::tests::livepatch::stacked_*").unwrap();
    let result = stacked_original();
    trace::graph::stop().unwrap();
    retire("graphed");
    assert_eq!(result, 3);
    let lines = trace::graph::render(Some(thread::current_id()), false);
    // The patched function's call is hooked and timed, with its replacement
    // (also traced) inside it.
    let expected = [
        " 0)               |  kernel::tests::livepatch::stacked_original() {",
        " 0)               |    kernel::tests::livepatch::stacked_second();",
        " 0)               |  } /* kernel::tests::livepatch::stacked_original */",
    ];
    // After the three header lines (tracer, columns, bars).
    assert_eq!(lines[3..], expected, "{lines:?}");
    assert_eq!(livepatch_depth(), 0);
    // Safety: own thread_info.
    assert_eq!(unsafe { (*current_thread_info()).graph_depth }, 0);
}

// ---- Backtraces cross livepatch frames -------------------------------------------

static BACKTRACE: [AtomicU64; 8] = [const { AtomicU64::new(0) }; 8];

#[livepatchable]
fn traced_for_backtrace() -> u64 {
    black_box(1)
}

/// Records the backtrace from its own frame (a real frame, so that the
/// replacement that calls it must have one too and save its return address).
#[inline(never)]
fn record_backtrace() {
    let mut index = 0;
    crate::backtrace::walk(crate::arch::registers::stack_pointer(), |address, _| {
        if index < BACKTRACE.len() {
            BACKTRACE[index].store(address, Ordering::SeqCst);
            index += 1;
        }
    });
}

#[inline(never)]
fn backtrace_replacement() -> u64 {
    record_backtrace();
    black_box(2)
}

#[inline(never)]
fn backtrace_caller() -> u64 {
    traced_for_backtrace() + black_box(0)
}

#[ktest]
fn backtrace_inside_a_replacement_shows_the_handler_and_the_real_caller() {
    enable(
        "backtrace",
        &[("kernel::tests::livepatch::traced_for_backtrace", None, address(backtrace_replacement as *const ()))],
    )
    .unwrap();
    assert_eq!(backtrace_caller(), 2);
    retire("backtrace");
    let table = crate::symbols::table().unwrap();
    let names: Vec<&str> = BACKTRACE
        .iter()
        .map(|slot| slot.load(Ordering::SeqCst))
        .take_while(|&address| address != 0)
        .map(|address| {
            if crate::arch::trampoline::pool().contains(&address) {
                "livepatch_trampoline"
            } else {
                table.lookup(address).map_or("?", |(symbol, _)| symbol.name)
            }
        })
        .collect();
    // The final patch's call passed a trampoline, or, direct calls off, the handler.
    let expected = if crate::livepatch::direct::enabled() { "livepatch_trampoline" } else { "livepatch_handler" };
    let handler =
        names.iter().position(|name| *name == expected).unwrap_or_else(|| panic!("no {expected} in {names:?}"));
    assert_eq!(names.get(handler + 1).copied(), Some("kernel::tests::livepatch::backtrace_caller"), "{names:?}");
}
