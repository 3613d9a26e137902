//! Tests that `#[livepatchable]` keeps every call and the calling convention a replacement relies on.
//!
//! Each original below is as simple as the optimiser likes them: a constant
//! result, a pure computation, an unused argument, an argument returned
//! unchanged, a pointer argument only read. For each, the callers' machine
//! code is read (every source-level call is a branch to the original) and the
//! original is replaced (every call reaches the replacement, with the
//! arguments in the registers the source signature gives them).
use super::settle;
use crate::arch::text;
use crate::livepatch::{self, Function, Object, Patch, PlanError};
use alloc::string::String;
use alloc::vec;
use core::hint::black_box;
use core::sync::atomic::{AtomicU64, Ordering};
use macros::{ktest, livepatchable};
use portable::instruction;

/// How often a replacement in this file ran.
static REPLACEMENT_CALLS: AtomicU64 = AtomicU64::new(0);

fn address(function: *const ()) -> u64 {
    function as u64
}

/// The number of branches in `caller` that reach `callee` (its local or
/// global entry): `bl`, or `b` for a call in tail position.
fn calls_from(caller: u64, callee: u64) -> usize {
    let table = crate::symbols::table().expect("the kernel carries its symbol table");
    let (symbol, _) = table.lookup(caller).expect("the caller has a symbol");
    let entries = [callee, text::local_entry(callee)];
    (symbol.address..symbol.address + u64::from(symbol.size))
        .step_by(4)
        .filter(|&at| {
            instruction::branch_target(at, text::read(at)).is_some_and(|(target, _)| entries.contains(&target))
        })
        .count()
}

/// Replaces the function `old_name` with `new` for the duration of `body`, counting the replacement's calls from zero.
fn replaced<T>(old_name: &str, new: u64, body: impl FnOnce() -> T) -> T {
    let name = String::from("livepatchable-test");
    let functions =
        vec![Function { old_name: String::from(old_name), old_position: None, new_address: new, allow_inlined: false }];
    livepatch::add(Patch {
        name: name.clone(),
        objects: vec![Object { module: None, functions, ..Default::default() }],
        ..Default::default()
    })
    .expect("a livepatchable target");
    settle::enable(&name).expect("enables");
    REPLACEMENT_CALLS.store(0, Ordering::SeqCst);
    let result = body();
    settle::disable(&name).expect("disables");
    livepatch::remove(&name).expect("removes");
    result
}

// ---- Constant result: propagated into the caller, calls deleted -----------------

#[livepatchable]
fn probe() -> u64 {
    7
}

#[inline(never)]
fn probe_twice() -> u64 {
    probe() + probe()
}

#[inline(never)]
fn probe_replacement() -> u64 {
    REPLACEMENT_CALLS.fetch_add(1, Ordering::SeqCst);
    100
}

#[ktest]
fn constant_result_is_not_propagated_into_callers() {
    let calls = calls_from(address(probe_twice as *const ()), address(probe as *const ()));
    assert_eq!(calls, 2, "probe_twice calls probe twice in its machine code");
    assert_eq!(probe_twice(), 14);
    let patched = replaced("kernel::tests::livepatchable::probe", address(probe_replacement as *const ()), probe_twice);
    assert_eq!(patched, 200, "both calls see the replacement");
    assert_eq!(REPLACEMENT_CALLS.load(Ordering::SeqCst), 2);
    assert_eq!(probe_twice(), 14, "the original is back");
}

/// Every exit is a `return`, which must pass the result barrier too.
#[livepatchable]
#[allow(clippy::needless_return)]
fn early_return(value: u64) -> u64 {
    if value == 0 {
        return 9;
    }
    return 9;
}

#[inline(never)]
fn early_return_caller(value: u64) -> u64 {
    early_return(value) + 1
}

#[inline(never)]
fn early_return_replacement(value: u64) -> u64 {
    REPLACEMENT_CALLS.fetch_add(1, Ordering::SeqCst);
    value + 50
}

#[ktest]
fn constant_returned_by_return_statements_is_not_propagated_either() {
    let calls = calls_from(address(early_return_caller as *const ()), address(early_return as *const ()));
    assert_eq!(calls, 1, "early_return_caller calls early_return in its machine code");
    assert_eq!(early_return_caller(black_box(1)), 10);
    let patched =
        replaced("kernel::tests::livepatchable::early_return", address(early_return_replacement as *const ()), || {
            early_return_caller(black_box(1))
        });
    assert_eq!(patched, 52, "the caller uses the replacement's result");
    assert_eq!(REPLACEMENT_CALLS.load(Ordering::SeqCst), 1);
}

// ---- Pure function: identical calls merged, an unused result's call deleted -------

