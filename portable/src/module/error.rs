//! Why a patch module was refused: one variant per check, each naming what is wrong.

use alloc::string::String;
use core::fmt;

use super::relocation::Kind;

/// Everything that can make [`parse`](super::parse), [`ModuleImage::link`](super::ModuleImage::link),
/// [`parse_description`](super::parse_description) or [`split_signed`](super::split_signed) refuse
/// their input. `Display` gives a one-line message naming the section, symbol or relocation at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ModuleError {
    /// A structure the file declares (`what`) ends at byte `end`, beyond its `length` bytes.
    Truncated {
        /// What was being read or counted.
        what: &'static str,
        /// The byte offset where it ends.
        end: u64,
        /// The file's length in bytes.
        length: u64,
    },
    /// The file does not start with the ELF magic bytes.
    NotElf,
    /// `EI_CLASS` is not ELFCLASS64.
    WrongClass(u8),
    /// `EI_DATA` is not ELFDATA2LSB.
    WrongEndianness(u8),
    /// `EI_VERSION` or `e_version` is not EV_CURRENT.
    WrongVersion(u32),
    /// `e_machine` is not EM_PPC64.
    WrongMachine(u16),
    /// `e_type` is not ET_REL.
    WrongType(u16),
    /// `e_flags` does not describe an ELFv2 object (2, or 0 for "unspecified").
    WrongAbi(u32),
    /// A table's entry size (`what`) is `size` where this loader reads `expected`-byte entries.
    BadEntrySize {
        /// Which table.
        what: &'static str,
        /// The size found, in bytes.
        size: u64,
        /// The size this loader reads.
        expected: u64,
    },
    /// A count or size (`what`) exceeds the loader's limit.
    TooLarge {
        /// What was being read or counted.
        what: &'static str,
        /// The count or size found.
        value: u64,
        /// The largest value accepted.
        limit: u64,
    },
    /// A section index `index` found in `context` is not below the section count.
    SectionOutOfRange {
        /// The index found.
        index: u64,
        /// How many entries the table has.
        count: usize,
        /// What holds the index.
        context: String,
    },
    /// A section's file bytes lie (partly) outside the file.
    SectionOutOfFile {
        /// The section (its name, or `section N`).
        section: String,
        /// The section's file offset.
        offset: u64,
        /// The section's size in bytes.
        size: u64,
        /// The file's length in bytes.
        length: u64,
    },
    /// Two parts of the file (sections, the ELF header, the section header table) share bytes.
    SectionsOverlap {
        /// The part that starts first.
        first: String,
        /// The part that overlaps it.
        second: String,
    },
    /// A section's alignment is not a power of two, or is larger than the loader accepts.
    BadAlignment {
        /// The section (its name, or `section N`).
        section: String,
        /// The alignment found.
        alignment: u64,
    },
    /// A name (of `context`) lies outside its string table, is unterminated or is not UTF-8.
    BadString {
        /// What holds the index.
        context: String,
    },
    /// The symbol table is missing, duplicated or malformed.
    SymbolTable(&'static str),
    /// A section the loader cannot handle.
    UnsupportedSection {
        /// The section (its name, or `section N`).
        section: String,
        /// Why.
        reason: &'static str,
    },
    /// A symbol the loader cannot handle.
    UnsupportedSymbol {
        /// The symbol's name.
        symbol: String,
        /// Why.
        reason: &'static str,
    },
    /// A relocation names symbol `index`, beyond the symbol table's `count` entries.
    SymbolOutOfRange {
        /// The index found.
        index: u64,
        /// How many entries the table has.
        count: usize,
        /// The relocation section that names it.
        section: String,
    },
    /// A relocation section whose header is inconsistent.
    BadRelocationSection {
        /// The section (its name, or `section N`).
        section: String,
        /// Why.
        reason: &'static str,
    },
    /// A relocation would write past the end of the section it patches.
    RelocationOutOfSection {
        /// The relocation type (`R_PPC64_*` number).
        kind: u32,
        /// The patched section.
        section: String,
        /// The relocation's offset in that section.
        offset: u64,
        /// The size of the patched section.
        size: u64,
    },
    /// A relocation type this loader does not implement.
    UnsupportedRelocation {
        /// The relocation type (`R_PPC64_*` number).
        kind: u32,
        /// The patched section.
        section: String,
        /// The relocation's offset in that section.
        offset: u64,
    },
    /// A supported relocation used in a way the loader cannot honour.
    UnsupportedTarget {
        /// The relocation type (`R_PPC64_*` number).
        kind: u32,
        /// The patched section.
        section: String,
        /// The relocation's offset in that section.
        offset: u64,
        /// The symbol's name.
        symbol: String,
        /// Why.
        reason: &'static str,
    },
    /// A module on the kernel's TOC base (`toc kernel`) lies too far from the
    /// kernel's TOC pointer for a TOC-relative access (`value`, the distance).
    KernelTocOutOfReach {
        /// The relocation type (`R_PPC64_*` number).
        kind: u32,
        /// The patched section.
        section: String,
        /// The relocation's offset in that section.
        offset: u64,
        /// The symbol's name.
        symbol: String,
        /// The distance from the kernel's TOC pointer that does not fit.
        value: u64,
    },
    /// A relocation's value does not fit its field.
    RelocationOverflow {
        /// The relocation type (`R_PPC64_*` number).
        kind: u32,
        /// The patched section.
        section: String,
        /// The relocation's offset in that section.
        offset: u64,
        /// The symbol's name.
        symbol: String,
        /// The value that does not fit.
        value: u64,
    },
    /// A relocation's value lacks the alignment its field requires (4 for branches and DS forms).
    MisalignedRelocation {
        /// The relocation type (`R_PPC64_*` number).
        kind: u32,
        /// The patched section.
        section: String,
        /// The relocation's offset in that section.
        offset: u64,
        /// The symbol's name.
        symbol: String,
        /// The misaligned value.
        value: u64,
    },
    /// An R_PPC64_REL24 does not patch an I-form relative branch (`b`/`bl`).
    NotABranch {
        /// The patched section.
        section: String,
        /// The relocation's offset in that section.
        offset: u64,
        /// The instruction word found.
        word: u32,
    },
    /// A call to a function outside the module is not followed by the `nop` the stub needs.
    MissingNop {
        /// The called function.
        symbol: String,
        /// The calling section.
        section: String,
        /// The offset of the call in that section.
        offset: u64,
        /// The word found after the call, or `None` at the end of the section.
        found: Option<u32>,
    },
    /// The resolver did not know an undefined symbol.
    UndefinedSymbol(String),
    /// The object has neither a `.klp.patch` nor a `.klp.module` section.
    MissingDescription,
    /// The object has both a `.klp.patch` and a `.klp.module` section.
    TwoDescriptions,
    /// A function a `.klp.module` description names (init, exit or
    /// livepatchable) is not a function defined in the module.
    ModuleFunctionMissing(String),
    /// The patch description is malformed at `line` (1-based; 0 for the text as a whole).
    Description {
        /// The 1-based line, or 0 for the text as a whole.
        line: usize,
        /// Why.
        reason: String,
    },
    /// A `replace` line names a new symbol that is not a function defined in the module.
    ReplacementNotFunction(String),
    /// The patch names the build id of another kernel than the running one.
    WrongBuild {
        /// The patch's name.
        patch: String,
        /// The build id its description names.
        wanted: crate::build_id::BuildId,
        /// The running kernel's build id (`None`: an image xtask did not fill).
        running: Option<crate::build_id::BuildId>,
    },
    /// The memory handed to `link` is shorter than `memory_size()`.
    MemoryTooSmall {
        /// Bytes needed (`memory_size()`).
        needed: usize,
        /// Bytes given.
        given: usize,
    },
    /// The base address handed to `link` is not a multiple of `memory_alignment()`.
    MisalignedBase {
        /// The base address.
        base: u64,
        /// The alignment required (`memory_alignment()`).
        alignment: usize,
    },
    /// The module placed at `base` would run past the end of the address space.
    AddressOverflow {
        /// The base address.
        base: u64,
        /// The module's size in bytes.
        size: usize,
    },
    /// A signed module file whose trailer is missing or inconsistent.
    SignedFile(&'static str),
}

/// Writes `section+0xOFFSET`.
struct Place<'a>(&'a str, u64);

