//! Compares the DWARF of the base and patched kernel objects: type layouts, compiler-changed ABIs, inlining, declaration lines.
//!
//! Both inputs are relocatable objects (`--emit=obj` with debug info): their
//! `.debug_*` sections are read with their relocations applied (see
//! [`crate::dwarf::Relocations`]), so names, line tables and references
//! resolve as in a linked file. Every function code address there is 0 (each
//! function is at the start of its own section): functions are known by
//! their linkage name, never by address.
//!
//! Rust's DWARF nests a type in `DW_TAG_namespace` entries, one per path
//! component (`kernel`, `demo`), and its `DW_AT_name` is the last component
//! (`Record`, `Option<u32>`); an enum with data is a `DW_TAG_structure_type`
//! holding a `DW_TAG_variant_part` (the discriminant `DW_TAG_member`, then one
//! `DW_TAG_variant` per variant with its `DW_AT_discr_value` and a member
//! typed by the variant's own structure, nested in the enum's entry); a
//! field-less enum is a `DW_TAG_enumeration_type` of `DW_TAG_enumerator`s.

use std::collections::{BTreeMap, BTreeSet};

use addr2line::gimli;
use anyhow::{Context, Result};

use crate::dwarf::{Place, Reader, Units};
use crate::symbols::demangle;

/// The path prefix of the types [`type_layouts`] reads: the kernel crate's.
const KERNEL: &str = "kernel::";

/// A field of a struct or union, a variant of an enum, or the enum's discriminant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The field's name (`__0` for a tuple field), the variant's, or `(discriminant)`.
    pub name: String,
    /// Byte offset in the type (`None` for a field-less enum's variants).
    pub offset: Option<u64>,
    /// The member's type, with its path for the types of a crate (`kernel::demo::Shape::Circle`).
    pub type_name: String,
    /// The discriminant value of an enum's variant.
    pub discriminant: Option<i128>,
}

/// A struct's, union's or enum's layout as the compiler laid it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeLayout {
    /// `DW_AT_byte_size`.
    pub size: Option<u64>,
    /// `DW_AT_alignment`, when the DWARF gives it.
    pub alignment: Option<u64>,
    /// In DWARF order (a Rust struct's order in memory need not be its source order).
    pub members: Vec<Member>,
}

/// A type in both objects whose layout differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutChange {
    /// Its path (`kernel::demo::Record`).
    pub name: String,
    /// One line: `kernel::demo::Record: 8 -> 16 bytes; member `extra` added at 8`.
    pub description: String,
}