#[livepatchable]
fn pure_probe(value: u64) -> u64 {
    value.wrapping_mul(3)
}

#[inline(never)]
fn pure_caller(value: u64) -> u64 {
    let first = pure_probe(value);
    let _ = pure_probe(value + 1);
    let second = pure_probe(value);
    first + second
}

#[inline(never)]
fn pure_replacement(value: u64) -> u64 {
    REPLACEMENT_CALLS.fetch_add(1, Ordering::SeqCst);
    value + 1000
}

#[ktest]
fn calls_of_a_pure_function_are_neither_merged_nor_deleted() {
    let calls = calls_from(address(pure_caller as *const ()), address(pure_probe as *const ()));
    assert_eq!(calls, 3, "three calls in pure_caller's machine code, the unused one included");
    assert_eq!(pure_caller(black_box(5)), 30);
    let patched = replaced("kernel::tests::livepatchable::pure_probe", address(pure_replacement as *const ()), || {
        pure_caller(black_box(5))
    });
    assert_eq!(patched, 2010);
    assert_eq!(REPLACEMENT_CALLS.load(Ordering::SeqCst), 3, "every call ran, the unused one too");
}

// ---- Arguments: an unused one, one returned unchanged, one passed by reference ----

#[livepatchable]
fn unused_argument(used: u64, unused: u64) -> u64 {
    let _ = unused;
    used
}

#[inline(never)]
fn unused_argument_caller() -> u64 {
    unused_argument(1, 42)
}

#[inline(never)]
fn unused_argument_replacement(used: u64, unused: u64) -> u64 {
    REPLACEMENT_CALLS.fetch_add(1, Ordering::SeqCst);
    used * 1000 + unused
}

#[livepatchable]
fn echo(value: u64) -> u64 {
    value
}

#[inline(never)]
fn echo_caller(value: u64) -> u64 {
    echo(value) * 2
}

#[inline(never)]
fn echo_replacement(value: u64) -> u64 {
    REPLACEMENT_CALLS.fetch_add(1, Ordering::SeqCst);
    value + 5
}

/// Two words: bigger than one register, so a `&Pair` is a pointer in r3.
pub struct Pair {
    first: u64,
    second: u64,
}

#[livepatchable]
fn by_reference(pair: &Pair) -> u64 {
    pair.first + pair.second
}

#[inline(never)]
fn by_reference_caller(first: u64) -> u64 {
    let pair = Pair { first, second: 20 };
    by_reference(&pair)
}

#[inline(never)]
fn by_reference_replacement(pair: &Pair) -> u64 {
    REPLACEMENT_CALLS.fetch_add(1, Ordering::SeqCst);
    pair.first * 100 + pair.second
}

/// Does nothing with the counter: the compiler could mark the pointer
/// "not written", and callers would then keep the counter in a register.
#[livepatchable]
fn maybe_bump(counter: &mut u64) {
    let _ = counter;
}

#[inline(never)]
fn maybe_bump_caller(start: u64) -> u64 {
    let mut counter = start;
    maybe_bump(&mut counter);
    counter
}

#[inline(never)]
fn maybe_bump_replacement(counter: &mut u64) {
    REPLACEMENT_CALLS.fetch_add(1, Ordering::SeqCst);
    *counter += 10;
}

#[ktest]
fn unused_argument_is_still_passed() {
    let unused = address(unused_argument as *const ());
    assert_eq!(calls_from(address(unused_argument_caller as *const ()), unused), 1);
    assert_eq!(unused_argument_caller(), 1);
    let patched = replaced(
        "kernel::tests::livepatchable::unused_argument",
        address(unused_argument_replacement as *const ()),
        unused_argument_caller,
    );
    assert_eq!(patched, 1042, "the unused argument is still passed, in r4");
    assert_eq!(REPLACEMENT_CALLS.load(Ordering::SeqCst), 1);
}

#[ktest]
fn argument_returned_unchanged_is_not_assumed_to_be_the_result() {
    assert_eq!(calls_from(address(echo_caller as *const ()), address(echo as *const ())), 1);
    assert_eq!(echo_caller(black_box(4)), 8);
    let patched = replaced("kernel::tests::livepatchable::echo", address(echo_replacement as *const ()), || {
        echo_caller(black_box(4))
    });
    assert_eq!(patched, 18, "the caller uses the result, not its own argument");
    assert_eq!(REPLACEMENT_CALLS.load(Ordering::SeqCst), 1);
}