impl fmt::Display for Place<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}+{:#x}", self.0, self.1)
    }
}

impl fmt::Display for ModuleError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ModuleError::*;
        match self {
            Truncated { what, end, length } => {
                write!(formatter, "truncated: {what} ends at byte {end:#x}, the file has {length} bytes")
            }
            NotElf => write!(formatter, "not an ELF file (bad magic)"),
            WrongClass(class) => write!(formatter, "ELF class {class} is not ELFCLASS64"),
            WrongEndianness(data) => write!(formatter, "ELF data encoding {data} is not little-endian"),
            WrongVersion(version) => write!(formatter, "ELF version {version} is not EV_CURRENT"),
            WrongMachine(machine) => write!(formatter, "ELF machine {machine} is not EM_PPC64 (21)"),
            WrongType(kind) => write!(formatter, "ELF type {kind} is not ET_REL (a relocatable object)"),
            WrongAbi(flags) => write!(formatter, "ELF flags {flags:#x}: not an ELFv2 object"),
            BadEntrySize { what, size, expected } => {
                write!(formatter, "{what} entries are {size} bytes, expected {expected}")
            }
            TooLarge { what, value, limit } => write!(formatter, "{what} {value} exceeds the limit {limit}"),
            SectionOutOfRange { index, count, context } => {
                write!(formatter, "section {index} out of range (the object has {count}) in {context}")
            }
            SectionOutOfFile { section, offset, size, length } => write!(
                formatter,
                "section {section} (file offset {offset:#x}, size {size:#x}) lies outside the {length}-byte file"
            ),
            SectionsOverlap { first, second } => write!(formatter, "{first} and {second} overlap in the file"),
            BadAlignment { section, alignment } => {
                write!(formatter, "section {section} has an unsupported alignment {alignment:#x}")
            }
            BadString { context } => write!(formatter, "bad name for {context}"),
            SymbolTable(reason) => write!(formatter, "symbol table: {reason}"),
            UnsupportedSection { section, reason } => write!(formatter, "section {section}: {reason}"),
            UnsupportedSymbol { symbol, reason } => write!(formatter, "symbol {symbol}: {reason}"),
            SymbolOutOfRange { index, count, section } => {
                write!(formatter, "symbol {index} out of range (the symbol table has {count}) in {section}")
            }
            BadRelocationSection { section, reason } => write!(formatter, "relocation section {section}: {reason}"),
            RelocationOutOfSection { kind, section, offset, size } => write!(
                formatter,
                "relocation {} at {} writes past the end of {section} (size {size:#x})",
                Kind(*kind),
                Place(section, *offset)
            ),
            UnsupportedRelocation { kind, section, offset } => {
                write!(formatter, "relocation {} at {} is not supported", Kind(*kind), Place(section, *offset))
            }
            UnsupportedTarget { kind, section, offset, symbol, reason } => write!(
                formatter,
                "relocation {} at {} against {symbol}: {reason}",
                Kind(*kind),
                Place(section, *offset)
            ),
            KernelTocOutOfReach { kind, section, offset, symbol, value } => write!(
                formatter,
                "relocation {} at {} against {symbol}: the module runs on the kernel's TOC (toc kernel) but its \
                 address is {value:#x} from the kernel's TOC pointer, beyond the +-2 GiB that TOC-relative \
                 code reaches; load the module nearer the kernel",
                Kind(*kind),
                Place(section, *offset)
            ),
            RelocationOverflow { kind, section, offset, symbol, value } => write!(
                formatter,
                "relocation {} at {} against {symbol}: value {value:#x} overflows its field",
                Kind(*kind),
                Place(section, *offset)
            ),
            MisalignedRelocation { kind, section, offset, symbol, value } => write!(
                formatter,
                "relocation {} at {} against {symbol}: value {value:#x} is not a multiple of 4",
                Kind(*kind),
                Place(section, *offset)
            ),
            NotABranch { section, offset, word } => write!(
                formatter,
                "R_PPC64_REL24 at {} patches {word:#010x}, which is not a b/bl instruction",
                Place(section, *offset)
            ),
            MissingNop { symbol, section, offset, found } => {
                write!(formatter, "call to {symbol} at {} is not followed by a nop", Place(section, *offset))?;
                match found {
                    Some(word) => write!(formatter, " (found {word:#010x})"),
                    None => write!(formatter, " (end of section)"),
                }
            }
            UndefinedSymbol(name) => write!(formatter, "undefined symbol {name}"),
            MissingDescription => {
                write!(formatter, "no .klp.patch or .klp.module section: neither a patch nor a target module")
            }
            TwoDescriptions => write!(formatter, "both a .klp.patch and a .klp.module section: a patch or a module?"),
            ModuleFunctionMissing(name) => {
                write!(formatter, "module description names {name}, which is not a function defined in the module")
            }
            Description { line: 0, reason } => write!(formatter, "patch description: {reason}"),
            Description { line, reason } => write!(formatter, "patch description line {line}: {reason}"),
            ReplacementNotFunction(name) => {
                write!(formatter, "replacement {name} is not a function defined in the module")
            }
            WrongBuild { patch, wanted, running: Some(running) } => {
                write!(formatter, "patch '{patch}' was built for kernel {wanted}; this kernel is {running}")
            }
            WrongBuild { patch, wanted, running: None } => {
                write!(formatter, "patch '{patch}' was built for kernel {wanted}; this kernel has no build id")
            }
            MemoryTooSmall { needed, given } => {
                write!(formatter, "module memory of {given} bytes is smaller than the {needed} needed")
            }
            MisalignedBase { base, alignment } => {
                write!(formatter, "module base {base:#x} is not a multiple of {alignment:#x}")
            }
            AddressOverflow { base, size } => {
                write!(formatter, "module of {size:#x} bytes at {base:#x} runs past the end of the address space")
            }
            SignedFile(reason) => write!(formatter, "signed module file: {reason}"),
        }
    }
}

impl core::error::Error for ModuleError {}
