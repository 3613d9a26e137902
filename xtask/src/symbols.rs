//! Fills the kernel's `.kernel_symbols` section with its function names after linking, and `.kernel_klp_symbols` (functions and data objects by ELF name) for klp relocations.

use anyhow::{Context, Result, anyhow, bail};
use object::read::elf::{ElfFile64, Sym};
use object::{Endianness, Object, ObjectSection, ObjectSymbol, elf};

/// The section that the linker script reserves for the table.
pub const SECTION: &str = ".kernel_symbols";

/// The section that the linker script reserves for the klp table.
pub const KLP_SECTION: &str = ".kernel_klp_symbols";

/// Every function symbol with a nonzero size: (mangled name, address, size).
pub fn functions(data: &[u8]) -> Result<Vec<(String, u64, u32)>> {
    sized_symbols(data, &[elf::STT_FUNC])
}

/// What the klp table holds: every function (its address is its global
/// entry) and data object (a static) with a nonzero size, by ELF name.
pub fn klp_symbols(data: &[u8]) -> Result<Vec<(String, u64, u32)>> {
    sized_symbols(data, &[elf::STT_FUNC, elf::STT_OBJECT])
}

/// Every symbol of one of `kinds` with a nonzero size: (ELF name, address, size).
fn sized_symbols(data: &[u8], kinds: &[u8]) -> Result<Vec<(String, u64, u32)>> {
    let file = ElfFile64::<Endianness>::parse(data).context("the kernel is not a 64-bit ELF file")?;
    let endian = file.endian();
    let mut found = Vec::new();
    for symbol in file.symbols() {
        let raw = symbol.elf_symbol();
        if !kinds.contains(&raw.st_type()) || raw.st_size(endian) == 0 {
            continue;
        }
        let size = u32::try_from(symbol.size()).context("a symbol larger than 4 GiB")?;
        found.push((symbol.name()?.to_string(), symbol.address(), size));
    }
    Ok(found)
}

/// The klp table of kernel image `image` (a linked kernel ELF file), encoded
/// as xtask writes it into the image and the kernel reads it.
pub fn klp_table(image: &[u8]) -> Result<Vec<u8>> {
    portable::symbols::encode(&klp_symbols(image)?, usize::MAX).context("encoding the klp table")
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
    let symbols: Vec<(String, u64, u32)> =
        functions(data)?.into_iter().map(|(name, address, size)| (demangle(&name), address, size)).collect();
    fill_section(data, SECTION, &symbols)
}

/// Writes the klp table (functions and data objects by ELF name) into `data`.
pub fn fill_klp(data: &mut [u8]) -> Result<Filled> {
    let symbols = klp_symbols(data)?;
    fill_section(data, KLP_SECTION, &symbols)
}

