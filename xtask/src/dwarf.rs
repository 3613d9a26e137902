//! Reads what the kernel's symbol table does not say from its DWARF: inlined copies and signatures.
//!
//! Every `DW_TAG_inlined_subroutine` is a copy of a function's body inside
//! another function's machine code; its `DW_AT_abstract_origin` names the
//! function (directly, or through further `DW_AT_abstract_origin` and
//! `DW_AT_specification` links to the entry that holds the linkage name), and
//! the nearest enclosing `DW_TAG_subprogram` with a `DW_AT_low_pc` is the
//! out-of-line function that holds the copy. A function's signature is its
//! concrete `DW_TAG_subprogram`'s `DW_TAG_formal_parameter` children and its
//! `DW_AT_type`, named as the DWARF names them (Rust gives every type,
//! references and tuples included, a `DW_AT_name`).

use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use addr2line::gimli;
use anyhow::{Context, Result};
use object::{Object, ObjectSection, RelocationKind};

/// A `.debug_*` section's bytes, read with its relocations applied.
pub(crate) type Reader<'a> = gimli::RelocateReader<gimli::EndianSlice<'a, gimli::LittleEndian>, Relocations>;

/// The relocations of one `.debug_*` section, applied as its fields are read.
///
/// In a relocatable object (`--emit=obj`) every reference from one DWARF
/// section into another (`DW_FORM_strp`, `DW_AT_stmt_list`, `DW_AT_ranges`,
/// the unit's abbreviation offset) and every code address holds 0, the
/// value being the relocation's addend (RELA); a linked ELF file has no
/// such relocations, so this changes nothing there.
#[derive(Debug, Clone)]
pub(crate) struct Relocations(Rc<object::read::RelocationMap>);

impl gimli::Relocate for Relocations {
    fn relocate_address(&self, offset: usize, value: u64) -> gimli::Result<u64> {
        Ok(self.0.relocate(offset as u64, value))
    }

    fn relocate_offset(&self, offset: usize, value: usize) -> gimli::Result<usize> {
        <usize as gimli::ReaderOffset>::from_u64(self.0.relocate(offset as u64, value as u64))
    }
}

/// The relocation map of `section`: its absolute (`R_PPC64_ADDR64`, `R_PPC64_ADDR32`) relocations.
///
/// Others (thread-local offsets inside location expressions) sit in blocks
/// that are read as bytes, never as addresses or offsets: they are left out.
fn relocations(file: &object::File, section: &object::Section) -> Result<Relocations> {
    let mut map = object::read::RelocationMap::default();
    for (offset, relocation) in section.relocations() {
        if relocation.kind() == RelocationKind::Absolute {
            map.add(file, offset, relocation)
                .with_context(|| format!("relocation at {offset:#x} of {}", section.name().unwrap_or("?")))?;
        }
    }
    Ok(Relocations(Rc::new(map)))
}

/// A function's parameters and result, as DWARF gives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// (name, type) of each parameter, in order.
    pub parameters: Vec<(String, String)>,
    /// Whether the function takes more arguments after these (`...`).
    pub variadic: bool,
    /// The result type; `None` for `()`.
    pub result: Option<String>,
}

impl Signature {
    /// `fn NAME(a: u64, b: &str) -> u64`.
    pub fn render(&self, name: &str) -> String {
        let mut parameters: Vec<String> = self
            .parameters
            .iter()
            .map(|(parameter, kind)| if parameter.is_empty() { kind.clone() } else { format!("{parameter}: {kind}") })
            .collect();
        if self.variadic {
            parameters.push("...".into());
        }
        let result = self.result.as_ref().map_or(String::new(), |result| format!(" -> {result}"));
        format!("fn {name}({}){result}", parameters.join(", "))
    }
}

/// What the DWARF says.
#[derive(Debug, Default)]
pub struct Facts {
    /// Per inlined function (by linkage name: the mangled symbol, or the
    /// plain name of an unmangled one), the low addresses of the out-of-line
    /// functions holding its copies.
    pub inlined: BTreeMap<String, BTreeSet<u64>>,
    /// The signatures of the functions asked for, by low address.
    pub signatures: BTreeMap<u64, Signature>,
}

/// Every unit of the DWARF, parsed once, so that references across units resolve.
pub(crate) struct Units<'a> {
    pub(crate) dwarf: gimli::Dwarf<Reader<'a>>,
    pub(crate) units: Vec<gimli::Unit<Reader<'a>>>,
}

/// An entry: the index of its unit and its offset there.
pub(crate) type Place = (usize, gimli::UnitOffset);

impl<'a> Units<'a> {
    /// Parses the DWARF of `file`, an ELF executable or relocatable object.
    pub(crate) fn load(file: &object::File<'a>) -> Result<Units<'a>> {
        let load = |id: gimli::SectionId| -> Result<Reader<'a>> {
            let Some(section) = file.section_by_name(id.name()) else {
                let empty = Relocations(Rc::new(object::read::RelocationMap::default()));
                return Ok(gimli::RelocateReader::new(gimli::EndianSlice::new(&[], gimli::LittleEndian), empty));
            };
            let data = section.data().with_context(|| format!("reading {}", id.name()))?;
            let slice = gimli::EndianSlice::new(data, gimli::LittleEndian);
            Ok(gimli::RelocateReader::new(slice, relocations(file, &section)?))
        };
        let dwarf = gimli::Dwarf::load(load)?;
        let mut units = Vec::new();
        let mut headers = dwarf.units();
        while let Some(header) = headers.next()? {
            units.push(dwarf.unit(header)?);
        }
        Ok(Units { dwarf, units })
    }

