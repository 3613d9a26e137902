//! Function-level diff of two ppc64le relocatable objects built from the same source before and after a change.
//!
//! Each function is in its own `.text.<symbol>` section (rustc's default
//! `function-sections` on ELF targets). Sections are matched by the defined
//! function symbol at offset 0, never by section index; relocations are
//! compared by (offset within the section, kind, target symbol name, addend),
//! never by where the target lies in the object, so that code moved by another
//! function added before it is not "changed". Before the bytes are compared,
//! every relocated field is zeroed in both copies (see [`mask_relocated`]); the
//! relocations themselves are then compared separately.
//!
//! Local symbols with compiler-generated hash suffixes (`_ZN…17h<hash>E`) are
//! compared by name as they are: the hash depends on the crate's metadata, not
//! on the function's code, so two builds with the same flags give the same
//! names. A rename that changes the hash (another crate version, other flags)
//! would show as one removed and one added function; matching those would need
//! the names compared without their hash, with a position for duplicates.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use object::elf;
use object::{Object, ObjectSection, ObjectSymbol, RelocationFlags, RelocationTarget, SectionKind, SymbolKind};

/// What changed between the two objects.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ObjectDiff {
    /// Functions in both objects whose code differs.
    pub changed: Vec<Changed>,
    /// Functions only in the patched object (mangled names).
    pub added: Vec<String>,
    /// Functions only in the base object (mangled names).
    pub removed: Vec<String>,
    /// Named statics in both objects whose initial bytes, size or relocations differ (mangled names).
    pub data_changed: Vec<String>,
    /// Named statics only in the patched object (mangled names).
    pub added_statics: Vec<String>,
}

/// A function whose code differs.
#[derive(Debug, PartialEq, Eq)]
pub struct Changed {
    /// Demangled, without the hash.
    pub name: String,
    /// As the symbol table has it.
    pub symbol: String,
    pub reasons: Vec<Reason>,
}

/// Why a function is changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The instruction bytes differ with every relocated field zeroed.
    Bytes,
    /// Some relocation's offset, kind, target symbol or addend differs.
    Relocations,
}

/// One relocation as compared: offset in its section, ELF type, target (see [`Build::reference`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Relocation {
    offset: u64,
    kind: u32,
    target: String,
}

/// A section's comparable contents: bytes with relocated fields zeroed, and its relocations.
#[derive(Debug, PartialEq, Eq)]
struct Contents {
    bytes: Vec<u8>,
    relocations: Vec<Relocation>,
}

/// How deep [`Build::reference`] follows constants that point at constants.
const DEPTH: usize = 8;

/// A `.toc` section's entries: offset -> (target, addend) of the ADDR64 there.
pub type TocEntries = BTreeMap<u64, (RelocationTarget, i64)>;

/// One parsed object with what comparing and extracting need: its functions by
/// symbol, its named statics by symbol, and its `.toc` entries by offset.
pub struct Build<'d> {
    pub file: object::File<'d>,
    /// Function symbol -> its section (one function per section).
    pub functions: BTreeMap<String, object::SectionIndex>,
    /// Named static (a data object symbol) -> its section.
    pub statics: BTreeMap<String, object::SectionIndex>,
    /// The `.toc` section and its entries: offset -> (target, addend) of the ADDR64 there.
    pub toc: Option<(object::SectionIndex, TocEntries)>,
}