/// Encodes `symbols` into the reserved `section` of `data`.
fn fill_section(data: &mut [u8], section: &str, symbols: &[(String, u64, u32)]) -> Result<Filled> {
    let Some((offset, capacity)) = reservation(data, section)? else {
        return Ok(Filled::NoSection);
    };
    let Some(table) = portable::symbols::encode(symbols, capacity) else {
        let needed = portable::symbols::encode(symbols, usize::MAX).map_or(0, |table| table.len());
        bail!(
            "the symbol table of {} symbols needs {needed} bytes but section {section} holds only {capacity}; \
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

    // The lookups `patch from-diff` makes through `klp_table` and `SymbolTable::klp_address`.
    /// The addresses of the kernel functions and data objects named `name`
    /// (ELF name), in the order positions count them: position N >= 1 of a
    /// `.klp.sym.vmlinux.NAME,N` is the Nth.
    fn klp_addresses(image: &[u8], name: &str) -> Result<Vec<u64>> {
        let bytes = klp_table(image)?;
        let table = portable::symbols::SymbolTable::parse(&bytes).context("reading the klp table back")?;
        Ok(table.find(name).map(|symbol| symbol.address).collect())
    }

    /// The position to write in `.klp.sym.vmlinux.NAME,POSITION` for kernel
    /// symbol `name` (ELF name) of `image`: `None` if no function or data object
    /// has that name, `Some(0)` if exactly one has; several is an error naming
    /// how many ([`klp_addresses`] lists them, to pick one by address).
    fn klp_position(image: &[u8], name: &str) -> Result<Option<usize>> {
        match klp_addresses(image, name)?.len() {
            0 => Ok(None),
            1 => Ok(Some(0)),
            count => bail!("{count} kernel symbols are named {name}; a klp reference to it needs a position from 1"),
        }
    }

    /// The address `.klp.sym.vmlinux.NAME,POSITION` resolves to in the kernel
    /// `image`, by the rule the kernel applies (`SymbolTable::klp_address`);
    /// `None` where the kernel refuses the patch.
    fn klp_symbol_at(image: &[u8], name: &str, position: usize) -> Option<u64> {
        let bytes = klp_table(image).ok()?;
        portable::symbols::SymbolTable::parse(&bytes)?.klp_address(name, position).ok()
    }

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
        writer.append_section_data(data, &[0; 16], 8);
        let table = writer.add_section(vec![], SECTION.as_bytes().to_vec(), SectionKind::Data);
        writer.append_section_data(table, &vec![0; capacity], 8);
        let klp_table = writer.add_section(vec![], KLP_SECTION.as_bytes().to_vec(), SectionKind::Data);
        writer.append_section_data(klp_table, &vec![0; capacity], 8);
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
        // Two statics of one name (as two crates' `static` of one path), a data symbol without size.
        add("twin", 12, 4, SymbolKind::Data, data);
        add("twin", 8, 4, SymbolKind::Data, data);
        add("marker", 8, 0, SymbolKind::Data, data);
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

    /// The address of section `name` in `image` plus `offset`.
    fn address_in(image: &[u8], name: &str, offset: u64) -> u64 {
        ElfFile64::<Endianness>::parse(image).unwrap().section_by_name(name).unwrap().address() + offset
    }

    #[test]
    fn klp_table_holds_functions_and_data_objects_by_elf_name() {
        let mut data = kernel_object(512);
        let Filled::Table { count, capacity, .. } = fill_klp(&mut data).unwrap() else { panic!("no section") };
        assert_eq!((count, capacity), (5, 512), "two functions, COUNTER and the two twins; no sizeless symbol");
        let file = ElfFile64::<Endianness>::parse(&*data).unwrap();
        let bytes = file.section_by_name(KLP_SECTION).unwrap().data().unwrap();
        let table = portable::symbols::SymbolTable::parse(bytes).unwrap();
        let boot_main = address_in(&data, ".text", 0x10);
        assert_eq!(table.klp_address("_ZN6kernel9boot_main17h0123456789abcdefE", 0), Ok(boot_main), "the ELF name");
        assert!(table.find("kernel::boot_main").next().is_none(), "not the demangled one");
        assert_eq!(table.klp_address("COUNTER", 0), Ok(address_in(&data, ".data", 0)));
        assert!(table.find("marker").next().is_none());
        // The host functions give what the kernel's table gives.
        assert_eq!(klp_position(&data, "COUNTER").unwrap(), Some(0));
        assert_eq!(klp_symbol_at(&data, "COUNTER", 0), Some(address_in(&data, ".data", 0)));
        assert_eq!(klp_position(&data, "nothing").unwrap(), None);
        assert_eq!(klp_symbol_at(&data, "nothing", 0), None);
        assert_eq!(klp_symbol_at(&data, "marker", 0), None, "a symbol without size is not in the table");
    }

    #[test]
    fn klp_positions_count_a_shared_name_in_address_order() {
        let data = kernel_object(512);
        let error = klp_position(&data, "twin").unwrap_err().to_string();
        assert!(error.contains("2 kernel symbols are named twin"), "{error}");
        let (first, second) = (address_in(&data, ".data", 8), address_in(&data, ".data", 12));
        assert_eq!(klp_addresses(&data, "twin").unwrap(), [first, second], "by address, not symbol-table order");
        assert_eq!(klp_symbol_at(&data, "twin", 0), None, "ambiguous without a position");
        assert_eq!(klp_symbol_at(&data, "twin", 1), Some(first));
        assert_eq!(klp_symbol_at(&data, "twin", 2), Some(second));
        assert_eq!(klp_symbol_at(&data, "twin", 3), None);
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
