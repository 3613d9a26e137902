//! Tests that a function with inlined copies is refused by name, allowed per function, and marked in `klp list`.
//!
//! `#[livepatchable]` never lets a function be inlined, so the targets here
//! are made by hand: `inlined_target` is `#[inline(always)]` (its two
//! callers below hold copies of its body) and is recorded in
//! `.klp_livepatchable` by the same kind of anchor the attribute emits (whose
//! address taken also keeps an out-of-line copy, with an ftrace site). The
//! notes xtask wrote from the DWARF (`livepatch::notes`) must know where the
//! copies are, and the livepatch core must act on them.
use super::settle;
use crate::livepatch::{self, Anchor, Function, LivepatchError, Object, Patch};
use crate::{module, shell};
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::hint::black_box;
use macros::{ktest, livepatchable};

/// The target: inlined into both holders, and out of line for calls through its address.
#[inline(always)]
fn inlined_target(value: u64) -> u64 {
    value.wrapping_mul(7).wrapping_add(1)
}

/// What `#[livepatchable]` would record, without its `#[inline(never)]`.
#[used]
#[unsafe(link_section = ".klp_livepatchable")]
static INLINED_TARGET_ANCHOR: Anchor = Anchor(inlined_target as *const ());

/// Holds a copy of `inlined_target`; not `#[livepatchable]`, so not patchable instead.
#[inline(never)]
fn plain_holder(value: u64) -> u64 {
    inlined_target(black_box(value)) + 1
}

/// Holds a copy of `inlined_target`, and can be replaced itself. (With a
/// `* 2` here, LLVM folded the copy's multiply and add into the caller's
/// into one `mulli`, dropping their inlined location: the DWARF then shows no
/// copy, see docs/livepatch.md.)
#[livepatchable]
fn livepatchable_holder(value: u64) -> u64 {
    inlined_target(value) ^ black_box(0x100)
}

/// Inlined into its one caller and never out of line: no function of its own.
#[inline(always)]
fn everywhere_inlined(value: u64) -> u64 {
    value ^ 0x5a5a
}

#[inline(never)]
fn everywhere_holder(value: u64) -> u64 {
    everywhere_inlined(black_box(value)) + 3
}

/// A call that reaches `inlined_target`'s own entry (and site).
fn out_of_line(value: u64) -> u64 {
    black_box(inlined_target as fn(u64) -> u64)(value)
}

fn replacement(value: u64) -> u64 {
    value + 1000
}

const TARGET: &str = "kernel::tests::inlined::inlined_target";
const PLAIN: &str = "kernel::tests::inlined::plain_holder";
const PATCHABLE: &str = "kernel::tests::inlined::livepatchable_holder";

fn patch(name: &str, old_name: &str, allow_inlined: bool) -> Patch {
    let functions = vec![Function {
        old_name: String::from(old_name),
        old_position: None,
        new_address: replacement as *const () as u64,
        allow_inlined,
    }];
    Patch {
        name: String::from(name),
        objects: vec![Object { module: None, functions, ..Default::default() }],
        ..Default::default()
    }
}

fn patch_names() -> Vec<String> {
    livepatch::list().into_iter().map(|patch| patch.name).collect()
}

#[ktest]
fn the_notes_know_where_the_copies_are() {
    let entry = inlined_target as *const () as u64;
    let holders: Vec<(String, bool)> =
        livepatch::notes::inlined_into(entry).into_iter().map(|holder| (holder.name, holder.patchable)).collect();
    let mut expected = vec![(String::from(PLAIN), false), (String::from(PATCHABLE), true)];
    expected.sort_by_key(|(name, _)| crate::trace::site_table().named_entry(name, None).map(|site| site.function).ok());
    assert_eq!(holders, expected, "both holders, by address, and only the #[livepatchable] one is patchable");
    assert!(livepatch::notes::inlined_into(livepatchable_holder as *const () as u64).is_empty());
    assert!(!livepatch::notes::is_patchable(entry), "inlined somewhere");
    assert!(livepatch::notes::is_patchable(livepatchable_holder as *const () as u64));
    assert!(!livepatch::notes::is_patchable(plain_holder as *const () as u64), "not #[livepatchable]");
}