impl<'d> Build<'d> {
    pub fn parse(data: &'d [u8]) -> Result<Build<'d>> {
        let file = object::File::parse(data).context("not an ELF object")?;
        if file.format() != object::BinaryFormat::Elf || file.kind() != object::ObjectKind::Relocatable {
            bail!("not an ELF relocatable object");
        }
        let mut functions = BTreeMap::new();
        let mut statics = BTreeMap::new();
        for section in file.sections() {
            let name = section.name().context("section name")?;
            if section.kind() == SectionKind::Text && section.size() > 0 {
                let symbol = function_symbol(&file, section.index()).unwrap_or_else(|| name.to_string());
                insert_unique(&mut functions, symbol, section.index());
            } else if is_data(&section)
                && let Some(symbol) = object_symbol(&file, section.index())
            {
                insert_unique(&mut statics, symbol, section.index());
            }
        }
        let mut toc = None;
        if let Some(section) = file.section_by_name(".toc") {
            let mut entries = BTreeMap::new();
            for (offset, relocation) in section.relocations() {
                entries.insert(offset, (relocation.target(), relocation.addend()));
            }
            toc = Some((section.index(), entries));
        }
        Ok(Build { file, functions, statics, toc })
    }

    /// The comparable contents of section `index`: bytes with relocated fields
    /// zeroed (line and column too in a `core::panic::Location`, see
    /// [`Build::is_location`]), relocations with their targets named.
    fn contents(&self, index: object::SectionIndex, depth: usize) -> Result<Contents> {
        let section = self.file.section_by_index(index)?;
        let mut bytes = section.uncompressed_data().context("section data")?.into_owned();
        if bytes.is_empty() {
            // .bss: no file bytes; its size is what there is to compare.
            bytes = section.size().to_le_bytes().to_vec();
        }
        let mut relocations = Vec::new();
        for (offset, relocation) in section.relocations() {
            let RelocationFlags::Elf { r_type } = relocation.flags() else {
                bail!("relocation at {offset:#x} is not an ELF relocation");
            };
            mask_relocated(&mut bytes, offset, r_type, relocation.size())
                .with_context(|| format!("relocation at {offset:#x} is outside the section"))?;
            let target = self.reference(relocation.target(), relocation.addend(), depth)?;
            relocations.push(Relocation { offset, kind: r_type, target });
        }
        relocations.sort();
        if self.is_location(index)? {
            bytes[16..24].fill(0);
        }
        Ok(Contents { bytes, relocations })
    }

    /// Whether section `index` is an anonymous `core::panic::Location`: 24
    /// bytes (file pointer, file length, line, column) whose one relocation
    /// points at a string ending in `.rs`. Its line and column are not
    /// compared, so that a function is not changed only because lines above
    /// it moved (kpatch's `__LINE__` rule); its copy in a patch has the new ones.
    fn is_location(&self, index: object::SectionIndex) -> Result<bool> {
        let section = self.file.section_by_index(index)?;
        if section.size() != 24 || !is_data(&section) || object_symbol(&self.file, index).is_some() {
            return Ok(false);
        }
        let relocations: Vec<_> = section.relocations().collect();
        let [(0, relocation)] = relocations.as_slice() else { return Ok(false) };
        let Some(file) = self.string_at(relocation.target(), relocation.addend())? else { return Ok(false) };
        Ok(file.ends_with(b".rs"))
    }

    /// The NUL-terminated string (without its terminator) at `target + addend` when that is in a string section.
    fn string_at(&self, target: RelocationTarget, addend: i64) -> Result<Option<Vec<u8>>> {
        let Some(index) = self.target_section(target)? else { return Ok(None) };
        Ok(match merged_constant(&self.file, index, addend)? {
            Some(Merged { bytes, within, string: true, unit }) => {
                Some(bytes[within as usize..bytes.len().saturating_sub(unit)].to_vec())
            }
            _ => None,
        })
    }

    /// The section a relocation target names when it is a section (symbol) rather than a named symbol.
    pub fn target_section(&self, target: RelocationTarget) -> Result<Option<object::SectionIndex>> {
        match target {
            RelocationTarget::Section(index) => Ok(Some(index)),
            RelocationTarget::Symbol(index) => {
                let symbol =
                    self.file.symbol_by_index(index).context("relocation names a symbol that does not exist")?;
                let unnamed = symbol.name().map_or(true, str::is_empty);
                Ok((symbol.kind() == SymbolKind::Section || unnamed).then(|| symbol.section_index()).flatten())
            }
            _ => Ok(None),
        }
    }

    /// A relocation target as compared: a named symbol by its name (+addend); a
    /// `.toc` entry by what it holds (`toc[...]`); a function's section by
    /// its function; a named static's section by the static; an anonymous
    /// constant by its contents (`const HASH`), so that constants renumbered by
    /// another change compare equal and a changed string literal does not.
    pub fn reference(&self, target: RelocationTarget, addend: i64, depth: usize) -> Result<String> {
        let section = match target {
            RelocationTarget::Absolute => return Ok(format!("absolute{addend:+}")),
            RelocationTarget::Symbol(index) => {
                let symbol =
                    self.file.symbol_by_index(index).context("relocation names a symbol that does not exist")?;
                let name = symbol.name().unwrap_or("");
                if symbol.kind() != SymbolKind::Section && !name.is_empty() {
                    return Ok(format!("{name}{addend:+}"));
                }
                symbol.section_index().context("an unnamed symbol without a section")?
            }
            RelocationTarget::Section(index) => index,
            _ => bail!("unknown relocation target"),
        };
        if let Some((toc, entries)) = &self.toc
            && *toc == section
        {
            let offset = u64::try_from(addend).context("a negative .toc offset")?;
            let &(inner, inner_addend) =
                entries.get(&offset).with_context(|| format!("no .toc entry at {offset:#x}"))?;
            return Ok(format!("toc[{}]", self.reference(inner, inner_addend, depth)?));
        }
        if let Some(symbol) = function_symbol(&self.file, section) {
            return Ok(format!("{symbol}{addend:+}"));
        }
        if let Some(symbol) = object_symbol(&self.file, section) {
            return Ok(format!("{symbol}{addend:+}"));
        }
        let data = self.file.section_by_index(section)?;
        let name = data.name().unwrap_or("");
        if depth == 0 {
            return Ok(format!("section {name}{addend:+}"));
        }
        // A mergeable section holds many constants: the one at `addend`.
        if let Some(string) = self.string_at(RelocationTarget::Section(section), addend)? {
            return Ok(format!("string {:016x}", digest(&string)));
        }
        if let Some(merged) = merged_constant(&self.file, section, addend)? {
            return Ok(format!("merged {:016x}+{}", digest(&merged.bytes), merged.within));
        }
        let contents = self.contents(section, depth - 1).with_context(|| format!("constant {name}"))?;
        let mut key = contents.bytes.clone();
        for relocation in &contents.relocations {
            key.extend_from_slice(format!("{relocation:?}").as_bytes());
        }
        Ok(format!("const {:016x}{addend:+}", digest(&key)))
    }
}

/// One constant of a mergeable section (`SHF_MERGE`).
pub struct Merged {
    /// Its bytes: `sh_entsize` of them, or a string with its terminator.
    pub bytes: Vec<u8>,
    /// Where in them the reference points (a pointer into or at the end of a string).
    pub within: u64,
    /// Whether the section holds strings (`SHF_STRINGS`), of `unit`-byte characters.
    pub string: bool,
    /// `sh_entsize`: the constant's size, or a string's character size.
    pub unit: usize,
}

/// The constant at `addend` of section `index` when that is a mergeable
/// section (`.rodata.cstN`, `.rodata.strN.A`), sized by its `sh_entsize`, not
/// its alignment (a `[u64; 4]` is 32 bytes aligned to 8, a byte table 16
/// aligned to 1); `None` for any other section.
pub fn merged_constant(file: &object::File, index: object::SectionIndex, addend: i64) -> Result<Option<Merged>> {
    use object::read::elf::SectionHeader as _;
    let object::File::Elf64(elf_file) = file else { bail!("not a 64-bit ELF object") };
    let section = elf_file.section_by_index(index)?;
    let header = section.elf_section_header();
    let flags = header.sh_flags(elf_file.endian());
    if flags & u64::from(elf::SHF_MERGE) == 0 {
        return Ok(None);
    }
    let name = section.name().unwrap_or("?");
    let unit = usize::try_from(header.sh_entsize(elf_file.endian()))?.max(1);
    let bytes = section.data()?;
    let start = usize::try_from(addend).ok().filter(|&start| start <= bytes.len());
    let start = start.with_context(|| format!("a constant outside {name}"))?;
    let string = flags & u64::from(elf::SHF_STRINGS) != 0;
    // The whole piece holding `addend`: a reference may point into a string
    // or a constant (a start/end pair), and both ends must reach one copy.
    let reference = start;
    let start = if string {
        let mut piece = reference - reference % unit;
        while piece >= unit && bytes[piece - unit..piece].iter().any(|&byte| byte != 0) {
            piece -= unit;
        }
        piece
    } else {
        reference - reference % unit
    };
    let end = if string {
        // Characters of `unit` bytes up to and with the first zero one.
        let mut end = start;
        loop {
            let character = bytes.get(end..end + unit).with_context(|| format!("an unterminated string in {name}"))?;
            end += unit;
            if character.iter().all(|&byte| byte == 0) {
                break end;
            }
        }
    } else {
        start
            .checked_add(unit)
            .filter(|&end| end <= bytes.len())
            .with_context(|| format!("a constant past the end of {name}"))?
    };
    Ok(Some(Merged { bytes: bytes[start..end].to_vec(), within: (reference - start) as u64, string, unit }))
}

/// A 64-bit FNV-1a digest (stable across runs; collisions only make two constants look equal).
fn digest(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| (hash ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3))
}