    /// Where a reference attribute of an entry in unit `unit` points.
    pub(crate) fn reference(&self, unit: usize, value: gimli::AttributeValue<Reader<'a>>) -> Option<Place> {
        match value {
            gimli::AttributeValue::UnitRef(offset) => Some((unit, offset)),
            gimli::AttributeValue::DebugInfoRef(offset) => self
                .units
                .iter()
                .enumerate()
                .find_map(|(index, other)| Some((index, offset.to_unit_offset(&other.header)?))),
            _ => None,
        }
    }

    pub(crate) fn string(&self, unit: usize, value: gimli::AttributeValue<Reader<'a>>) -> Option<String> {
        let text = self.dwarf.attr_string(&self.units[unit], value).ok()?;
        Some(gimli::Reader::to_string_lossy(&text).ok()?.into_owned())
    }

    /// The attribute `name` of the entry at `place`, or of the entries its
    /// `DW_AT_abstract_origin` and `DW_AT_specification` lead to, with the
    /// unit it was found in.
    pub(crate) fn inherited(
        &self,
        place: Place,
        name: gimli::DwAt,
    ) -> Result<Option<(usize, gimli::AttributeValue<Reader<'a>>)>> {
        let mut place = place;
        // Links go from a concrete entry to its abstract one to its declaration: a few steps.
        for _ in 0..8 {
            let entry = self.units[place.0].entry(place.1)?;
            if let Some(value) = entry.attr_value(name)? {
                return Ok(Some((place.0, value)));
            }
            let link = match entry.attr_value(gimli::DW_AT_abstract_origin)? {
                Some(value) => Some(value),
                None => entry.attr_value(gimli::DW_AT_specification)?,
            };
            match link.and_then(|value| self.reference(place.0, value)) {
                Some(next) => place = next,
                None => return Ok(None),
            }
        }
        Ok(None)
    }

    /// The symbol name of the function entry at `place`: its linkage name,
    /// or the plain name of an unmangled (`#[no_mangle]`) function.
    fn symbol_name(&self, place: Place) -> Result<Option<String>> {
        if let Some((unit, value)) = self.inherited(place, gimli::DW_AT_linkage_name)? {
            return Ok(self.string(unit, value));
        }
        Ok(self.inherited(place, gimli::DW_AT_name)?.and_then(|(unit, value)| self.string(unit, value)))
    }

    /// The name of the type at `place` (`&str`, `u64`, `(usize, usize)`, ...).
    pub(crate) fn type_name(&self, place: Place) -> Result<String> {
        let entry = self.units[place.0].entry(place.1)?;
        if let Some(name) = entry.attr_value(gimli::DW_AT_name)?.and_then(|value| self.string(place.0, value)) {
            return Ok(name);
        }
        let inner = match entry.attr_value(gimli::DW_AT_type)?.and_then(|value| self.reference(place.0, value)) {
            Some(inner) => self.type_name(inner)?,
            None => "()".to_string(),
        };
        Ok(match entry.tag() {
            gimli::DW_TAG_pointer_type => format!("*const {inner}"),
            gimli::DW_TAG_reference_type => format!("&{inner}"),
            _ => inner,
        })
    }

    /// The type named by the `DW_AT_type` of the entry at `place` (inherited), if any.
    fn type_of(&self, place: Place) -> Result<Option<String>> {
        match self.inherited(place, gimli::DW_AT_type)? {
            Some((unit, value)) => match self.reference(unit, value) {
                Some(target) => Ok(Some(self.type_name(target)?)),
                None => Ok(None),
            },
            None => Ok(None),
        }
    }

    /// The signature of the concrete subprogram at `place`.
    fn signature(&self, place: Place) -> Result<Signature> {
        let unit = &self.units[place.0];
        let mut tree = unit.entries_tree(Some(place.1))?;
        let root = tree.root()?;
        let mut children = root.children();
        let mut signature = Signature { parameters: Vec::new(), variadic: false, result: self.type_of(place)? };
        while let Some(child) = children.next()? {
            let entry = child.entry();
            match entry.tag() {
                gimli::DW_TAG_formal_parameter => {
                    let at = (place.0, entry.offset());
                    let name = self
                        .inherited(at, gimli::DW_AT_name)?
                        .and_then(|(unit, value)| self.string(unit, value))
                        .unwrap_or_default();
                    let kind = self.type_of(at)?.unwrap_or_else(|| "?".into());
                    signature.parameters.push((name, kind));
                }
                gimli::DW_TAG_unspecified_parameters => signature.variadic = true,
                _ => {}
            }
        }
        Ok(signature)
    }
}

