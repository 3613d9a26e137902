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
    /// Data sections (`.rodata.*`, `.data.*`, `.bss.*`, …) in both objects whose bytes or relocations differ.
    pub data_changed: Vec<String>,
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

/// One relocation as compared: offset in its section, ELF type, target name, addend.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Relocation {
    offset: u64,
    kind: u32,
    target: String,
    addend: i64,
}

/// A section's comparable contents: bytes with relocated fields zeroed, and its relocations.
#[derive(Debug, PartialEq, Eq)]
struct Contents {
    bytes: Vec<u8>,
    relocations: Vec<Relocation>,
}

/// The functions (by symbol) and data sections (by name) of one object.
struct Parsed {
    functions: BTreeMap<String, Contents>,
    data: BTreeMap<String, Contents>,
}

/// Compares `base` and `patched`, two ELF relocatable objects, function by function.
pub fn diff(base: &[u8], patched: &[u8]) -> Result<ObjectDiff> {
    let base = parse(base).context("base object")?;
    let patched = parse(patched).context("patched object")?;
    let mut result = ObjectDiff::default();
    for (symbol, old) in &base.functions {
        let Some(new) = patched.functions.get(symbol) else {
            result.removed.push(symbol.clone());
            continue;
        };
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
    result.data_changed = base
        .data
        .iter()
        .filter(|(name, old)| patched.data.get(*name).is_some_and(|new| new != *old))
        .map(|(name, _)| name.clone())
        .collect();
    Ok(result)
}

fn parse(data: &[u8]) -> Result<Parsed> {
    let file = object::File::parse(data).context("not an ELF object")?;
    if file.format() != object::BinaryFormat::Elf || file.kind() != object::ObjectKind::Relocatable {
        bail!("not an ELF relocatable object");
    }
    let mut parsed = Parsed { functions: BTreeMap::new(), data: BTreeMap::new() };
    for section in file.sections() {
        let name = section.name().context("section name")?.to_string();
        let is_function = section.kind() == SectionKind::Text;
        let is_data = matches!(
            section.kind(),
            SectionKind::Data
                | SectionKind::ReadOnlyData
                | SectionKind::ReadOnlyString
                | SectionKind::UninitializedData
                | SectionKind::Tls
                | SectionKind::UninitializedTls
        ) && name != ".eh_frame"
            && name != ".toc";
        if !is_function && !is_data {
            continue;
        }
        let contents = contents(&file, &section, is_function).with_context(|| format!("section {name}"))?;
        if is_function {
            if contents.bytes.is_empty() {
                continue;
            }
            let symbol = function_symbol(&file, section.index()).unwrap_or_else(|| name.clone());
            insert_unique(&mut parsed.functions, symbol, contents);
        } else {
            insert_unique(&mut parsed.data, name, contents);
        }
    }
    Ok(parsed)
}

/// Keys repeated in one object (two local functions or sections of one name) get ` #2`, ` #3`, … in order.
fn insert_unique(map: &mut BTreeMap<String, Contents>, key: String, contents: Contents) {
    let mut unique = key.clone();
    let mut count = 1;
    while map.contains_key(&unique) {
        count += 1;
        unique = format!("{key} #{count}");
    }
    map.insert(unique, contents);
}

/// The defined function symbol at offset 0 of section `index`, a global one first.
fn function_symbol(file: &object::File, index: object::SectionIndex) -> Option<String> {
    let mut candidates: Vec<_> = file
        .symbols()
        .filter(|symbol| {
            symbol.section_index() == Some(index)
                && symbol.kind() == SymbolKind::Text
                && symbol.is_definition()
                && symbol.address() == 0
        })
        .filter_map(|symbol| Some((!symbol.is_global(), symbol.name().ok()?.to_string())))
        .filter(|(_, name)| !name.is_empty())
        .collect();
    candidates.sort();
    candidates.into_iter().next().map(|(_, name)| name)
}

fn contents(file: &object::File, section: &object::Section, is_function: bool) -> Result<Contents> {
    let mut bytes = section.uncompressed_data().context("section data")?.into_owned();
    if bytes.is_empty() && !is_function {
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
        let target = target_name(file, relocation.target())?;
        relocations.push(Relocation { offset, kind: r_type, target, addend: relocation.addend() });
    }
    relocations.sort();
    Ok(Contents { bytes, relocations })
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

/// A relocation target by name: the symbol's name, or `section NAME` for a section symbol.
fn target_name(file: &object::File, target: RelocationTarget) -> Result<String> {
    let section_name = |index| -> Result<String> {
        Ok(format!(
            "section {}",
            file.section_by_index(index).context("target section")?.name().context("section name")?
        ))
    };
    match target {
        RelocationTarget::Symbol(index) => {
            let symbol = file.symbol_by_index(index).context("relocation names a symbol that does not exist")?;
            if symbol.kind() == SymbolKind::Section {
                section_name(symbol.section_index().context("section symbol without a section")?)
            } else {
                Ok(symbol.name().context("symbol name")?.to_string())
            }
        }
        RelocationTarget::Section(index) => section_name(index),
        RelocationTarget::Absolute => Ok("absolute".to_string()),
        _ => bail!("unknown relocation target"),
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