/// Every struct, union and enum (and each enum's variants) of the kernel crate in `object`, by path.
///
/// A type described in several units (one per codegen unit) is taken from the first.
pub fn type_layouts(object: &[u8]) -> Result<BTreeMap<String, TypeLayout>> {
    let file = object::File::parse(object).context("not an object file")?;
    let units = Units::load(&file).context("reading the DWARF")?;
    // Paths of every named type, so that member types read with their path.
    let mut paths: BTreeMap<Place, String> = BTreeMap::new();
    // The kernel's types, each with the place of each member's type, named once all paths are known.
    let mut found: Vec<(String, TypeLayout, Vec<Option<Place>>)> = Vec::new();
    // Index in `found` of each type entry being read.
    let mut open: BTreeMap<Place, usize> = BTreeMap::new();
    walk(&units, |unit, entry, scopes| {
        let place = (unit, entry.offset());
        match entry.tag() {
            gimli::DW_TAG_structure_type | gimli::DW_TAG_union_type | gimli::DW_TAG_enumeration_type => {
                let Some(path) = scopes.last().and_then(|scope| scope.path.clone()) else { return Ok(()) };
                paths.insert(place, path.clone());
                if path.starts_with(KERNEL) && entry.attr_value(gimli::DW_AT_declaration)?.is_none() {
                    let constant = |name| -> Result<Option<u64>> {
                        Ok(entry.attr_value(name)?.and_then(|value| value.udata_value()))
                    };
                    open.insert(place, found.len());
                    let size = constant(gimli::DW_AT_byte_size)?;
                    let alignment = constant(gimli::DW_AT_alignment)?;
                    found.push((path, TypeLayout { size, alignment, members: Vec::new() }, Vec::new()));
                }
            }
            gimli::DW_TAG_member | gimli::DW_TAG_enumerator => {
                // The owner is the nearest enclosing type; a variant's member carries the variant's value.
                let mut discriminant = None;
                let mut owner = None;
                for scope in scopes.iter().rev().skip(1) {
                    match scope.tag {
                        gimli::DW_TAG_variant => discriminant = scope.discriminant,
                        gimli::DW_TAG_variant_part => {}
                        gimli::DW_TAG_structure_type | gimli::DW_TAG_union_type | gimli::DW_TAG_enumeration_type => {
                            owner = Some(scope.place);
                            break;
                        }
                        _ => break,
                    }
                }
                let Some(index) = owner.and_then(|owner| open.get(&owner)) else { return Ok(()) };
                let name = entry.attr_value(gimli::DW_AT_name)?.and_then(|value| units.string(unit, value));
                let offset = entry.attr_value(gimli::DW_AT_data_member_location)?.and_then(|value| value.udata_value());
                if entry.tag() == gimli::DW_TAG_enumerator {
                    discriminant = entry.attr_value(gimli::DW_AT_const_value)?.and_then(|value| number(&value));
                }
                let kind = entry.attr_value(gimli::DW_AT_type)?.and_then(|value| units.reference(unit, value));
                let name = name.unwrap_or_else(|| "(discriminant)".into());
                let (_, layout, types) = &mut found[*index];
                layout.members.push(Member { name, offset, type_name: String::new(), discriminant });
                types.push(kind);
            }
            _ => {}
        }
        Ok(())
    })?;
    let mut layouts = BTreeMap::new();
    for (path, mut layout, types) in found {
        for (member, kind) in layout.members.iter_mut().zip(types) {
            member.type_name = match kind {
                Some(kind) => match paths.get(&kind) {
                    Some(path) => path.clone(),
                    None => units.type_name(kind)?,
                },
                None => String::new(),
            };
        }
        layouts.entry(path).or_insert(layout);
    }
    Ok(layouts)
}

/// The types of the kernel crate in both objects whose layout differs, each described in one line.
///
/// Types whose path has a compiler-generated component (`{async_fn_env#0}`,
/// `{impl#3}`) are left out: their functions change with them. A closure's
/// captures (`{closure_env#0}`) are reported: `patch from-diff` decides
/// whether the closure may outlive its caller.
pub fn layout_changes(base: &[u8], patched: &[u8]) -> Result<Vec<LayoutChange>> {
    let base = type_layouts(base).context("the base object")?;
    let patched = type_layouts(patched).context("the patched object")?;
    let mut changes = Vec::new();
    for (name, before) in &base {
        let Some(after) = patched.get(name) else { continue };
        // Compiler-made types other than closures' captures: their functions change with them.
        if name.contains('{') && !name.contains("{closure_env#") {
            continue;
        }
        let differences = describe(before, after);
        // Nothing differs but the members' DWARF order: nothing a patch would notice.
        if !differences.is_empty() {
            changes
                .push(LayoutChange { name: name.clone(), description: format!("{name}: {}", differences.join("; ")) });
        }
    }
    Ok(changes)
}

/// What differs between two layouts of one type, one phrase each.
fn describe(before: &TypeLayout, after: &TypeLayout) -> Vec<String> {
    let show = |value: Option<u64>| value.map_or("?".to_string(), |value| value.to_string());
    let mut differences = Vec::new();
    if before.size != after.size {
        differences.push(format!("{} -> {} bytes", show(before.size), show(after.size)));
    }
    if before.alignment != after.alignment {
        differences.push(format!("alignment {} -> {}", show(before.alignment), show(after.alignment)));
    }
    let find = |layout: &TypeLayout, name: &str| layout.members.iter().find(|member| member.name == name).cloned();
    for old in &before.members {
        let name = &old.name;
        let Some(new) = find(after, name) else {
            differences.push(format!("member `{name}` removed (was at {})", show(old.offset)));
            continue;
        };
        if old.offset != new.offset {
            differences.push(format!("member `{name}` moved {} -> {}", show(old.offset), show(new.offset)));
        }
        if old.type_name != new.type_name {
            differences.push(format!("member `{name}` type {} -> {}", old.type_name, new.type_name));
        }
        if old.discriminant != new.discriminant {
            let value = |value: Option<i128>| value.map_or("none".to_string(), |value| value.to_string());
            differences.push(format!(
                "variant `{name}` discriminant {} -> {}",
                value(old.discriminant),
                value(new.discriminant)
            ));
        }
    }
    for new in &after.members {
        if find(before, &new.name).is_none() {
            differences.push(format!("member `{}` added at {}", new.name, show(new.offset)));
        }
    }
    differences
}