#[ktest]
fn pointer_arguments_stay_pointers_that_the_replacement_may_write_through() {
    assert_eq!(calls_from(address(by_reference_caller as *const ()), address(by_reference as *const ())), 1);
    assert_eq!(by_reference_caller(black_box(3)), 23);
    let patched =
        replaced("kernel::tests::livepatchable::by_reference", address(by_reference_replacement as *const ()), || {
            by_reference_caller(black_box(3))
        });
    assert_eq!(patched, 320, "the pair is passed by reference");
    assert_eq!(REPLACEMENT_CALLS.load(Ordering::SeqCst), 1);

    assert_eq!(calls_from(address(maybe_bump_caller as *const ()), address(maybe_bump as *const ())), 1);
    assert_eq!(maybe_bump_caller(black_box(5)), 5);
    let patched =
        replaced("kernel::tests::livepatchable::maybe_bump", address(maybe_bump_replacement as *const ()), || {
            maybe_bump_caller(black_box(5))
        });
    assert_eq!(patched, 15, "the caller reads the counter back after the call");
    assert_eq!(REPLACEMENT_CALLS.load(Ordering::SeqCst), 1);
}

// ---- Inlining ----------------------------------------------------------------------

#[livepatchable]
fn small(value: u64) -> u64 {
    value + 1
}

#[inline(never)]
fn small_caller(value: u64) -> u64 {
    small(value) ^ 0x10
}

#[inline(never)]
fn small_replacement(value: u64) -> u64 {
    REPLACEMENT_CALLS.fetch_add(1, Ordering::SeqCst);
    value + 2
}

#[ktest]
fn livepatchable_function_is_never_inlined() {
    assert_eq!(
        calls_from(address(small_caller as *const ()), address(small as *const ())),
        1,
        "a call, not a copy of the body"
    );
    assert_eq!(small_caller(black_box(1)), 2 ^ 0x10);
    let patched = replaced("kernel::tests::livepatchable::small", address(small_replacement as *const ()), || {
        small_caller(black_box(1))
    });
    assert_eq!(patched, 3 ^ 0x10);
    assert_eq!(REPLACEMENT_CALLS.load(Ordering::SeqCst), 1);
}

// ---- Only #[livepatchable] functions may be replaced --------------------------------

/// Traceable (it has an ftrace site) but not marked: its callers may rely on
/// what the compiler saw of it, so no patch may replace it.
#[inline(never)]
fn unmarked(value: u64) -> u64 {
    black_box(value + 1)
}

#[inline(never)]
fn unmarked_replacement(value: u64) -> u64 {
    REPLACEMENT_CALLS.fetch_add(1, Ordering::SeqCst);
    value + 2
}

/// (name, enabled) of every patch.
fn patch_states() -> alloc::vec::Vec<(String, bool)> {
    livepatch::list().into_iter().map(|patch| (patch.name, patch.enabled)).collect()
}

fn site_words() -> alloc::vec::Vec<u32> {
    crate::trace::site_summaries().iter().map(|site| text::read(site.address)).collect()
}

#[ktest]
fn function_not_marked_livepatchable_is_refused_by_name_and_nothing_changes() {
    let name = "kernel::tests::livepatchable::unmarked";
    assert!(crate::trace::site_table().named_entry(name, None).is_ok(), "unmarked has an ftrace site");
    let (patches, sites) = (patch_states(), site_words());
    let marked = address(small as *const ());
    assert!(livepatch::is_livepatchable(marked));
    assert!(!livepatch::is_livepatchable(address(unmarked as *const ())));
    // A marked function and the unmarked one in one patch: the whole patch is refused.
    let functions = vec![
        Function {
            old_name: String::from("kernel::tests::livepatchable::small"),
            old_position: None,
            new_address: address(small_replacement as *const ()),
            allow_inlined: false,
        },
        Function {
            old_name: String::from(name),
            old_position: None,
            new_address: address(unmarked_replacement as *const ()),
            allow_inlined: false,
        },
    ];
    let error = livepatch::add(Patch {
        name: String::from("unmarked"),
        objects: vec![Object { module: None, functions, ..Default::default() }],
        ..Default::default()
    })
    .expect_err("a target not marked #[livepatchable] is refused");
    let message = alloc::format!("{error}");
    assert!(matches!(&error, livepatch::LivepatchError::NotLivepatchable(refused) if refused == name), "{message}");
    assert!(message.contains("'kernel::tests::livepatchable::unmarked' is not marked #[livepatchable]"), "{message}");
    assert_eq!(patch_states(), patches, "no patch was added");
    assert!(matches!(livepatch::enable("unmarked"), Err(livepatch::LivepatchError::Plan(PlanError::UnknownPatch(_)))));
    assert_eq!(site_words(), sites, "no site changed");
    REPLACEMENT_CALLS.store(0, Ordering::SeqCst);
    assert_eq!(unmarked(black_box(1)), 2);
    assert_eq!(small_caller(black_box(1)), 2 ^ 0x10);
    assert_eq!(REPLACEMENT_CALLS.load(Ordering::SeqCst), 0, "no replacement ran");
}

