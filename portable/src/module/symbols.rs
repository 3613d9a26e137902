//! The object's symbol table, read in place: each entry checked when it is looked up.

use alloc::format;
use alloc::string::String;

use object::elf::{self, Sym64};
use object::read::StringTable;
use object::{LittleEndian, pod};

use super::elf::{ENDIAN, Section};
use super::{MAX_SYMBOLS, ModuleError};

/// Size of an ELF64 symbol.
const SYMBOL_SIZE: u64 = 24;

/// The name of the module's TOC pointer symbol, which the loader defines.
pub const TOC_SYMBOL: &str = ".TOC.";

/// Where a symbol is defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Definition {
    /// Outside the module: resolved by the kernel (or `.TOC.`, defined by the loader).
    Undefined,
    /// An absolute value (SHN_ABS), or the null symbol (value 0).
    Absolute,
    /// In loaded section `index`, at `value` bytes from its start.
    Loaded(usize),
    /// In a section that is not loaded (debug information): cannot be relocated against.
    Unloaded(usize),
}

/// One checked symbol.
#[derive(Debug, Clone, Copy)]
pub(super) struct Symbol<'a> {
    /// The name (a section symbol gets its section's name).
    pub name: &'a str,
    /// Where it is defined.
    pub definition: Definition,
    /// `st_value`: the offset in its section, or the absolute value.
    pub value: u64,
    /// `st_size`.
    pub size: u64,
    /// `STT_*`.
    pub kind: u8,
    /// Binding other than STB_LOCAL.
    pub global: bool,
    /// Bytes from the global to the local entry point (ELFv2 `st_other` bits 5-7).
    pub local_entry_offset: u64,
}

impl Symbol<'_> {
    /// Whether this is a function defined in a loaded section.
    pub fn is_defined_function(&self) -> bool {
        self.kind == elf::STT_FUNC && matches!(self.definition, Definition::Loaded(_))
    }
}

/// The bytes from global to local entry point for ELFv2 `st_other` bits 5-7, or `None` for
/// the reserved code 7.
pub fn local_entry_offset(other: u8) -> Option<u64> {
    match other >> 5 {
        0 | 1 => Some(0),
        code @ 2..=6 => Some(1 << code),
        _ => None,
    }
}

/// The symbol table (SHT_SYMTAB) and its string table.
pub(super) struct SymbolTable<'a> {
    /// Index of the SHT_SYMTAB section.
    pub section: usize,
    entries: &'a [Sym64<LittleEndian>],
    strings: StringTable<'a>,
}

impl<'a> SymbolTable<'a> {
    /// Finds the one SHT_SYMTAB section and checks its header and every symbol in it.
    pub fn read(sections: &[Section<'a>]) -> Result<Self, ModuleError> {
        let mut tables = sections.iter().filter(|section| section.kind == elf::SHT_SYMTAB);
        let Some(table) = tables.next() else {
            return Err(ModuleError::SymbolTable("missing"));
        };
        if tables.next().is_some() {
            return Err(ModuleError::SymbolTable("more than one SHT_SYMTAB section"));
        }
        if table.entry_size != SYMBOL_SIZE {
            return Err(ModuleError::BadEntrySize { what: "symbol", size: table.entry_size, expected: SYMBOL_SIZE });
        }
        if table.size % SYMBOL_SIZE != 0 {
            return Err(ModuleError::SymbolTable("size is not a whole number of symbols"));
        }
        let count = table.size / SYMBOL_SIZE;
        if count > MAX_SYMBOLS {
            return Err(ModuleError::TooLarge { what: "symbol count", value: count, limit: MAX_SYMBOLS });
        }
        let Ok((entries, _)) = pod::slice_from_bytes::<Sym64<LittleEndian>>(table.bytes, count as usize) else {
            return Err(ModuleError::SymbolTable("shorter than its size"));
        };
        let Some(strings) = sections.get(table.link as usize).filter(|strings| strings.kind == elf::SHT_STRTAB) else {
            return Err(ModuleError::SymbolTable("sh_link does not name a SHT_STRTAB section"));
        };
        let symbols = SymbolTable {
            section: table.index,
            entries,
            strings: StringTable::new(strings.bytes, 0, strings.bytes.len() as u64),
        };
        for index in 0..symbols.len() {
            symbols.get(index, sections)?;
        }
        Ok(symbols)
    }

    /// How many entries the table has, the null symbol included.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The checked symbol `index`: name readable, section index in range (COMMON, extended and
    /// reserved indices refused), value inside its section, no TLS or IFUNC, a valid local entry.
    pub fn get(&self, index: usize, sections: &[Section<'a>]) -> Result<Symbol<'a>, ModuleError> {
        let Some(entry) = self.entries.get(index) else {
            return Err(ModuleError::SymbolOutOfRange {
                index: index as u64,
                count: self.len(),
                section: String::from(".symtab"),
            });
        };
        let mut name = self
            .strings
            .get(entry.st_name.get(ENDIAN))
            .ok()
            .and_then(|name| core::str::from_utf8(name).ok())
            .ok_or_else(|| ModuleError::BadString { context: format!("symbol {index}") })?;
        let kind = entry.st_info & 0xf;
        let value = entry.st_value.get(ENDIAN);
        let section_index = entry.st_shndx.get(ENDIAN);
        let section = match section_index {
            elf::SHN_UNDEF => None,
            section_index if section_index >= elf::SHN_LORESERVE => None,
            section_index => sections.get(usize::from(section_index)),
        };
        if let Some(section) = section.filter(|_| kind == elf::STT_SECTION && name.is_empty()) {
            name = section.name;
        }
        let label = || if name.is_empty() { format!("{index}") } else { String::from(name) };
        let refuse = |reason| Err(ModuleError::UnsupportedSymbol { symbol: label(), reason });
        let definition = match section_index {
            _ if index == 0 => Definition::Absolute,
            elf::SHN_UNDEF => Definition::Undefined,
            elf::SHN_ABS => Definition::Absolute,
            elf::SHN_COMMON => return refuse("COMMON symbols are not supported (give the variable an initializer)"),
            elf::SHN_XINDEX => return refuse("extended section indices are not supported"),
            section_index if section_index >= elf::SHN_LORESERVE => return refuse("reserved section index"),
            section_index => {
                let Some(section) = section else {
                    return Err(ModuleError::SectionOutOfRange {
                        index: section_index.into(),
                        count: sections.len(),
                        context: format!("symbol {}", label()),
                    });
                };
                if section.is_loaded() {
                    if value > section.size {
                        return refuse("value lies beyond the end of its section");
                    }
                    Definition::Loaded(section.index)
                } else {
                    Definition::Unloaded(section.index)
                }
            }
        };
        if definition == Definition::Undefined && name.is_empty() {
            return refuse("undefined and unnamed");
        }
        if kind == elf::STT_TLS || kind == elf::STT_GNU_IFUNC {
            return refuse("thread-local and indirect-function symbols are not supported");
        }
        let Some(local_entry_offset) = local_entry_offset(entry.st_other) else {
            return refuse("reserved local entry point code 7 in st_other");
        };
        Ok(Symbol {
            name,
            definition,
            value,
            size: entry.st_size.get(ENDIAN),
            kind,
            global: entry.st_info >> 4 != elf::STB_LOCAL,
            local_entry_offset,
        })
    }
}
