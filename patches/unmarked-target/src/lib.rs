//! Live patch module `unmarked-target`: refused on purpose, it names a kernel function that has an ftrace site but is not marked `#[livepatchable]`.

#![no_std]

klp_patch::klp_patch!(name = "unmarked-target", replace = ["kernel::shell::uptime" => unmarked_target_replacement]);

/// A well-formed replacement with the original's signature (`fn(&str)`); the
/// kernel refuses the patch for its target.
#[unsafe(no_mangle)]
pub fn unmarked_target_replacement(_arguments: &str) {}
