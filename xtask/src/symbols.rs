//! Fills the kernel's `.kernel_symbols` section with its function names after linking.

use anyhow::{Context, Result, anyhow, bail};
use object::read::elf::{ElfFile64, Sym};
use object::{Endianness, Object, ObjectSection, ObjectSymbol, elf};

/// The section that the linker script reserves for the table.
pub const SECTION: &str = ".kernel_symbols";

/// Every function symbol with a nonzero size: (mangled name, address, size).
pub fn functions(data: &[u8]) -> Result<Vec<(String, u64, u32)>> {
    let file = ElfFile64::<Endianness>::parse(data).context("the kernel is not a 64-bit ELF file")?;
    let endian = file.endian();
    let mut functions = Vec::new();
    for symbol in file.symbols() {
        let raw = symbol.elf_symbol();
        if raw.st_type() != elf::STT_FUNC || raw.st_size(endian) == 0 {
            continue;
        }
        let size = u32::try_from(symbol.size()).context("a function larger than 4 GiB")?;
        functions.push((symbol.name()?.to_string(), symbol.address(), size));
    }
    Ok(functions)
}

/// A Rust symbol name without its hash, or the name itself when it is not Rust.
pub fn demangle(name: &str) -> String {
    format!("{:#}", rustc_demangle::demangle(name))
}

/// What [`fill`] did.
pub enum Filled {
    /// The table was written: symbol count, bytes used, capacity.
    Table { count: usize, used: usize, capacity: usize },
    /// The kernel has no `.kernel_symbols` section (yet).
    NoSection,
}

/// The file offset and size of `section`, a reservation the kernel leaves
/// for xtask to fill after linking; `None` when the kernel has no such section.
pub fn reservation(data: &[u8], section: &str) -> Result<Option<(usize, usize)>> {
    let file = ElfFile64::<Endianness>::parse(data).context("the kernel is not a 64-bit ELF file")?;
    let Some(found) = file.section_by_name(section) else {
        return Ok(None);
    };
    let (offset, size) = found
        .file_range()
        .ok_or_else(|| anyhow!("section {section} has no bytes in the file (NOBITS); it must be initialized data"))?;
    Ok(Some((usize::try_from(offset)?, usize::try_from(size)?)))
}

/// The contents of `section` as little-endian 64-bit words (empty when there is no such section).
pub fn section_words(data: &[u8], section: &str) -> Result<Vec<u64>> {
    let file = ElfFile64::<Endianness>::parse(data).context("the kernel is not a 64-bit ELF file")?;
    let Some(found) = file.section_by_name(section) else {
        return Ok(Vec::new());
    };
    let bytes = found.data().with_context(|| format!("reading section {section}"))?;
    Ok(bytes.chunks_exact(8).map(|word| u64::from_le_bytes(word.try_into().expect("8 bytes"))).collect())
}

/// Writes the symbol table into `data` (a linked kernel) at the section's file offset.
pub fn fill(data: &mut [u8]) -> Result<Filled> {
    let Some((offset, capacity)) = reservation(data, SECTION)? else {
        return Ok(Filled::NoSection);
    };
    let symbols: Vec<(String, u64, u32)> =
        functions(data)?.into_iter().map(|(name, address, size)| (demangle(&name), address, size)).collect();
    let Some(table) = portable::symbols::encode(&symbols, capacity) else {
        let needed = portable::symbols::encode(&symbols, usize::MAX).map_or(0, |table| table.len());
        bail!(
            "the symbol table of {} functions needs {needed} bytes but section {SECTION} holds only {capacity}; \
             enlarge the reservation in the kernel",
            symbols.len()
        );
    };
    let target = data.get_mut(offset..offset + capacity).context("section extends past the end of the file")?;
    target.fill(0);
    target[..table.len()].copy_from_slice(&table);
    Ok(Filled::Table { count: symbols.len(), used: table.len(), capacity })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demangles_without_hash_and_keeps_other_names() {
        assert_eq!(demangle("_ZN6kernel9boot_main17h0123456789abcdefE"), "kernel::boot_main");
        assert_eq!(demangle("memcpy"), "memcpy");
    }

    #[test]
    fn refuses_what_is_not_elf() {
        assert!(fill(&mut [0u8; 64]).is_err());
    }

    /// A little-endian ppc64 ELF object with two functions, a data object and a
    /// `.kernel_symbols` reservation of `capacity` zero bytes.
    fn kernel_object(capacity: usize) -> Vec<u8> {
        use object::write::{Object as Writer, Symbol, SymbolSection};
        use object::{Architecture, BinaryFormat, SectionKind, SymbolFlags, SymbolKind, SymbolScope};
        let mut writer = Writer::new(BinaryFormat::Elf, Architecture::PowerPc64, Endianness::Little);
        let text = writer.add_section(vec![], b".text".to_vec(), SectionKind::Text);
        writer.append_section_data(text, &[0x60; 0x30], 4);
        let data = writer.add_section(vec![], b".data".to_vec(), SectionKind::Data);
        writer.append_section_data(data, &[0; 8], 8);
        let table = writer.add_section(vec![], SECTION.as_bytes().to_vec(), SectionKind::Data);
        writer.append_section_data(table, &vec![0; capacity], 8);
        let mut add = |name: &str, value, size, kind, section| {
            writer.add_symbol(Symbol {
                name: name.as_bytes().to_vec(),
                value,
                size,
                kind,
                scope: SymbolScope::Linkage,
                weak: false,
                section: SymbolSection::Section(section),
                flags: SymbolFlags::None,
            });
        };
        add("_ZN6kernel9boot_main17h0123456789abcdefE", 0x10, 0x20, SymbolKind::Text, text);
        add("_start", 0, 0x10, SymbolKind::Text, text);
        add("empty", 0x30, 0, SymbolKind::Text, text);
        add("COUNTER", 0, 8, SymbolKind::Data, data);
        writer.write().unwrap()
    }

    #[test]
    fn fills_the_reserved_section() {
        let mut data = kernel_object(256);
        let Filled::Table { count, used, capacity } = fill(&mut data).unwrap() else { panic!("no section") };
        assert_eq!((count, capacity), (2, 256));
        let file = ElfFile64::<Endianness>::parse(&*data).unwrap();
        let bytes = file.section_by_name(SECTION).unwrap().data().unwrap();
        let table = portable::symbols::SymbolTable::parse(bytes).unwrap();
        let names: Vec<_> = table.iter().map(|symbol| (symbol.name, symbol.address, symbol.size)).collect();
        assert_eq!(names, [("_start", 0, 0x10), ("kernel::boot_main", 0x10, 0x20)]);
        assert!(bytes[used..].iter().all(|byte| *byte == 0));
    }

    #[test]
    fn names_both_sizes_when_the_table_does_not_fit() {
        let error = fill(&mut kernel_object(40)).err().unwrap().to_string();
        assert!(error.contains("needs 75 bytes") && error.contains("holds only 40"), "{error}");
    }

    #[test]
    fn reads_functions_of_a_real_elf() {
        // The running test binary is an ELF file with plenty of sized functions.
        let data = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let functions = functions(&data).unwrap();
        assert!(
            functions
                .iter()
                .any(|(name, _, size)| demangle(name).contains("reads_functions_of_a_real_elf") && *size > 0)
        );
    }
}