/// Compares `base` and `patched`, two ELF relocatable objects, function by function.
#[cfg(test)]
pub fn diff(base: &[u8], patched: &[u8]) -> Result<ObjectDiff> {
    let base = Build::parse(base).context("base object")?;
    let patched = Build::parse(patched).context("patched object")?;
    diff_builds(&base, &patched)
}

/// [`diff`] on parsed objects.
pub fn diff_builds(base: &Build, patched: &Build) -> Result<ObjectDiff> {
    let mut result = ObjectDiff::default();
    for (symbol, &old_index) in &base.functions {
        let Some(&new_index) = patched.functions.get(symbol) else {
            result.removed.push(symbol.clone());
            continue;
        };
        let old = base.contents(old_index, DEPTH).with_context(|| format!("base {symbol}"))?;
        let new = patched.contents(new_index, DEPTH).with_context(|| format!("patched {symbol}"))?;
        let mut reasons = Vec::new();
        if old.bytes != new.bytes {
            reasons.push(Reason::Bytes);
        }
        if old.relocations != new.relocations {
            reasons.push(Reason::Relocations);
        }
        if !reasons.is_empty() {
            let name = format!("{:#}", rustc_demangle::demangle(symbol));
            result.changed.push(Changed { name, symbol: symbol.clone(), reasons });
        }
    }
    result.added = patched.functions.keys().filter(|symbol| !base.functions.contains_key(*symbol)).cloned().collect();
    for (symbol, &old_index) in &base.statics {
        let Some(&new_index) = patched.statics.get(symbol) else { continue };
        if base.contents(old_index, DEPTH)? != patched.contents(new_index, DEPTH)? {
            result.data_changed.push(symbol.clone());
        }
    }
    result.added_statics =
        patched.statics.keys().filter(|symbol| !base.statics.contains_key(*symbol)).cloned().collect();
    Ok(result)
}