#[ktest]
fn a_function_with_inlined_copies_is_refused_naming_them_and_the_patchable_ones() {
    let before = patch_names();
    let error = livepatch::add(patch("inlined", TARGET, false)).expect_err("inlined copies refuse the target");
    let message = alloc::format!("{error}");
    assert!(matches!(&error, LivepatchError::Inlined { name, holders } if name == TARGET && holders.len() == 2));
    assert!(message.starts_with("'kernel::tests::inlined::inlined_target' has inlined copies in "), "{message}");
    assert!(message.contains(PLAIN) && message.contains(PATCHABLE), "{message}");
    assert!(message.contains("(patchable instead: kernel::tests::inlined::livepatchable_holder)"), "{message}");
    assert!(message.contains("allow_inlined"), "{message}");
    assert_eq!(patch_names(), before, "no patch was added");
    assert_eq!(out_of_line(black_box(2)), 15, "the original runs");
    // The holder that is patchable instead is accepted.
    livepatch::add(patch("holder", PATCHABLE, false)).expect("a holder that is #[livepatchable] and not inlined");
    settle::enable("holder").expect("enables");
    assert_eq!(livepatchable_holder(black_box(2)), 1002);
    settle::disable("holder").expect("disables");
    livepatch::remove("holder").expect("removes");
}

#[ktest]
fn allow_inlined_replaces_the_function_and_klp_list_says_where_the_copies_run_the_original() {
    livepatch::add(patch("inlined", TARGET, true)).expect("allowed per function");
    settle::enable("inlined").expect("enables");
    let (through_the_entry, in_a_copy) = (out_of_line(black_box(2)), plain_holder(black_box(2)));
    let lines = shell::klp_list();
    settle::disable("inlined").expect("disables");
    livepatch::remove("inlined").expect("removes");
    assert_eq!(through_the_entry, 1002, "a call through the entry reaches the replacement");
    assert_eq!(in_a_copy, 16, "the inlined copy runs the original: what the flag accepts");
    let line = lines.iter().find(|line| line.contains(TARGET)).expect("klp list shows the function");
    assert!(line.contains("kernel::tests::inlined::replacement+0x0/"), "{line}");
    assert!(line.contains("[allow_inlined: the copies inlined into "), "{line}");
    assert!(line.contains(PLAIN) && line.contains(PATCHABLE) && line.ends_with(" run the original]"), "{line}");
}

#[ktest]
fn a_function_inlined_everywhere_is_refused_as_having_no_function_of_its_own() {
    assert_eq!(everywhere_holder(black_box(0)), 0x5a5a + 3);
    let name = "kernel::tests::inlined::everywhere_inlined";
    assert!(crate::symbols::table().is_some_and(|table| table.find(name).next().is_none()), "no out-of-line copy");
    let error = livepatch::add(patch("everywhere", name, true)).expect_err("nothing to replace, flag or not");
    let message = alloc::format!("{error}");
    assert!(matches!(&error, LivepatchError::InlinedEverywhere { .. }), "{message}");
    assert!(
        message.contains("has no function of its own to replace: the compiler inlined it into kernel::tests::inlined::everywhere_holder"),
        "{message}"
    );
    assert!(message.ends_with("(none of them is patchable)"), "{message}");
}

#[ktest]
fn klp_patchable_lists_the_safe_targets_with_signatures_and_says_why_not_the_others() {
    let lines = shell::klp_patchable("kernel::tests::inlined::*");
    let text = lines.join("\n");
    assert!(
        lines.iter().any(|line| line == "  fn kernel::tests::inlined::livepatchable_holder(value: u64) -> u64"),
        "{text}"
    );
    assert!(
        lines
            .iter()
            .any(|line| line
                .starts_with("  not kernel::tests::inlined::inlined_target: #[livepatchable] but inlined into ")),
        "{text}"
    );
    assert!(!lines.iter().any(|line| line.contains("fn kernel::tests::inlined::plain_holder")), "{text}");
    let summary = lines.last().expect("a summary line");
    assert!(
        summary.starts_with(
            "1 functions matching 'kernel::tests::inlined::*' can be replaced safely; 1 are inlined somewhere; "
        ),
        "{text}"
    );
    let everything = shell::klp_patchable("*").join("\n");
    assert!(everything.contains("  fn kernel::shell::greeting() -> &str"), "{everything}");
    assert!(
        everything.contains(
            "  fn klp_demo_ten(a: u64, b: u64, c: u64, d: u64, e: u64, f: u64, g: u64, h: u64, i: u64, j: u64) -> u64"
        ),
        "{everything}"
    );
}

#[ktest]
fn a_module_that_allows_inlined_copies_loads_and_klp_list_names_its_function() {
    let file = module::embedded::find("inlined-target").expect("xtask builds the sample modules into the test kernel");
    settle::load(file).expect("the module's replace line says allow_inlined");
    let result = out_of_line(black_box(5));
    let lines = shell::klp_list();
    settle::unload("inlined-target").expect("unloads");
    assert_eq!(result, 1005, "the module's replacement ran");
    let line = lines.iter().find(|line| line.contains(TARGET)).expect("klp list shows the function");
    assert!(line.contains(" inlined_target_replacement+0x0 [inlined-target] (active)"), "{line}");
    assert!(line.contains("[allow_inlined: the copies inlined into "), "{line}");
}
