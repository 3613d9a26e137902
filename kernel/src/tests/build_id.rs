//! Tests of the kernel's build id: it knows its own, and the loader refuses a patch made for another kernel image.
use crate::build_id;
use crate::memory;
use crate::module::{self, LoadError};
use macros::ktest;
use portable::build_id::BuildId;
use portable::module::{ModuleError, parse_description};

/// The build id that `patches/foreign-build` names (no kernel's).
const FOREIGN: &str = "0123456789abcdef0123456789abcdef01234567";

#[ktest]
fn the_kernel_knows_its_build_id_and_commit() {
    let info = build_id::info().expect("xtask fills the test kernel's build id");
    assert_ne!(info.id, BuildId([0; 20]), "a hash, not the reservation's zeros");
    assert!(!info.commit.is_empty());
    let text = build_id::describe();
    assert!(text.starts_with("build-id "), "{text}");
    assert_eq!(portable::build_id::find_in(&text), Some(info.id), "{text}");
    assert!(text.contains(&alloc::format!(" commit {}", info.commit)), "{text}");
}

#[ktest]
fn a_patch_for_another_kernel_is_refused_and_changes_nothing() {
    let running = build_id::id().expect("xtask fills the test kernel's build id");
    let before = crate::shell::greeting();
    let file = module::embedded::find("foreign-build").expect("xtask builds the fixtures into the test kernel");
    // Warm up the allocations that stay before measuring.
    let _ = module::load(file);
    let (used_before, _) = memory::usage();
    match module::load(file) {
        Err(error @ LoadError::Format(ModuleError::WrongBuild { .. })) => {
            let message = alloc::format!("{error}");
            let expected = alloc::format!(
                "module refused: patch 'foreign-build' was built for kernel {FOREIGN}; this kernel is {running}"
            );
            assert_eq!(message, expected);
        }
        other => panic!("expected a refusal for the build id, got {other:?}"),
    }
    assert_eq!(memory::usage().0, used_before, "nothing allocated stays");
    assert!(module::summaries().is_empty(), "nothing loaded");
    assert!(crate::livepatch::list().iter().all(|patch| patch.name == "builtin-greeting"), "no patch added");
    assert_eq!(crate::shell::greeting(), before);
}

/// The accept path of the loader's check, with the running kernel's own id
/// (a module naming it cannot be embedded in the image whose id it names: the
/// end-to-end test `end_to_end::a_patch_goes_only_into_the_kernel_it_names`
/// loads one over the patch channel).
#[ktest]
fn a_description_naming_this_kernel_passes_the_check() {
    let running = build_id::id().expect("xtask fills the test kernel's build id");
    let text = alloc::format!("klp-patch 1\nname fix\nbuild-id {running}\nreplace kernel::shell::greeting fix\n");
    let description = parse_description(text.as_bytes()).unwrap();
    assert_eq!(description.check_build_id(build_id::id()), Ok(()));
    let text = alloc::format!("klp-patch 1\nname fix\nbuild-id {FOREIGN}\nreplace kernel::shell::greeting fix\n");
    assert!(parse_description(text.as_bytes()).unwrap().check_build_id(build_id::id()).is_err());
}