/// Whether `section` holds data (not code, not a table of the toolchain's).
fn is_data(section: &object::Section) -> bool {
    let name = section.name().unwrap_or("");
    matches!(
        section.kind(),
        SectionKind::Data
            | SectionKind::ReadOnlyData
            | SectionKind::ReadOnlyDataWithRel
            | SectionKind::ReadOnlyString
            | SectionKind::UninitializedData
            | SectionKind::Tls
            | SectionKind::UninitializedTls
    ) && name != ".eh_frame"
        && name != ".toc"
}

/// Keys repeated in one object (two local symbols of one name) get ` #2`, ` #3`, … in order.
fn insert_unique<T>(map: &mut BTreeMap<String, T>, key: String, value: T) {
    let mut unique = key.clone();
    let mut count = 1;
    while map.contains_key(&unique) {
        count += 1;
        unique = format!("{key} #{count}");
    }
    map.insert(unique, value);
}

/// The defined function symbol of section `index` (at offset 0, or 8 after a
/// large-code-model function's TOC offset word), a global one first.
pub fn function_symbol(file: &object::File, index: object::SectionIndex) -> Option<String> {
    defined_symbol(file, index, SymbolKind::Text)
}

/// The named data object defined at offset 0 of section `index` (a static).
fn object_symbol(file: &object::File, index: object::SectionIndex) -> Option<String> {
    defined_symbol(file, index, SymbolKind::Data)
}

