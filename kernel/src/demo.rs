//! The functions the from-diff corpus (tests/from-diff/) patches, reachable from the shell's `demo` command.
//!
//! Each is one case of `cargo xtask patch from-diff`: a diff in
//! tests/from-diff/ changes it, and the shell's `demo` command calls it with
//! numbers read from the command line (so no call is constant-folded) and
//! prints the result. They are plain `#[inline(never)]` functions, not
//! `#[livepatchable]`: a generated patch is abi-checked (docs/modules.md,
//! "From a diff"), so its targets need only an ftrace site, which every
//! function of the kernel crate has unless it says `#[notrace]`.
//!
//! None of them can panic (no indexing, no division by a variable, wrapping
//! arithmetic): a panic's location records a line number, and a diff that
//! adds lines above a function would then change that function too.

use core::sync::atomic::{AtomicU64, Ordering};

/// Triples `value`; always inlined, so only its callers hold its code (the
/// inlined-callee case changes it, and the generator must patch `scaled`).
#[inline(always)]
fn scale(value: u64) -> u64 {
    value.wrapping_mul(3)
}

/// `scale(value) + 1`: the holder of `scale`'s only copy.
#[inline(never)]
pub fn scaled(value: u64) -> u64 {
    scale(value).wrapping_add(1)
}

/// A fresh number on each call, counting from 0: the value before the increment.
/// The local-static case patches it and the count must go on from the
/// running kernel's `NEXT`, not from a copy of it in the patch.
#[inline(never)]
pub fn ticket() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The running total of the amounts tallied so far, this one included. This
/// version keeps no total and returns `amount` alone; the new-static case
/// keeps the total in a static that the patch adds. (`black_box`: a function
/// that returns its argument would otherwise be seen through, and called by no one.)
#[inline(never)]
pub fn tally(amount: u64) -> u64 {
    core::hint::black_box(amount)
}

/// The step after `value` in a Collatz (hailstone) sequence: halve an even
/// number, `3n + 1` for an odd one. The bug: an odd number is halved too; the
/// new-function case fixes it with a helper function the patch adds.
#[inline(never)]
pub fn hailstone(value: u64) -> u64 {
    value / 2
}

/// The sum of `items`. The bug: the loop starts at the second item; the
/// generic-instance case fixes the instance `sum::<u32>` the shell calls.
#[inline(never)]
pub fn sum<T: Copy + Into<u64>>(items: &[T]) -> u64 {
    items.iter().skip(1).fold(0u64, |total, &item| total.wrapping_add(item.into()))
}

/// The sum of its ten arguments (the last two arrive on the caller's stack).
/// The bug: the tenth is subtracted; the ten-arguments case fixes it.
#[allow(clippy::too_many_arguments)]
#[inline(never)]
pub fn ten(a: u64, b: u64, c: u64, d: u64, e: u64, f: u64, g: u64, h: u64, i: u64, j: u64) -> u64 {
    let nine = a.wrapping_add(b).wrapping_add(c).wrapping_add(d).wrapping_add(e);
    nine.wrapping_add(f).wrapping_add(g).wrapping_add(h).wrapping_add(i).wrapping_sub(j)
}

/// Encodes `value` in the format `decode` reads: `2 * value + 1`. The
/// contract case changes the format in both, and the patch must replace them
/// together: a thread never encodes with one format and decodes with the other.
#[inline(never)]
pub fn encode(value: u64) -> u64 {
    value.wrapping_mul(2).wrapping_add(1)
}

/// Decodes what `encode` wrote.
#[inline(never)]
pub fn decode(code: u64) -> u64 {
    code.wrapping_sub(1) / 2
}

/// The most `capped` returns. The static-initialiser case changes its
/// initial value, which a patch cannot do (the running kernel's LIMIT was
/// initialised at boot and may have changed since): refused. An atomic, as a
/// kernel's tunable would be: a plain `static LIMIT: u64` is a constant to the
/// compiler, with no symbol of its own in the object.
static LIMIT: AtomicU64 = AtomicU64::new(100);

/// `value`, or `LIMIT` when it is larger. (`black_box`: the compiler would
/// otherwise see that nothing stores to `LIMIT` and fold its value in here.)
#[inline(never)]
pub fn capped(value: u64) -> u64 {
    value.min(core::hint::black_box(&LIMIT).load(Ordering::Relaxed))
}

/// A rectangle, passed by reference to `area`. The struct-layout case adds
/// a field, which a patch cannot do (the running kernel's rectangles keep the
/// old layout): refused.
pub struct Rectangle {
    pub width: u64,
    pub height: u64,
}

impl Rectangle {
    pub fn new(width: u64, height: u64) -> Rectangle {
        Rectangle { width, height }
    }
}

/// The area of `rectangle`.
#[inline(never)]
pub fn area(rectangle: &Rectangle) -> u64 {
    rectangle.width.wrapping_mul(rectangle.height)
}

/// `value + 1`, with no ftrace site: the notrace case changes it, and a
/// function without a site cannot be replaced: refused.
#[macros::notrace]
#[inline(never)]
pub fn untraced(value: u64) -> u64 {
    value.wrapping_add(1)
}

/// Something with corners, asked through a trait object: the trait-method
/// case changes `Triangle`'s answer, a function named
/// `<kernel::demo::Triangle as kernel::demo::Corners>::corners` (spaces: a
/// patch names it by its ELF name).
pub trait Corners {
    fn corners(&self, scale: u64) -> u64;
}

/// The shape the trait-method case patches.
pub struct Triangle;

impl Corners for Triangle {
    #[inline(never)]
    fn corners(&self, scale: u64) -> u64 {
        scale.wrapping_mul(3)
    }
}

/// `shape.corners(scale)`, through the trait object's vtable (its method's
/// address is taken, so the compiler keeps its calling convention).
#[inline(never)]
pub fn corners(shape: &dyn Corners, scale: u64) -> u64 {
    core::hint::black_box(shape).corners(scale)
}