/// The linkage names of the functions whose calling convention the compiler
/// changed (`DW_AT_calling_convention` = `DW_CC_nocall`).
///
/// LLVM writes `DW_CC_nocall` on an internal function when an
/// interprocedural pass (dead argument elimination, constant propagation
/// into parameters, an unused result) rewrote its signature: callers no
/// longer pass what the source says, so a replacement compiled from source
/// would read arguments that are not there.
pub fn abi_changed(object: &[u8]) -> Result<BTreeSet<String>> {
    let file = object::File::parse(object).context("not an object file")?;
    let units = Units::load(&file).context("reading the DWARF")?;
    let mut names = BTreeSet::new();
    walk(&units, |unit, entry, _| {
        if entry.tag() != gimli::DW_TAG_subprogram {
            return Ok(());
        }
        // On the out-of-line entry, or on the abstract one of a function also inlined
        // elsewhere (its out-of-line entry then has a `DW_AT_abstract_origin`): both are visited.
        let convention = entry.attr_value(gimli::DW_AT_calling_convention)?;
        if let Some(gimli::AttributeValue::CallingConvention(gimli::DW_CC_nocall)) = convention {
            names.extend(mangled_name(&units, (unit, entry.offset()))?);
        }
        Ok(())
    })?;
    Ok(names)
}

/// For each out-of-line function (by linkage name), the demangled names of
/// the functions inlined into it, at any depth (a copy inlined into an
/// inlined copy is in the same machine code). A function with nothing inlined
/// has an empty set.
pub fn inlined_callees(object: &[u8]) -> Result<BTreeMap<String, BTreeSet<String>>> {
    let file = object::File::parse(object).context("not an object file")?;
    let units = Units::load(&file).context("reading the DWARF")?;
    let mut callees: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    walk(&units, |unit, entry, scopes| {
        match entry.tag() {
            gimli::DW_TAG_subprogram if scopes.last().is_some_and(|scope| scope.holds_code) => {
                if let Some(name) = mangled_name(&units, (unit, entry.offset()))? {
                    callees.entry(name).or_default();
                }
            }
            gimli::DW_TAG_inlined_subroutine => {
                let holder =
                    scopes.iter().rev().find(|scope| scope.tag == gimli::DW_TAG_subprogram && scope.holds_code);
                let Some(holder) = holder else { return Ok(()) };
                let Some(holder) = mangled_name(&units, holder.place)? else { return Ok(()) };
                let origin =
                    entry.attr_value(gimli::DW_AT_abstract_origin)?.and_then(|value| units.reference(unit, value));
                let Some(origin) = origin else { return Ok(()) };
                if let Some(callee) = mangled_name(&units, origin)? {
                    callees.entry(holder).or_default().insert(demangle(&callee));
                }
            }
            _ => {}
        }
        Ok(())
    })?;
    Ok(callees)
}

/// Every function's (by linkage name) declaration: source file path and line.
///
/// Functions of every crate whose DWARF is in the object are listed, those
/// only inlined included (their abstract entry has the declaration). A
/// relative path is joined to the unit's compilation directory.
pub fn decl_lines(object: &[u8]) -> Result<BTreeMap<String, (String, u64)>> {
    let file = object::File::parse(object).context("not an object file")?;
    let units = Units::load(&file).context("reading the DWARF")?;
    let mut lines = BTreeMap::new();
    walk(&units, |unit, entry, _| {
        if entry.tag() != gimli::DW_TAG_subprogram {
            return Ok(());
        }
        let place = (unit, entry.offset());
        let Some(name) = mangled_name(&units, place)? else { return Ok(()) };
        let line = units.inherited(place, gimli::DW_AT_decl_line)?.and_then(|(_, value)| value.udata_value());
        let Some(line) = line else { return Ok(()) };
        let Some((file_unit, gimli::AttributeValue::FileIndex(index))) =
            units.inherited(place, gimli::DW_AT_decl_file)?
        else {
            return Ok(());
        };
        if let Some(path) = file_path(&units, file_unit, index) {
            lines.entry(name).or_insert((path, line));
        }
        Ok(())
    })?;
    Ok(lines)
}

