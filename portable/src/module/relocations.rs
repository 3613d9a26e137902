//! The relocation sections, read in place, and the checks on each relocation that need no addresses.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use object::elf::{self, Rela64};
use object::{LittleEndian, pod};

use super::elf::{ENDIAN, Section};
use super::klp_symbol::{KERNEL_KLP_PREFIX, KLP_SYMBOL_PREFIX};
use super::relocation::{R_PPC64_NONE, R_PPC64_REL24, width};
use super::stub::CALL_NOP;
use super::symbols::{Definition, Symbol, SymbolTable, TOC_SYMBOL};
use super::{MAX_RELOCATIONS, ModuleError};

/// Size of an ELF64 relocation with addend.
const RELA_SIZE: u64 = 24;

/// One SHT_RELA section that patches a loaded section.
pub(super) struct RelocationSection<'a> {
    /// Index of the SHT_RELA section.
    pub section: usize,
    /// Index of the section it patches.
    pub target: usize,
    /// Its entries, in file order.
    pub entries: &'a [Rela64<LittleEndian>],
}

/// What an R_PPC64_REL24 branches to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Branch {
    /// Not a branch relocation.
    None,
    /// A module function: straight to its local entry point.
    Local,
    /// A function outside the module: through a stub, and the `nop` after it
    /// restores r2 (a module on the kernel's TOC base: a `bl` with or
    /// without a `nop`, or a tail call `b`, and nothing to restore).
    External,
}

/// One relocation, checked against the object (not yet against addresses).
pub(super) struct Relocation<'a> {
    /// `R_PPC64_*`.
    pub kind: u32,
    /// The section it patches.
    pub target: usize,
    /// Offset of the patched field in that section.
    pub offset: u64,
    /// `r_addend`.
    pub addend: i64,
    /// The symbol.
    pub symbol: Symbol<'a>,
    /// For R_PPC64_REL24, where the branch goes.
    pub branch: Branch,
}

/// Reads the headers of the relocation sections: entry size, symbol table link, target in
/// range; keeps those that patch loaded sections. SHT_REL is refused for loaded targets.
pub(super) fn read<'a>(
    sections: &[Section<'a>],
    symbols: &SymbolTable<'a>,
) -> Result<Vec<RelocationSection<'a>>, ModuleError> {
    let mut groups = Vec::new();
    let mut total = 0;
    for section in sections.iter().filter(|section| matches!(section.kind, elf::SHT_RELA | elf::SHT_REL)) {
        let refuse = |reason| ModuleError::BadRelocationSection { section: section.label(), reason };
        let Some(target) = sections.get(section.info as usize) else {
            return Err(ModuleError::SectionOutOfRange {
                index: section.info.into(),
                count: sections.len(),
                context: format!("sh_info of relocation section {}", section.label()),
            });
        };
        if section.link as usize != symbols.section {
            return Err(refuse("sh_link does not name the symbol table"));
        }
        if !target.is_loaded() || target.index == 0 {
            continue;
        }
        if section.kind == elf::SHT_REL {
            return Err(ModuleError::UnsupportedSection {
                section: section.label(),
                reason: "SHT_REL relocations (without addends) are not supported",
            });
        }
        if target.kind == elf::SHT_NOBITS {
            return Err(refuse("it patches a NOBITS section"));
        }
        if section.entry_size != RELA_SIZE {
            return Err(ModuleError::BadEntrySize {
                what: "relocation",
                size: section.entry_size,
                expected: RELA_SIZE,
            });
        }
        if section.size % RELA_SIZE != 0 {
            return Err(refuse("size is not a whole number of relocations"));
        }
        let count = section.size / RELA_SIZE;
        total += count;
        if total > MAX_RELOCATIONS {
            return Err(ModuleError::TooLarge { what: "relocation count", value: total, limit: MAX_RELOCATIONS });
        }
        let Ok((entries, _)) = pod::slice_from_bytes::<Rela64<LittleEndian>>(section.bytes, count as usize) else {
            return Err(refuse("shorter than its size"));
        };
        groups.push(RelocationSection { section: section.index, target: target.index, entries });
    }
    Ok(groups)
}

