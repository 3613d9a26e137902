//! Device tree: flattening the Open Firmware tree and querying the flattened tree.
//!
//! QEMU pseries hands the kernel no flattened device tree (FDT). The kernel
//! walks the Open Firmware tree and writes a flattened copy with [`FdtWriter`]
//! into a static buffer, then answers its questions about the machine (memory,
//! CPUs, RTAS tokens, boot arguments) through [`DeviceTree`]. Neither needs an
//! allocator, and neither panics on malformed input: [`DeviceTree::parse`]
//! checks the whole blob before the `fdt` crate, which does panic on some
//! malformed input, reads it.
//!
//! The blob format is DTB version 17 (devicetree specification, chapter 5):
//! ```text
//! header (40 bytes) | memory reservation map | structure block | strings block
//! ```
//! All numbers are big-endian.

mod errors;
mod query;
mod validate;
mod writer;

#[cfg(test)]
mod tests;

pub use errors::{DeviceTreeError, FdtError};
pub use query::{CpuThread, DeviceTree, InterruptController};
pub use writer::FdtWriter;

/// First word of every blob.
const MAGIC: u32 = 0xd00d_feed;
/// The format version written and the oldest one read.
const VERSION: u32 = 17;
/// The oldest version a version-17 blob is compatible with.
const LAST_COMPATIBLE_VERSION: u32 = 16;
/// Size of the header: ten big-endian words.
const HEADER_SIZE: usize = 40;
/// Size of one memory reservation entry (address and size, 64 bits each).
const RESERVATION_ENTRY_SIZE: usize = 16;

/// Structure block token: a node starts; its NUL-terminated name follows.
const BEGIN_NODE: u32 = 1;
/// Structure block token: the current node ends.
const END_NODE: u32 = 2;
/// Structure block token: a property (value length, name offset, value) follows.
const PROPERTY: u32 = 3;
/// Structure block token: nothing (left by in-place editing).
const NOP: u32 = 4;
/// Structure block token: the structure block ends.
const END: u32 = 9;

/// Deepest node nesting, the root counting as depth 1. `fdt::Fdt::all_nodes`
/// keeps its ancestors in a 64-entry array whose first entry it never uses.
const MAXIMUM_DEPTH: usize = 63;
/// Longest node or property name accepted, without its NUL (real names are
/// under 64 bytes; the bound keeps name de-duplication cheap).
const MAXIMUM_NAME_LENGTH: usize = 255;

/// `length` rounded up to a whole number of 4-byte words.
fn padded(length: usize) -> usize {
    length.saturating_add(3) & !3
}