/// The path of file `index` of unit `unit`'s line table.
fn file_path(units: &Units, unit: usize, index: u64) -> Option<String> {
    let header = units.units[unit].line_program.as_ref()?.header();
    let file = header.file(index)?;
    let name = units.string(unit, file.path_name())?;
    let directory = file.directory(header).and_then(|directory| units.string(unit, directory));
    let compilation = units.units[unit].comp_dir.as_ref().and_then(|dir| gimli::Reader::to_string_lossy(dir).ok());
    let mut path = std::path::PathBuf::new();
    for part in [compilation.map(|dir| dir.into_owned()), directory].into_iter().flatten() {
        path.push(part); // An absolute part replaces what is before it.
    }
    path.push(name);
    Some(path.to_string_lossy().into_owned())
}

/// The symbol name of the function entry at `place`: its linkage name, or
/// the plain name of an external function without one (`#[no_mangle]`).
fn mangled_name(units: &Units, place: Place) -> Result<Option<String>> {
    if let Some((unit, value)) = units.inherited(place, gimli::DW_AT_linkage_name)? {
        return Ok(units.string(unit, value));
    }
    if units.inherited(place, gimli::DW_AT_external)?.is_none() {
        return Ok(None);
    }
    Ok(units.inherited(place, gimli::DW_AT_name)?.and_then(|(unit, value)| units.string(unit, value)))
}

/// A constant as a signed number, whatever its form (`DW_FORM_data1`, `udata`, `sdata`).
fn number(value: &gimli::AttributeValue<Reader>) -> Option<i128> {
    value.udata_value().map(i128::from).or_else(|| value.sdata_value().map(i128::from))
}

/// An entry enclosing the one being visited.
struct Scope {
    place: Place,
    depth: isize,
    tag: gimli::DwTag,
    /// The path of a namespace or type (`kernel::demo::Shape`), `None` elsewhere.
    path: Option<String>,
    /// A subprogram with code of its own (`DW_AT_low_pc` or `DW_AT_ranges`).
    holds_code: bool,
    /// A variant's `DW_AT_discr_value`.
    discriminant: Option<i128>,
}

