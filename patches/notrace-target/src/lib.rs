//! Live patch module `notrace-target`: refused on purpose, it names a kernel function marked notrace (it has no ftrace site).

#![no_std]

klp_patch::klp_patch!(name = "notrace-target", replace = ["exception_dispatch" => notrace_target_replacement]);

/// A well-formed replacement; the kernel refuses the patch for its target.
#[unsafe(no_mangle)]
pub fn notrace_target_replacement() -> &'static str {
    "this replacement must never run"
}
