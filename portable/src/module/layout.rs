//! Where each loaded section, the stubs and the TOC go in the module's memory.
//!
//! ```text
//! base ─► executable sections (.text.*)          each at its alignment, in section order
//!         read-only sections (.rodata.*, .eh_frame, .klp.patch)
//!         writable sections (.data.*, .toc)
//!         NOBITS sections (.bss.*), zero-filled
//!         stubs, 16-byte aligned, 32 bytes each   one per distinct external call target
//! base + memory_size
//! ```
//!
//! The TOC pointer is `.toc`'s address + 0x8000 (or, without `.toc`, the first
//! writable section's, or the module start's), so that signed 16-bit offsets
//! from r2 reach the first 32 KiB of TOC entries and the 32 KiB below them.

use alloc::vec;
use alloc::vec::Vec;

use object::elf;

use super::elf::Section;
use super::stub::{STUB_ALIGNMENT, STUB_SIZE};
use super::{MAX_MEMORY_SIZE, ModuleError};

/// The offset of the TOC pointer from the start of the TOC area (ELFv2).
pub const TOC_BIAS: u64 = 0x8000;

/// The smallest alignment of module memory.
pub const MIN_ALIGNMENT: u64 = 16;

/// The computed placement, as offsets from the module's base address.
#[derive(Debug, Clone)]
pub(super) struct Layout {
    /// For each section (by index), its offset if it is loaded.
    pub offsets: Vec<Option<u64>>,
    /// Offset of the first stub.
    pub stubs: u64,
    /// Bytes of module memory.
    pub size: u64,
    /// Alignment of module memory: at least [`MIN_ALIGNMENT`], the largest section alignment.
    pub alignment: u64,
    /// Offset of the TOC pointer value (`.TOC.`).
    pub toc: u64,
}

/// The placement group of a loaded section: executable, read-only, writable, NOBITS.
fn group(section: &Section<'_>) -> u8 {
    if section.kind == elf::SHT_NOBITS {
        3
    } else if section.flags & u64::from(elf::SHF_EXECINSTR) != 0 {
        0
    } else if section.flags & u64::from(elf::SHF_WRITE) == 0 {
        1
    } else {
        2
    }
}

/// Rounds `value` up to `alignment` (a power of two), failing past the memory limit.
fn align_up(value: u64, alignment: u64) -> Result<u64, ModuleError> {
    let aligned = value.checked_add(alignment - 1).map(|value| value & !(alignment - 1));
    match aligned {
        Some(aligned) if aligned <= MAX_MEMORY_SIZE => Ok(aligned),
        _ => Err(ModuleError::TooLarge { what: "module memory", value: u64::MAX, limit: MAX_MEMORY_SIZE }),
    }
}

/// Adds `size` bytes at `offset`, failing past the memory limit.
fn grow(offset: u64, size: u64) -> Result<u64, ModuleError> {
    match offset.checked_add(size) {
        Some(end) if end <= MAX_MEMORY_SIZE => Ok(end),
        end => {
            Err(ModuleError::TooLarge { what: "module memory", value: end.unwrap_or(u64::MAX), limit: MAX_MEMORY_SIZE })
        }
    }
}

/// Places the loaded sections and `stub_count` stubs (see the module documentation).
pub(super) fn layout(sections: &[Section<'_>], stub_count: usize) -> Result<Layout, ModuleError> {
    let mut offsets = vec![None; sections.len()];
    let mut cursor = 0;
    let mut alignment = MIN_ALIGNMENT;
    for rank in 0..4 {
        for section in sections.iter().filter(|section| section.is_loaded() && group(section) == rank) {
            cursor = align_up(cursor, section.alignment)?;
            if let Some(slot) = offsets.get_mut(section.index) {
                *slot = Some(cursor);
            }
            cursor = grow(cursor, section.size)?;
            alignment = alignment.max(section.alignment);
        }
    }
    let stubs = align_up(cursor, STUB_ALIGNMENT as u64)?;
    let size = grow(stubs, (stub_count as u64).saturating_mul(STUB_SIZE as u64))?;

    let offset_of = |section: &Section<'_>| offsets.get(section.index).copied().flatten();
    let toc_area = sections
        .iter()
        .find(|section| section.is_loaded() && section.name == ".toc")
        .and_then(offset_of)
        .or_else(|| {
            sections
                .iter()
                .filter(|section| section.is_loaded() && section.flags & u64::from(elf::SHF_WRITE) != 0)
                .filter_map(offset_of)
                .min()
        })
        .unwrap_or(0);
    Ok(Layout { offsets, stubs, size, alignment, toc: toc_area + TOC_BIAS })
}
