//! The ELF header and section table of a ppc64le relocatable object, every bound checked.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use object::elf::{self, FileHeader64, SectionHeader64};
use object::read::StringTable;
use object::{LittleEndian, pod};

use super::{MAX_ALIGNMENT, MAX_FILE_SIZE, MAX_SECTIONS, ModuleError};

/// The byte order of every object this loader reads.
pub(super) const ENDIAN: LittleEndian = LittleEndian;

/// Size of the ELF64 file header.
const HEADER_SIZE: u64 = 64;
/// Size of an ELF64 section header.
const SECTION_HEADER_SIZE: u64 = 64;

/// One section header, checked: its file bytes (unless NOBITS) lie inside the file.
#[derive(Debug, Clone)]
pub(super) struct Section<'a> {
    /// Index in the section table.
    pub index: usize,
    /// Name from the section name table (may be empty).
    pub name: &'a str,
    /// `sh_type`.
    pub kind: u32,
    /// `sh_flags`.
    pub flags: u64,
    /// `sh_offset`.
    pub offset: u64,
    /// `sh_size`.
    pub size: u64,
    /// `sh_addralign`, 1 for 0; a power of two.
    pub alignment: u64,
    /// `sh_link`.
    pub link: u32,
    /// `sh_info`.
    pub info: u32,
    /// `sh_entsize`.
    pub entry_size: u64,
    /// The section's bytes in the file (empty for NOBITS and NULL).
    pub bytes: &'a [u8],
}

impl Section<'_> {
    /// Whether the section occupies module memory (SHF_ALLOC).
    pub fn is_loaded(&self) -> bool {
        self.flags & u64::from(elf::SHF_ALLOC) != 0
    }

    /// Whether the section holds bytes in the file.
    pub fn has_file_bytes(&self) -> bool {
        self.kind != elf::SHT_NOBITS && self.kind != elf::SHT_NULL
    }

    /// The name for messages: the section's name, or `section N` if it has none.
    pub fn label(&self) -> String {
        if self.name.is_empty() { format!("section {}", self.index) } else { String::from(self.name) }
    }
}

/// Section types that may be loaded (SHF_ALLOC).
const LOADABLE_TYPES: [u32; 6] = [
    elf::SHT_PROGBITS,
    elf::SHT_NOBITS,
    elf::SHT_NOTE,
    elf::SHT_INIT_ARRAY,
    elf::SHT_FINI_ARRAY,
    elf::SHT_PREINIT_ARRAY,
];

/// Checks the file header: a little-endian ELF64 ELFv2 ET_REL object for EM_PPC64.
fn check_header(bytes: &[u8]) -> Result<&FileHeader64<LittleEndian>, ModuleError> {
    let magic_length = bytes.len().min(4);
    if bytes[..magic_length] != elf::ELFMAG[..magic_length] {
        return Err(ModuleError::NotElf);
    }
    let Ok((header, _)) = pod::from_bytes::<FileHeader64<LittleEndian>>(bytes) else {
        return Err(ModuleError::Truncated { what: "the ELF header", end: HEADER_SIZE, length: bytes.len() as u64 });
    };
    let ident = &header.e_ident;
    if ident.class != elf::ELFCLASS64 {
        return Err(ModuleError::WrongClass(ident.class));
    }
    if ident.data != elf::ELFDATA2LSB {
        return Err(ModuleError::WrongEndianness(ident.data));
    }
    if ident.version != elf::EV_CURRENT {
        return Err(ModuleError::WrongVersion(ident.version.into()));
    }
    if header.e_version.get(ENDIAN) != u32::from(elf::EV_CURRENT) {
        return Err(ModuleError::WrongVersion(header.e_version.get(ENDIAN)));
    }
    if header.e_machine.get(ENDIAN) != elf::EM_PPC64 {
        return Err(ModuleError::WrongMachine(header.e_machine.get(ENDIAN)));
    }
    if header.e_type.get(ENDIAN) != elf::ET_REL {
        return Err(ModuleError::WrongType(header.e_type.get(ENDIAN)));
    }
    let flags = header.e_flags.get(ENDIAN);
    if flags != 0 && flags != 2 {
        return Err(ModuleError::WrongAbi(flags));
    }
    if bytes.len() as u64 > MAX_FILE_SIZE {
        return Err(ModuleError::TooLarge { what: "file size", value: bytes.len() as u64, limit: MAX_FILE_SIZE });
    }
    Ok(header)
}

/// The file bytes `offset..offset + size`, if they lie inside the file.
fn file_range(bytes: &[u8], offset: u64, size: u64) -> Option<&[u8]> {
    let start = usize::try_from(offset).ok()?;
    let end = start.checked_add(usize::try_from(size).ok()?)?;
    bytes.get(start..end)
}