/// The 32-bit word at `offset` in `bytes`, if it is there.
fn word_at(bytes: &[u8], offset: u64) -> Option<u32> {
    let start = usize::try_from(offset).ok()?;
    let word = bytes.get(start..start.checked_add(4)?)?;
    Some(u32::from_le_bytes(word.try_into().ok()?))
}

/// Checks relocation `entry` of `group`: type supported, symbol in range and usable, field
/// inside the patched section; for R_PPC64_REL24 a `b`/`bl` at a word offset, and for a call
/// out of the module a `bl` followed by a `nop`, unless the module runs on the kernel's TOC
/// base (`kernel_toc`: any `b`/`bl`). `None` for R_PPC64_NONE.
pub(super) fn decode<'a>(
    group: &RelocationSection<'a>,
    entry: &Rela64<LittleEndian>,
    sections: &[Section<'a>],
    symbols: &SymbolTable<'a>,
    kernel_toc: bool,
) -> Result<Option<Relocation<'a>>, ModuleError> {
    let kind = entry.r_type(ENDIAN, false);
    let offset = entry.r_offset.get(ENDIAN);
    let Some(target) = sections.get(group.target) else {
        return Err(ModuleError::SectionOutOfRange {
            index: group.target as u64,
            count: sections.len(),
            context: String::from("a relocation section"),
        });
    };
    let Some(width) = width(kind) else {
        return Err(ModuleError::UnsupportedRelocation { kind, section: target.label(), offset });
    };
    if kind == R_PPC64_NONE {
        return Ok(None);
    }
    let index = entry.r_sym(ENDIAN, false) as usize;
    if index >= symbols.len() {
        let section = sections.get(group.section).map_or_else(String::new, Section::label);
        return Err(ModuleError::SymbolOutOfRange { index: index as u64, count: symbols.len(), section });
    }
    let symbol = symbols.get(index, sections)?;
    if offset.checked_add(width).is_none_or(|end| end > target.size) {
        return Err(ModuleError::RelocationOutOfSection { kind, section: target.label(), offset, size: target.size });
    }
    let refuse = |reason| ModuleError::UnsupportedTarget {
        kind,
        section: target.label(),
        offset,
        symbol: String::from(symbol.name),
        reason,
    };
    if let Definition::Unloaded(_) = symbol.definition {
        return Err(refuse("the symbol is in a section that is not loaded"));
    }
    let mut branch = Branch::None;
    if kind == R_PPC64_REL24 {
        if !offset.is_multiple_of(4) {
            return Err(refuse("the branch is not at a multiple of 4"));
        }
        let word = word_at(target.bytes, offset).unwrap_or(0);
        if word >> 26 != 18 || word & 2 != 0 {
            return Err(ModuleError::NotABranch { section: target.label(), offset, word });
        }
        branch = match symbol.definition {
            Definition::Loaded(_) => Branch::Local,
            // One TOC base: nothing to save or restore around the call. A
            // target module's function sets r2 to its own module's TOC, which
            // nothing here would restore: refused.
            Definition::Undefined
                if kernel_toc
                    && symbol.name.starts_with(KLP_SYMBOL_PREFIX)
                    && !symbol.name.starts_with(KERNEL_KLP_PREFIX) =>
            {
                return Err(refuse(
                    "a call from a toc kernel patch to a target module's function (its TOC is not the kernel's)",
                ));
            }
            Definition::Undefined if symbol.name != TOC_SYMBOL && kernel_toc => Branch::External,
            Definition::Undefined if symbol.name != TOC_SYMBOL => {
                if word & 1 == 0 {
                    return Err(refuse("a tail call (b, not bl) out of the module cannot restore the TOC"));
                }
                match word_at(target.bytes, offset + 4) {
                    Some(CALL_NOP) => Branch::External,
                    found => {
                        return Err(ModuleError::MissingNop {
                            symbol: String::from(symbol.name),
                            section: target.label(),
                            offset,
                            found,
                        });
                    }
                }
            }
            _ => return Err(refuse("a branch to an absolute address or to .TOC. is not supported")),
        };
    }
    Ok(Some(Relocation { kind, target: target.index, offset, addend: entry.r_addend.get(ENDIAN), symbol, branch }))
}