// ---- A body that never returns: the function inferred `noreturn` ------------------

/// A placeholder to be replaced later: its body never returns. The callers
/// must still be compiled to continue after the call, because a replacement
/// returns.
#[livepatchable]
fn never_yet(value: u64) -> u64 {
    let _ = value;
    loop {
        core::hint::spin_loop();
    }
}

#[inline(never)]
fn never_yet_caller(value: u64) -> u64 {
    never_yet(value) * 3 + 1
}

/// The other placeholder: a body that panics.
#[livepatchable]
fn not_written(value: u64) -> u64 {
    panic!("not_written({value}) is to be replaced by a live patch")
}

#[inline(never)]
fn not_written_caller(value: u64) -> u64 {
    not_written(value) * 3 + 1
}

#[inline(never)]
fn never_yet_replacement(value: u64) -> u64 {
    REPLACEMENT_CALLS.fetch_add(1, Ordering::SeqCst);
    value + 10
}

/// Whether `caller` has a `blr` after its first branch to `callee`: the
/// caller returns once the call does (a caller compiled against a `noreturn`
/// callee ends at the call, with a trap or the next function after it).
fn returns_after_call(caller: u64, callee: u64) -> bool {
    let table = crate::symbols::table().expect("the kernel carries its symbol table");
    let (symbol, _) = table.lookup(caller).expect("the caller has a symbol");
    let entries = [callee, text::local_entry(callee)];
    let mut words = (symbol.address..symbol.address + u64::from(symbol.size)).step_by(4).map(|at| (at, text::read(at)));
    let called = words
        .by_ref()
        .any(|(at, word)| instruction::branch_target(at, word).is_some_and(|(target, _)| entries.contains(&target)));
    called && words.any(|(_, word)| word == instruction::BLR)
}

#[ktest]
fn body_that_never_returns_does_not_make_callers_stop_after_the_call() {
    let (caller, callee) = (address(never_yet_caller as *const ()), address(never_yet as *const ()));
    assert_eq!(calls_from(caller, callee), 1, "never_yet_caller calls never_yet in its machine code");
    assert!(
        returns_after_call(caller, callee),
        "never_yet_caller continues after its call to never_yet (a blr follows the bl)"
    );
    // Called through an opaque pointer, so this test's own code after the call stays whatever the caller became.
    let call = black_box(never_yet_caller as fn(u64) -> u64);
    let patched =
        replaced("kernel::tests::livepatchable::never_yet", address(never_yet_replacement as *const ()), || {
            call(black_box(4))
        });
    assert_eq!(patched, 43, "the caller goes on with the replacement's result");
    assert_eq!(REPLACEMENT_CALLS.load(Ordering::SeqCst), 1);

    let (caller, callee) = (address(not_written_caller as *const ()), address(not_written as *const ()));
    assert_eq!(calls_from(caller, callee), 1, "not_written_caller calls not_written in its machine code");
    assert!(
        returns_after_call(caller, callee),
        "not_written_caller continues after its call to not_written (a blr follows the bl)"
    );
    let call = black_box(not_written_caller as fn(u64) -> u64);
    let patched =
        replaced("kernel::tests::livepatchable::not_written", address(never_yet_replacement as *const ()), || {
            call(black_box(5))
        });
    assert_eq!(patched, 46, "the caller goes on with the replacement's result");
    assert_eq!(REPLACEMENT_CALLS.load(Ordering::SeqCst), 1);
}

// ---- No argument, no result: only the barriers' memory effects keep the calls ------

/// Nothing goes in or out, so only `black_box(())` (an empty `asm!` that may
/// read and write memory even for a zero-sized value) keeps LLVM from
/// inferring the function has no effect and deleting its calls.
#[livepatchable]
fn nothing() {}

#[inline(never)]
fn nothing_twice() {
    nothing();
    nothing();
}

#[inline(never)]
fn nothing_replacement() {
    REPLACEMENT_CALLS.fetch_add(1, Ordering::SeqCst);
}

#[ktest]
fn calls_of_a_function_without_arguments_or_result_are_kept() {
    assert_eq!(
        calls_from(address(nothing_twice as *const ()), address(nothing as *const ())),
        2,
        "nothing_twice calls nothing twice"
    );
    replaced("kernel::tests::livepatchable::nothing", address(nothing_replacement as *const ()), nothing_twice);
    assert_eq!(REPLACEMENT_CALLS.load(Ordering::SeqCst), 2, "both calls reach the replacement");
}