/// Reads and checks the section table: header, bounds, names, alignments, loadable
/// types, and that no two sections (nor the headers) share file bytes.
pub(super) fn read_sections(bytes: &[u8]) -> Result<Vec<Section<'_>>, ModuleError> {
    let header = check_header(bytes)?;
    let length = bytes.len() as u64;
    let entry_size = u64::from(header.e_shentsize.get(ENDIAN));
    if entry_size != SECTION_HEADER_SIZE {
        return Err(ModuleError::BadEntrySize {
            what: "section header",
            size: entry_size,
            expected: SECTION_HEADER_SIZE,
        });
    }
    let count = usize::from(header.e_shnum.get(ENDIAN));
    if count > MAX_SECTIONS {
        return Err(ModuleError::TooLarge { what: "section count", value: count as u64, limit: MAX_SECTIONS as u64 });
    }
    let table_offset = header.e_shoff.get(ENDIAN);
    let table_size = count as u64 * SECTION_HEADER_SIZE;
    let Some(table) = file_range(bytes, table_offset, table_size) else {
        let end = table_offset.saturating_add(table_size);
        return Err(ModuleError::Truncated { what: "the section header table", end, length });
    };
    let Ok((headers, _)) = pod::slice_from_bytes::<SectionHeader64<LittleEndian>>(table, count) else {
        return Err(ModuleError::Truncated { what: "the section header table", end: length + 1, length });
    };

    let names_index = usize::from(header.e_shstrndx.get(ENDIAN));
    let Some(names_header) = headers.get(names_index).filter(|_| names_index != 0) else {
        return Err(ModuleError::SectionOutOfRange {
            index: names_index as u64,
            count,
            context: String::from("e_shstrndx (the section name table)"),
        });
    };
    let names_label = format!("section {names_index}");
    if names_header.sh_type.get(ENDIAN) != elf::SHT_STRTAB {
        return Err(ModuleError::UnsupportedSection {
            section: names_label,
            reason: "section names are not in a SHT_STRTAB",
        });
    }
    let (names_offset, names_size) = (names_header.sh_offset.get(ENDIAN), names_header.sh_size.get(ENDIAN));
    if file_range(bytes, names_offset, names_size).is_none() {
        return Err(ModuleError::SectionOutOfFile {
            section: names_label,
            offset: names_offset,
            size: names_size,
            length,
        });
    }
    let names = StringTable::new(bytes, names_offset, names_offset + names_size);

    let mut sections = Vec::with_capacity(count);
    for (index, raw) in headers.iter().enumerate() {
        let name = names
            .get(raw.sh_name.get(ENDIAN))
            .ok()
            .and_then(|name| core::str::from_utf8(name).ok())
            .ok_or_else(|| ModuleError::BadString { context: format!("section {index}") })?;
        let alignment = raw.sh_addralign.get(ENDIAN).max(1);
        let mut section = Section {
            index,
            name,
            kind: raw.sh_type.get(ENDIAN),
            flags: raw.sh_flags.get(ENDIAN),
            offset: raw.sh_offset.get(ENDIAN),
            size: raw.sh_size.get(ENDIAN),
            alignment,
            link: raw.sh_link.get(ENDIAN),
            info: raw.sh_info.get(ENDIAN),
            entry_size: raw.sh_entsize.get(ENDIAN),
            bytes: &[],
        };
        if section.has_file_bytes() {
            section.bytes =
                file_range(bytes, section.offset, section.size).ok_or_else(|| ModuleError::SectionOutOfFile {
                    section: section.label(),
                    offset: section.offset,
                    size: section.size,
                    length,
                })?;
        }
        if !alignment.is_power_of_two() || (section.is_loaded() && alignment > MAX_ALIGNMENT) {
            return Err(ModuleError::BadAlignment { section: section.label(), alignment });
        }
        if section.is_loaded() {
            if !LOADABLE_TYPES.contains(&section.kind) {
                return Err(ModuleError::UnsupportedSection {
                    section: section.label(),
                    reason: "this section type cannot be loaded (SHF_ALLOC)",
                });
            }
            if section.flags & u64::from(elf::SHF_TLS) != 0 {
                return Err(ModuleError::UnsupportedSection {
                    section: section.label(),
                    reason: "thread-local storage is not supported",
                });
            }
        }
        sections.push(section);
    }
    check_overlaps(&sections, table_offset, table_size)?;
    Ok(sections)
}

/// Fails if two sections, or a section and the ELF header or the section header table,
/// share file bytes.
fn check_overlaps(sections: &[Section<'_>], table_offset: u64, table_size: u64) -> Result<(), ModuleError> {
    // (start, end, index): usize::MAX is the ELF header, usize::MAX - 1 the section header table.
    let mut ranges: Vec<(u64, u64, usize)> = Vec::with_capacity(sections.len() + 2);
    ranges.push((0, HEADER_SIZE, usize::MAX));
    if table_size > 0 {
        ranges.push((table_offset, table_offset + table_size, usize::MAX - 1));
    }
    for section in sections.iter().filter(|section| section.has_file_bytes() && section.size > 0) {
        ranges.push((section.offset, section.offset + section.size, section.index));
    }
    ranges.sort_unstable();
    let label = |index: usize| match index {
        usize::MAX => String::from("the ELF header"),
        index if index == usize::MAX - 1 => String::from("the section header table"),
        index => sections.get(index).map_or_else(|| format!("section {index}"), |section| section.label()),
    };
    for pair in ranges.windows(2) {
        if let [(_, first_end, first), (second_start, _, second)] = *pair
            && second_start < first_end
        {
            return Err(ModuleError::SectionsOverlap { first: label(first), second: label(second) });
        }
    }
    Ok(())
}