fn defined_symbol(file: &object::File, index: object::SectionIndex, kind: SymbolKind) -> Option<String> {
    let mut candidates: Vec<_> = file
        .symbols()
        .filter(|symbol| {
            symbol.section_index() == Some(index)
                && symbol.kind() == kind
                && symbol.is_definition()
                && (symbol.address() == 0 || (kind == SymbolKind::Text && symbol.address() == 8))
        })
        .filter_map(|symbol| Some((!symbol.is_global(), symbol.address(), symbol.name().ok()?.to_string())))
        .filter(|(_, _, name)| !name.is_empty())
        .collect();
    candidates.sort();
    candidates.into_iter().next().map(|(_, _, name)| name)
}

/// Zeroes the field relocation `kind` writes at `offset` (the same in both copies, so only the rest is compared).
///
/// Exact fields for the kinds rustc emits on ppc64le (little-endian words):
/// REL24 the 24-bit LI field of `b`/`bl` (bits 2-25, leaving opcode and AA/LK),
/// REL14 the 14-bit BD field, the 16-bit `@ha`/`@l` kinds (TOC16_*, ADDR16_*,
/// REL16_*) the halfword at `offset`, data kinds their `size` bits. Any other
/// kind: the whole 4-byte word containing `offset`, aligned down to 4.
fn mask_relocated(bytes: &mut [u8], offset: u64, kind: u32, size: u8) -> Option<()> {
    let offset = usize::try_from(offset).ok()?;
    let word = |bytes: &mut [u8], start: usize, mask: u32| -> Option<()> {
        let field: &mut [u8; 4] = bytes.get_mut(start..start.checked_add(4)?)?.try_into().ok()?;
        *field = (u32::from_le_bytes(*field) & !mask).to_le_bytes();
        Some(())
    };
    let zero = |bytes: &mut [u8], start: usize, length: usize| -> Option<()> {
        bytes.get_mut(start..start.checked_add(length)?)?.fill(0);
        Some(())
    };
    match kind {
        elf::R_PPC64_NONE => Some(()),
        elf::R_PPC64_REL24 | elf::R_PPC64_ADDR24 => word(bytes, offset, 0x03ff_fffc),
        elf::R_PPC64_REL14 | elf::R_PPC64_ADDR14 => word(bytes, offset, 0x0000_fffc),
        elf::R_PPC64_ADDR16
        | elf::R_PPC64_ADDR16_LO
        | elf::R_PPC64_ADDR16_HI
        | elf::R_PPC64_ADDR16_HA
        | elf::R_PPC64_ADDR16_DS
        | elf::R_PPC64_ADDR16_LO_DS
        | elf::R_PPC64_TOC16
        | elf::R_PPC64_TOC16_LO
        | elf::R_PPC64_TOC16_HI
        | elf::R_PPC64_TOC16_HA
        | elf::R_PPC64_TOC16_DS
        | elf::R_PPC64_TOC16_LO_DS
        | elf::R_PPC64_REL16
        | elf::R_PPC64_REL16_LO
        | elf::R_PPC64_REL16_HI
        | elf::R_PPC64_REL16_HA => zero(bytes, offset, 2),
        elf::R_PPC64_ADDR64 | elf::R_PPC64_REL64 | elf::R_PPC64_ADDR32 | elf::R_PPC64_REL32 if size > 0 => {
            zero(bytes, offset, usize::from(size / 8))
        }
        _ => word(bytes, offset & !3, u32::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture_object::compile;

    fn diff_sources(test: &str, base: &str, patched: &str) -> ObjectDiff {
        diff(&compile(test, "base", base), &compile(test, "patched", patched)).unwrap()
    }

    fn changed_names(diff: &ObjectDiff) -> Vec<&str> {
        diff.changed.iter().map(|changed| changed.name.as_str()).collect()
    }

    const BASE: &str = r#"#![no_std]
#[inline(never)]
pub fn scale(x: u32) -> u32 { x.wrapping_mul(7).wrapping_add(1) }
#[inline(never)]
pub fn shift(x: u32) -> u32 { x.wrapping_mul(9).wrapping_add(2) }
#[unsafe(no_mangle)]
pub fn entry(x: u32) -> u32 { scale(x) ^ 3 }
#[inline(never)]
pub fn mix(x: u64, y: u64) -> u64 { x.rotate_left(13) ^ y.wrapping_mul(0x9e37_79b9) }
"#;

    #[test]
    fn object_diff_changed_constant_changes_only_that_function() {
        let patched = BASE.replace("wrapping_mul(9)", "wrapping_mul(11)");
        let diff = diff_sources("constant", BASE, &patched);
        assert_eq!(changed_names(&diff), ["fixture::shift"]);
        assert_eq!(diff.changed[0].reasons, [Reason::Bytes]);
        assert!(diff.changed[0].symbol.starts_with("_ZN7fixture5shift"), "{:?}", diff.changed[0]);
        assert!(diff.added.is_empty() && diff.removed.is_empty() && diff.data_changed.is_empty(), "{diff:?}");
    }

    #[test]
    fn object_diff_added_function_before_the_others_moves_nothing() {
        let patched = BASE.replace(
            "#![no_std]\n",
            "#![no_std]\n#[unsafe(no_mangle)]\npub fn fresh(x: u32) -> u32 { shift(x) + scale(x + 5) }\n",
        );
        let diff = diff_sources("added", BASE, &patched);
        assert_eq!(diff.added, ["fresh"]);
        assert!(diff.changed.is_empty() && diff.removed.is_empty() && diff.data_changed.is_empty(), "{diff:?}");
    }

    #[test]
    fn object_diff_inlined_callee_changes_its_caller() {
        let base = r#"#![no_std]
#[inline(always)]
fn hidden(x: u32) -> u32 { x.wrapping_mul(5) }
#[unsafe(no_mangle)]
#[inline]
pub fn small(x: u32) -> u32 { x.wrapping_add(17) }
#[unsafe(no_mangle)]
pub fn caller(x: u32) -> u32 { hidden(x) ^ small(x) }
#[unsafe(no_mangle)]
pub fn bystander(x: u32) -> u32 { x.wrapping_sub(3) }
"#;
        // `hidden` has no section of its own (always inlined): only its caller shows.
        let diff = diff_sources("inlined-hidden", base, &base.replace("wrapping_mul(5)", "wrapping_mul(6)"));
        assert_eq!(changed_names(&diff), ["caller"]);
        assert!(diff.changed[0].reasons.contains(&Reason::Bytes), "{diff:?}");
        // `small` has its own section and is inlined into `caller` too: both show, `bystander` does not.
        let diff = diff_sources("inlined-visible", base, &base.replace("wrapping_add(17)", "wrapping_add(19)"));
        assert_eq!(changed_names(&diff), ["caller", "small"]);
        assert!(diff.changed.iter().all(|changed| changed.reasons.contains(&Reason::Bytes)), "{diff:?}");
    }

    #[test]
    fn object_diff_changed_call_target_is_a_relocation_change() {
        let patched = BASE.replace("scale(x) ^ 3", "shift(x) ^ 3");
        let diff = diff_sources("call-target", BASE, &patched);
        assert_eq!(changed_names(&diff), ["entry"]);
        assert_eq!(diff.changed[0].reasons, [Reason::Relocations]);
        assert!(diff.added.is_empty() && diff.removed.is_empty(), "{diff:?}");
    }

    #[test]
    fn object_diff_changed_static_initialiser_is_a_data_change() {
        let base = "#![no_std]\npub static LIMITS: [u32; 3] = [4, 8, 15];\n#[unsafe(no_mangle)]\npub fn limit(i: usize) -> u32 { LIMITS[i % 3] }\n";
        let diff = diff_sources("static", base, &base.replace("[4, 8, 15]", "[4, 8, 16]"));
        assert_eq!(diff.data_changed.len(), 1, "{diff:?}");
        assert!(diff.data_changed[0].contains("LIMITS"), "{diff:?}");
        assert!(diff.changed.is_empty(), "{diff:?}");
    }

    const PANICKING: &str = r#"#![no_std]
#[inline(never)]
#[unsafe(no_mangle)]
pub fn first(items: &[u32], i: usize) -> u32 { items[i] + 1 }
#[inline(never)]
#[unsafe(no_mangle)]
pub fn label(x: u32) -> &'static str { if x > 3 { "big" } else { "small" } }
#[inline(never)]
#[unsafe(no_mangle)]
pub fn second(items: &[u32], i: usize) -> u32 { items[i] * 3 }
"#;

    #[test]
    fn object_diff_moved_lines_leave_panic_locations_unchanged() {
        // Lines inserted above both: their bounds-check panics name other lines, nothing else differs.
        let patched = PANICKING.replace("#![no_std]\n", "#![no_std]\n// one\n// two\n// three\n");
        let diff = diff_sources("moved-lines", PANICKING, &patched);
        assert_eq!(diff, ObjectDiff::default());
        // A real change to one of them still shows, only there.
        let diff = diff_sources("moved-lines-changed", PANICKING, &patched.replace("* 3", "* 5"));
        assert_eq!(changed_names(&diff), ["second"]);
    }

    #[test]
    fn object_diff_changed_string_literal_changes_its_user_only() {
        let diff = diff_sources("string", PANICKING, &PANICKING.replace("\"small\"", "\"little\""));
        assert_eq!(changed_names(&diff), ["label"]);
        // Same length, other bytes: the constant's contents, not its name, decide.
        let diff = diff_sources("string-same-length", PANICKING, &PANICKING.replace("\"big\"", "\"BIG\""));
        assert_eq!(changed_names(&diff), ["label"]);
        assert_eq!(diff.changed[0].reasons, [Reason::Relocations], "{diff:?}");
    }

    #[test]
    fn object_diff_merged_constants_are_compared_whole() {
        // rustc puts these in `.rodata.cst32` (aligned to 8) and `.rodata.cst16` (aligned to 1).
        let base = r#"#![no_std]
#[inline(never)]
#[unsafe(no_mangle)]
pub fn pick(i: usize) -> u64 { [11u64, 22, 33, 44][i & 3] }
#[inline(never)]
#[unsafe(no_mangle)]
pub fn digit(i: usize) -> u8 { b"0123456789abcdef"[i & 15] }
"#;
        let diff = diff_sources("cst-last", base, &base.replace("33, 44]", "33, 45]"));
        assert_eq!(changed_names(&diff), ["pick"], "the last of four doublewords: {diff:?}");
        let diff = diff_sources("cst-hex", base, &base.replace("abcdef", "ABCDEF"));
        assert_eq!(changed_names(&diff), ["digit"], "the end of a 16-byte table: {diff:?}");
    }

    #[test]
    fn object_diff_a_reference_into_a_merged_string_takes_the_whole_string() {
        use object::write::Object as Writer;
        let mut writer =
            Writer::new(object::BinaryFormat::Elf, object::Architecture::PowerPc64, object::Endianness::Little);
        let strings = writer.add_section(Vec::new(), b".rodata.str1.1".to_vec(), SectionKind::ReadOnlyString);
        writer.append_section_data(strings, b"abc\0defg\0", 1);
        let bytes = writer.write().unwrap();
        let file = object::File::parse(&*bytes).unwrap();
        let index = file.section_by_name(".rodata.str1.1").unwrap().index();
        let piece = |addend| merged_constant(&file, index, addend).unwrap().map(|merged| (merged.bytes, merged.within));
        assert_eq!(piece(4), Some((b"defg\0".to_vec(), 0)), "a string's start");
        assert_eq!(piece(6), Some((b"defg\0".to_vec(), 2)), "inside it: the same string, 2 bytes in");
        assert_eq!(piece(8), Some((b"defg\0".to_vec(), 4)), "at its terminator (an end pointer)");
        assert_eq!(piece(1), Some((b"abc\0".to_vec(), 1)));
        assert!(merged_constant(&file, index, 11).is_err(), "past the end");
    }

    #[test]
    fn object_diff_statics_are_compared_by_name_through_the_toc() {
        let base = "#![no_std]\nuse core::sync::atomic::{AtomicU32, Ordering};\npub static HITS: AtomicU32 = AtomicU32::new(0);\npub static MISSES: AtomicU32 = AtomicU32::new(0);\n#[unsafe(no_mangle)]\npub fn hit() -> u32 { HITS.fetch_add(1, Ordering::Relaxed) }\n";
        // Another static added before it: `hit` still reads HITS, unchanged.
        let added =
            base.replace("pub static HITS", "pub static EARLIER: AtomicU32 = AtomicU32::new(7);\npub static HITS");
        let diff = diff_sources("static-added", base, &added);
        assert!(diff.changed.is_empty(), "{diff:?}");
        assert_eq!(diff.added_statics.len(), 1, "{diff:?}");
        assert!(diff.added_statics[0].contains("EARLIER"), "{diff:?}");
        // Reading another static is a change of what it reads.
        let diff = diff_sources("static-switched", base, &base.replace("{ HITS.fetch_add", "{ MISSES.fetch_add"));
        assert_eq!(changed_names(&diff), ["hit"]);
        assert_eq!(diff.changed[0].reasons, [Reason::Relocations], "{diff:?}");
    }

    #[test]
    fn object_diff_identical_sources_give_an_empty_diff() {
        assert_eq!(diff_sources("identical", BASE, BASE), ObjectDiff::default());
    }

    #[test]
    fn object_diff_masks_only_the_relocated_field() {
        // `bl +0x100` and `bl +0x2000`: the same after masking; `b` (LK clear) is not.
        let masked = |word: u32, kind: u32| {
            let mut bytes = [0x60, 0, 0, 0].into_iter().chain(word.to_le_bytes()).collect::<Vec<u8>>();
            mask_relocated(&mut bytes, 4, kind, 0).unwrap();
            bytes
        };
        assert_eq!(masked(0x4800_0101, elf::R_PPC64_REL24), masked(0x4800_2001, elf::R_PPC64_REL24));
        assert_ne!(masked(0x4800_0101, elf::R_PPC64_REL24), masked(0x4800_0100, elf::R_PPC64_REL24));
        assert_eq!(masked(0x4800_0101, elf::R_PPC64_REL24)[..4], [0x60, 0, 0, 0]);
        // `addis r3,r2,1` and `addis r3,r2,2` (TOC16_HA): the same; `addi` is not.
        assert_eq!(masked(0x3c62_0001, elf::R_PPC64_TOC16_HA), masked(0x3c62_0002, elf::R_PPC64_TOC16_HA));
        assert_ne!(masked(0x3c62_0001, elf::R_PPC64_TOC16_HA), masked(0x3862_0001, elf::R_PPC64_TOC16_HA));
        // A relocation past the section's end is an error, not a panic.
        assert!(mask_relocated(&mut [0; 4], 2, elf::R_PPC64_REL24, 0).is_none());
    }

    #[test]
    fn object_diff_garbage_is_an_error() {
        let object = compile("garbage", "base", BASE);
        assert!(diff(b"not an object at all", &object).is_err());
        assert!(diff(&object, &[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0]).is_err());
        let mut truncated = object.clone();
        truncated.truncate(object.len() / 2);
        assert!(diff(&object, &truncated).is_err());
        let mut scrambled = object.clone();
        for byte in scrambled.iter_mut().skip(64).step_by(7) {
            *byte ^= 0x5a;
        }
        let _ = diff(&object, &scrambled); // An error or a diff, never a panic.
    }
}
