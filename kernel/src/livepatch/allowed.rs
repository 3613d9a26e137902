//! Which functions a live patch may replace: those marked `#[livepatchable]`, listed in `.klp_livepatchable`.
//!
//! A replacement is written against the original's source signature, so the
//! callers of the original must pass arguments and use results exactly as
//! that signature says. The compiler guarantees this only for functions it
//! cannot see through: `#[livepatchable]` makes a function so (never inlined,
//! arguments and result through an optimisation barrier, address taken; see
//! `macros::livepatchable`) and records its address here. Any other kernel
//! function, even one with an ftrace site, may have had an argument dropped,
//! a result folded into its callers or its calls merged, so the livepatch
//! core refuses it by name (`LivepatchError::NotLivepatchable`).

/// The global entry of a `#[livepatchable]` function, one record per
/// function in the `.klp_livepatchable` section.
#[repr(transparent)]
pub struct Anchor(pub *const ());

// Safety: only an address, never dereferenced.
unsafe impl Sync for Anchor {}

unsafe extern "C" {
    static __klp_livepatchable_start: Anchor;
    static __klp_livepatchable_end: Anchor;
}

/// Every `#[livepatchable]` function's record.
pub fn anchors() -> &'static [Anchor] {
    // Safety: the linker script brackets `.klp_livepatchable`, which holds
    // only the Anchor records the macro emits.
    unsafe { crate::section::records(&raw const __klp_livepatchable_start, &raw const __klp_livepatchable_end) }
}

/// Whether the function whose global entry is `entry` is marked `#[livepatchable]`.
pub fn is_livepatchable(entry: u64) -> bool {
    anchors().iter().any(|anchor| anchor.0 as u64 == entry)
}