/// Visits every entry of every unit in order, with the entries enclosing it (itself last).
fn walk<'a>(
    units: &Units<'a>,
    mut visit: impl FnMut(usize, &gimli::DebuggingInformationEntry<Reader<'a>>, &[Scope]) -> Result<()>,
) -> Result<()> {
    for (index, unit) in units.units.iter().enumerate() {
        let mut entries = unit.entries();
        let mut scopes: Vec<Scope> = Vec::new();
        let mut depth = 0;
        while let Some((delta, entry)) = entries.next_dfs()? {
            depth += delta;
            while scopes.last().is_some_and(|scope| scope.depth >= depth) {
                scopes.pop();
            }
            let tag = entry.tag();
            let named_scope = matches!(
                tag,
                gimli::DW_TAG_namespace
                    | gimli::DW_TAG_structure_type
                    | gimli::DW_TAG_union_type
                    | gimli::DW_TAG_enumeration_type
            );
            let path = match entry.attr_value(gimli::DW_AT_name)?.and_then(|value| units.string(index, value)) {
                Some(name) if named_scope => Some(match scopes.last().and_then(|scope| scope.path.as_ref()) {
                    Some(outer) => format!("{outer}::{name}"),
                    None => name,
                }),
                _ => None,
            };
            let holds_code = tag == gimli::DW_TAG_subprogram
                && (entry.attr_value(gimli::DW_AT_low_pc)?.is_some()
                    || entry.attr_value(gimli::DW_AT_ranges)?.is_some());
            let discriminant = entry.attr_value(gimli::DW_AT_discr_value)?.and_then(|value| number(&value));
            scopes.push(Scope { place: (index, entry.offset()), depth, tag, path, holds_code, discriminant });
            visit(index, entry, &scopes).with_context(|| format!("the DWARF entry at {:#x}", entry.offset().0))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture_object::compile_with;

    /// The kernel's release profile: optimised, with debug info.
    fn compile(test: &str, version: &str, source: &str) -> Vec<u8> {
        compile_with(test, version, source, "kernel", &["-C", "opt-level=3", "-C", "debuginfo=2"])
    }

    const BASE: &str = r#"#![no_std]
pub mod demo {
    pub struct Record { pub id: u32, pub flags: u16 }
    pub struct Steady { pub count: u64 }
    pub enum Shape { Empty, Circle(u32), Pair { a: u64, b: u8 } }
    #[derive(Clone, Copy)]
    pub enum Level { Low = 1, High = 7 }
    #[inline(never)]
    fn dead_argument(used: u64, _unused: u64) -> u64 { used.wrapping_mul(31) }
    #[inline(never)]
    fn both_used(a: u64, b: u64) -> u64 { a.wrapping_mul(b) ^ 5 }
    #[inline(always)]
    fn helper(x: u32) -> u32 { x.wrapping_mul(5) }
    #[unsafe(no_mangle)]
    pub fn entry(x: u64, y: u64, r: &Record, s: &Steady, range: core::ops::Range<u64>) -> u64 {
        dead_argument(x, y) + dead_argument(y, x ^ 3) + both_used(x, y) + both_used(y, x) + helper(r.id) as u64 + s.count + range.start
    }
    #[unsafe(no_mangle)]
    pub fn apply(x: u64) -> u64 { let k = x + 1; let f = |y: u64| y.wrapping_mul(k); f(x) }
    #[unsafe(no_mangle)]
    pub fn shape(s: &Shape, l: Level) -> u64 {
        (match s { Shape::Empty => 0, Shape::Circle(r) => *r as u64, Shape::Pair { a, b } => a + *b as u64 }) + l as u64
    }
}
"#;

    /// The one symbol whose name contains `part`.
    fn symbol<'a>(names: impl IntoIterator<Item = &'a String>, part: &str) -> &'a str {
        let found: Vec<&String> = names.into_iter().filter(|name| name.contains(part)).collect();
        assert_eq!(found.len(), 1, "one symbol with {part}: {found:?}");
        found[0]
    }

    #[test]
    fn diff_dwarf_reads_type_layouts() {
        let layouts = type_layouts(&compile("ddwarf-layouts", "base", BASE)).unwrap();
        let record = &layouts["kernel::demo::Record"];
        assert_eq!((record.size, record.alignment), (Some(8), Some(4)));
        let members: Vec<(&str, Option<u64>, &str)> =
            record.members.iter().map(|m| (m.name.as_str(), m.offset, m.type_name.as_str())).collect();
        assert_eq!(members, [("id", Some(0), "u32"), ("flags", Some(4), "u16")]);
        let shape = &layouts["kernel::demo::Shape"];
        let variants: Vec<(&str, &str, Option<i128>)> =
            shape.members.iter().map(|m| (m.name.as_str(), m.type_name.as_str(), m.discriminant)).collect();
        assert_eq!(
            variants,
            [
                ("(discriminant)", "u8", None),
                ("Empty", "kernel::demo::Shape::Empty", Some(0)),
                ("Circle", "kernel::demo::Shape::Circle", Some(1)),
                ("Pair", "kernel::demo::Shape::Pair", Some(2)),
            ]
        );
        assert_eq!(layouts["kernel::demo::Shape::Pair"].members[0].offset, Some(8), "a variant's own layout");
        let level: Vec<(&str, Option<i128>)> =
            layouts["kernel::demo::Level"].members.iter().map(|m| (m.name.as_str(), m.discriminant)).collect();
        assert_eq!(level, [("Low", Some(1)), ("High", Some(7))]);
        // `core::ops::range::Range<u64>` (a parameter's type) is another crate's.
        assert!(layouts.keys().all(|name| name.starts_with("kernel::")), "{:?}", layouts.keys());
    }

    #[test]
    fn diff_dwarf_reports_a_changed_layout_only() {
        let base = compile("ddwarf-changes", "base", BASE);
        let patched = BASE
            .replace("pub flags: u16 }", "pub extra: u64 }")
            .replace("Circle(u32)", "Circle(u16)")
            .replace("Low = 1", "Low = 2")
            .replace("y.wrapping_mul(k)", "y.wrapping_mul(k) ^ x");
        let patched = compile("ddwarf-changes", "patched", &patched);
        let changes = layout_changes(&base, &patched).unwrap();
        let lines: Vec<&str> = changes.iter().map(|change| change.description.as_str()).collect();
        assert_eq!(
            lines,
            [
                "kernel::demo::Level: variant `Low` discriminant 1 -> 2",
                "kernel::demo::Record: 8 -> 16 bytes; alignment 4 -> 8; member `id` moved 0 -> 8; \
                 member `flags` removed (was at 4); member `extra` added at 0",
                "kernel::demo::Shape::Circle: member `__0` moved 4 -> 2; member `__0` type u32 -> u16",
                // Reported; `patch from-diff` refuses it only for a closure that may outlive its caller.
                "kernel::demo::apply::{closure_env#0}: 8 -> 16 bytes; member `_ref__x` added at 8",
            ]
        );
        assert!(layout_changes(&base, &base).unwrap().is_empty());
        // The closure captured one more variable: its environment grew.
        let environment = |object| type_layouts(object).unwrap()["kernel::demo::apply::{closure_env#0}"].size;
        assert_eq!((environment(&base), environment(&patched)), (Some(8), Some(16)));
    }

    #[test]
    fn diff_dwarf_finds_compiler_changed_abis() {
        let object = compile("ddwarf-abi", "base", BASE);
        let changed = abi_changed(&object).unwrap();
        assert_eq!(changed.len(), 1, "{changed:?}");
        assert!(symbol(&changed, "dead_argument").starts_with("_ZN6kernel4demo13dead_argument17h"), "{changed:?}");
        // Using the argument keeps the standard convention.
        let used = BASE.replace("used.wrapping_mul(31)", "used.wrapping_mul(31) ^ _unused");
        assert_eq!(abi_changed(&compile("ddwarf-abi", "used", &used)).unwrap(), BTreeSet::new());
    }

    #[test]
    fn diff_dwarf_finds_inlined_callees_and_declaration_lines() {
        let object = compile("ddwarf-inlined", "base", BASE);
        let callees = inlined_callees(&object).unwrap();
        assert!(callees["entry"].contains("kernel::demo::helper"), "{callees:?}");
        assert!(!callees["entry"].iter().any(|name| name.contains("both_used")), "kept out of line: {callees:?}");
        assert!(!callees["shape"].contains("kernel::demo::helper"), "{callees:?}");
        assert!(callees.contains_key(symbol(callees.keys(), "both_used")), "out of line, with its own entry");
        assert!(!callees.keys().any(|name| name.contains("helper")), "helper has no code of its own: {callees:?}");
        let lines = decl_lines(&object).unwrap();
        let line_of = |part: &str| {
            let (path, line) = &lines[symbol(lines.keys(), part)];
            assert!(path.ends_with("fixture/lib.rs"), "{path}");
            *line
        };
        let source_line = |text: &str| BASE.lines().position(|line| line.contains(text)).unwrap() as u64 + 1;
        assert_eq!(line_of("dead_argument"), source_line("fn dead_argument"));
        assert_eq!(line_of("helper"), source_line("fn helper"), "an inlined-only function has its line too");
        assert_eq!(lines["shape"].1, source_line("pub fn shape"));
    }

    #[test]
    fn diff_dwarf_garbage_is_an_error() {
        assert!(type_layouts(b"not an object at all").is_err());
        assert!(abi_changed(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0]).is_err());
        let object = compile("ddwarf-garbage", "base", BASE);
        let mut scrambled = object.clone();
        for byte in scrambled.iter_mut().skip(64).step_by(5) {
            *byte ^= 0x5a;
        }
        // An error or a result, never a panic.
        let _ = type_layouts(&scrambled);
        let _ = inlined_callees(&scrambled);
        let _ = decl_lines(&scrambled);
    }
}
