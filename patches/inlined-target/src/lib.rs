//! Live patch module `inlined-target`: replaces a test kernel function that callers also hold inlined copies of, with `allow_inlined`.

#![no_std]

klp_patch::klp_patch!(
    name = "inlined-target",
    replace = ["kernel::tests::inlined::inlined_target" => inlined_target_replacement (allow_inlined)]
);

/// Replaces `kernel::tests::inlined::inlined_target` (`fn(value: u64) -> u64`)
/// for the calls that reach its entry; the copies inlined into its callers
/// keep computing the original.
#[unsafe(no_mangle)]
pub fn inlined_target_replacement(value: u64) -> u64 {
    value.wrapping_add(1000)
}
