//! Live patch module `missing-target`: refused on purpose, it names a kernel function that does not exist.

#![no_std]

klp_patch::klp_patch!(name = "missing-target", replace = ["kernel::shell::no_such_function" => missing_target_replacement]);

/// A well-formed replacement; the kernel refuses the patch for its target.
#[unsafe(no_mangle)]
pub fn missing_target_replacement() -> &'static str {
    "this replacement must never run"
}