/// The low address of a concrete subprogram (`None` for a declaration or an abstract instance).
fn low_address(units: &Units, unit: usize, entry: &gimli::DebuggingInformationEntry<Reader>) -> Result<Option<u64>> {
    match entry.attr_value(gimli::DW_AT_low_pc)? {
        Some(value) => Ok(units.dwarf.attr_address(&units.units[unit], value)?),
        None => Ok(None),
    }
}

/// Reads the inlined copies of every function from the DWARF of `data`
/// (an ELF file), and the signatures of the functions at `signatures_of`.
pub fn read(data: &[u8], signatures_of: &BTreeSet<u64>) -> Result<Facts> {
    let file = object::File::parse(data).context("not an object file")?;
    let units = Units::load(&file).context("reading the DWARF")?;
    let mut facts = Facts::default();
    for index in 0..units.units.len() {
        let unit = &units.units[index];
        let mut entries = unit.entries();
        // (depth, low address) of the subprograms enclosing the current entry.
        let mut enclosing: Vec<(isize, Option<u64>)> = Vec::new();
        let mut depth = 0;
        while let Some((delta, entry)) = entries.next_dfs()? {
            depth += delta;
            while enclosing.last().is_some_and(|(level, _)| *level >= depth) {
                enclosing.pop();
            }
            match entry.tag() {
                gimli::DW_TAG_subprogram => {
                    let low = low_address(&units, index, entry)?;
                    if let Some(address) = low.filter(|address| signatures_of.contains(address)) {
                        facts.signatures.insert(address, units.signature((index, entry.offset()))?);
                    }
                    enclosing.push((depth, low));
                }
                gimli::DW_TAG_inlined_subroutine => {
                    let Some(caller) = enclosing.last().and_then(|(_, low)| *low) else { continue };
                    let Some(origin) = entry.attr_value(gimli::DW_AT_abstract_origin)? else { continue };
                    let Some(origin) = units.reference(index, origin) else { continue };
                    if let Some(name) = units.symbol_name(origin)? {
                        facts.inlined.entry(name).or_default().insert(caller);
                    }
                }
                _ => {}
            }
        }
    }
    Ok(facts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::symbols::{demangle, functions};

    /// Inlined into `holds_a_copy` (`inline(always)` inlines even unoptimised
    /// code), and kept out of line too, since the test takes its address.
    #[inline(always)]
    fn always_inlined_fixture(value: u64, text: &str) -> u64 {
        value.wrapping_mul(3) ^ text.len() as u64
    }

    #[inline(never)]
    fn holds_a_copy(value: u64) -> u64 {
        always_inlined_fixture(value, "copy") + 1
    }

    /// The global entry of the function whose demangled name is `name` in `data`.
    fn address_of(data: &[u8], name: &str) -> u64 {
        let functions = functions(data).unwrap();
        let found: Vec<u64> =
            functions.iter().filter(|(symbol, ..)| demangle(symbol) == name).map(|(_, address, _)| *address).collect();
        assert_eq!(found.len(), 1, "one function {name}");
        found[0]
    }

    #[test]
    fn finds_inlined_copies_and_signatures_in_a_real_elf() {
        // This test binary is the fixture: an ELF file with DWARF, built by cargo.
        let out_of_line = std::hint::black_box(always_inlined_fixture as fn(u64, &str) -> u64);
        assert_eq!(holds_a_copy(5), out_of_line(5, "copy") + 1);
        let data = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let fixture = address_of(&data, "xtask::dwarf::tests::always_inlined_fixture");
        let holder = address_of(&data, "xtask::dwarf::tests::holds_a_copy");
        let facts = read(&data, &BTreeSet::from([fixture, holder])).unwrap();
        let callers: Vec<&BTreeSet<u64>> = facts
            .inlined
            .iter()
            .filter(|(symbol, _)| demangle(symbol) == "xtask::dwarf::tests::always_inlined_fixture")
            .map(|(_, callers)| callers)
            .collect();
        assert_eq!(callers, [&BTreeSet::from([holder])], "one copy, in holds_a_copy");
        assert!(
            !facts.inlined.keys().any(|symbol| demangle(symbol) == "xtask::dwarf::tests::holds_a_copy"),
            "holds_a_copy is never inlined"
        );
        let signature = |address| facts.signatures.get(&address).map(|signature: &Signature| signature.render("f"));
        assert_eq!(signature(fixture).as_deref(), Some("fn f(value: u64, text: &str) -> u64"));
        assert_eq!(signature(holder).as_deref(), Some("fn f(value: u64) -> u64"));
    }

    #[test]
    fn signatures_read_as_rust() {
        let signature = Signature {
            parameters: vec![("a".into(), "u64".into()), ("text".into(), "&str".into())],
            variadic: false,
            result: Some("(usize, usize)".into()),
        };
        assert_eq!(signature.render("kernel::x"), "fn kernel::x(a: u64, text: &str) -> (usize, usize)");
        let variadic = Signature { parameters: vec![("count".into(), "u64".into())], variadic: true, result: None };
        assert_eq!(variadic.render("sum"), "fn sum(count: u64, ...)");
    }
}
