//! Tests of what a patch made from a diff relies on: klp relocations to the kernel's own symbols, the kernel's TOC base (`toc kernel`), `abi-checked`.
use super::settle;
use crate::livepatch::{self, Function, LivepatchError, Object, Patch};
use crate::memory;
use crate::module::{self, LoadError};
use alloc::string::String;
use alloc::vec;
use core::hint::black_box;
use core::sync::atomic::{AtomicU64, Ordering};
use macros::ktest;
use portable::module::ModuleError;

/// Read and counted up by the `kernel-sym-reader` fixture through
/// `.klp.sym.vmlinux.KLP_VMLINUX_MARK,0` (its ELF name is this name).
#[unsafe(no_mangle)]
pub static KLP_VMLINUX_MARK: AtomicU64 = AtomicU64::new(MARK);

/// `KLP_VMLINUX_MARK`'s value at the start of each test.
const MARK: u64 = 0x6b73_0000;

/// Called by the fixture through `.klp.sym.vmlinux.klp_vmlinux_helper,0`.
#[unsafe(no_mangle)]
#[inline(never)]
pub fn klp_vmlinux_helper(value: u64) -> u64 {
    black_box(value) * 3
}

/// Replaced by the fixture. `#[livepatchable]`: a hand-written patch may not
/// claim `abi-checked`, which needs the `build-id` of the one kernel whose
/// builds were compared (the test kernel embeds the fixture, so the fixture
/// cannot know the test kernel's id).
#[unsafe(no_mangle)]
#[macros::livepatchable]
pub fn klp_vmlinux_target(value: u64) -> u64 {
    black_box(value) + 1
}

/// Replaced by `abi_checked_waives_livepatchable_for_kernel_targets_only`'s
/// patch: an ftrace site, not `#[livepatchable]`.
#[unsafe(no_mangle)]
#[inline(never)]
pub fn klp_vmlinux_unmarked(value: u64) -> u64 {
    black_box(value) + 2
}

/// Calls `klp_vmlinux_target` through a pointer the compiler cannot see through.
fn target(value: u64) -> u64 {
    black_box(klp_vmlinux_target as fn(u64) -> u64)(black_box(value))
}

fn embedded(name: &str) -> &'static [u8] {
    module::embedded::find(name).expect("xtask builds the sample modules into the test kernel")
}

#[ktest]
fn a_kernel_toc_patch_reaches_kernel_statics_and_functions_through_klp_relocations() {
    KLP_VMLINUX_MARK.store(MARK, Ordering::SeqCst);
    assert_eq!(target(5), 6, "unpatched");
    assert_eq!(module::load(embedded("kernel-sym-reader")).expect("loads"), "kernel-sym-reader");
    let toc = module::toc_of("kernel-sym-reader");
    let first = target(5);
    let second = target(7);
    let listed = crate::shell::klp_list();
    settle::unload("kernel-sym-reader").expect("unloads");
    assert_eq!(toc, Some(crate::arch::registers::toc_pointer()), "its .TOC. is the kernel's TOC pointer");
    assert_eq!(first, MARK + 15, "the kernel's static plus the kernel's helper(5)");
    assert_eq!(second, MARK + 1 + 21, "the patch counted its first call in the kernel's own static");
    assert_eq!(KLP_VMLINUX_MARK.load(Ordering::SeqCst), MARK + 2);
    let details = listed.iter().position(|line| line.starts_with("kernel-sym-reader [")).map(|at| &listed[at + 1]);
    assert!(details.is_some_and(|line| !line.ends_with(" [abi-checked]")), "{listed:?}");
    assert_eq!(target(5), 6, "unpatched again");
}

#[ktest]
fn a_klp_reference_to_a_missing_kernel_symbol_refuses_the_patch_with_nothing_left() {
    // Warm up: first-use allocations that stay are not leaks.
    settle::load(embedded("kernel-sym-reader")).expect("loads");
    settle::unload("kernel-sym-reader").expect("unloads");
    let (before, _) = memory::usage();
    let refused = module::load(embedded("kernel-sym-missing"));
    let named = matches!(
        &refused,
        Err(LoadError::Format(ModuleError::UndefinedSymbol(name)))
            if name == ".klp.sym.vmlinux.KLP_VMLINUX_NO_SUCH_STATIC,0"
    );
    assert!(named, "{refused:?}");
    drop(refused);
    assert!(module::summaries().iter().all(|(name, ..)| name != "kernel-sym-missing"), "nothing listed");
    assert!(livepatch::list().iter().all(|patch| patch.name != "kernel-sym-missing"), "no patch added");
    assert_eq!(memory::usage().0, before, "heap usage back to where it started");
    assert_eq!(target(5), 6);
}

#[ktest]
fn abi_checked_waives_livepatchable_for_kernel_targets_only() {
    let patch = |abi_checked| Patch {
        name: String::from("abi-checked-test"),
        objects: vec![Object {
            module: None,
            functions: vec![Function {
                old_name: String::from("klp_vmlinux_unmarked"),
                old_position: None,
                new_address: klp_vmlinux_helper as *const () as u64,
                allow_inlined: false,
            }],
            ..Default::default()
        }],
        abi_checked,
        ..Default::default()
    };
    // Called once, through a pointer: the linker keeps it, with its site.
    assert_eq!(black_box(klp_vmlinux_unmarked as fn(u64) -> u64)(1), 3);
    let refused = livepatch::add(patch(false));
    assert!(
        matches!(&refused, Err(LivepatchError::NotLivepatchable(name)) if name == "klp_vmlinux_unmarked"),
        "{refused:?}"
    );
    livepatch::add(patch(true)).expect("an abi-checked patch may replace a function that is not #[livepatchable]");
    let listed =
        livepatch::list().into_iter().find(|patch| patch.name == "abi-checked-test").map(|patch| patch.details());
    livepatch::remove("abi-checked-test").expect("removes");
    assert!(listed.is_some_and(|details| details.ends_with(" [abi-checked]")));
    // Still refused: a function without an ftrace site.
    let mut notrace = patch(true);
    notrace.objects[0].functions[0].old_name = String::from("exception_dispatch");
    let refused = livepatch::add(notrace);
    assert!(matches!(&refused, Err(LivepatchError::NotTraceable(_))), "{refused:?}");
}
