//! What a module object holds: its `.klp.patch` (or a target module's `.klp.module`) description, symbols and relocations.
//!
//! `cargo xtask patch build` checks every object before signing it, so that
//! what the kernel's loader would refuse is reported at build time with the
//! code that caused it.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use object::elf;
use object::read::archive::ArchiveFile;
use object::{
    Object, ObjectKind, ObjectSection, ObjectSymbol, RelocationFlags, RelocationTarget, SectionKind, SymbolSection,
};

/// The section holding the description.
pub const DESCRIPTION_SECTION: &str = ".klp.patch";

/// The first line of a description (format version 1).
pub const FORMAT_LINE: &str = "klp-patch 1";

/// The relocation types the kernel's module loader applies, with their names.
pub const SUPPORTED_RELOCATIONS: [(u32, &str); 11] = [
    (elf::R_PPC64_ADDR64, "R_PPC64_ADDR64"),
    (elf::R_PPC64_REL64, "R_PPC64_REL64"),
    (elf::R_PPC64_REL32, "R_PPC64_REL32"),
    (elf::R_PPC64_ADDR32, "R_PPC64_ADDR32"),
    (elf::R_PPC64_REL16_HA, "R_PPC64_REL16_HA"),
    (elf::R_PPC64_REL16_LO, "R_PPC64_REL16_LO"),
    (elf::R_PPC64_TOC16_HA, "R_PPC64_TOC16_HA"),
    (elf::R_PPC64_TOC16_LO, "R_PPC64_TOC16_LO"),
    (elf::R_PPC64_TOC16_LO_DS, "R_PPC64_TOC16_LO_DS"),
    (elf::R_PPC64_TOC16_DS, "R_PPC64_TOC16_DS"),
    (elf::R_PPC64_REL24, "R_PPC64_REL24"),
];

/// The name of relocation type `kind` (`type N` when it is none the loader knows).
pub fn relocation_name(kind: u32) -> String {
    SUPPORTED_RELOCATIONS
        .iter()
        .find(|(known, _)| *known == kind)
        .map_or_else(|| format!("type {kind}"), |(_, name)| name.to_string())
}

/// A module's description, as `klp_patch!` (or `klp_module!`) writes it.
#[derive(Debug, PartialEq, Eq)]
pub struct Description {
    pub name: String,
    pub replacements: Vec<Replacement>,
    /// For a loadable target module (`.klp.module`): its init, exit and
    /// livepatchable functions; `replacements` is empty then.
    pub module: Option<portable::module::ModuleDescription>,
}

/// One `replace OLD_NAME NEW_SYMBOL [allow_inlined]` line.
#[derive(Debug, PartialEq, Eq)]
pub struct Replacement {
    /// The target module the function is in (an `object NAME` line before), `None` for the kernel.
    pub object: Option<String>,
    /// The kernel function, as the kernel's symbol table names it.
    pub old_name: String,
    /// The module's replacement function (a global symbol of the object).
    pub new_symbol: String,
    /// Whether the patch replaces the function although callers hold inlined copies.
    pub allow_inlined: bool,
}

impl Description {
    pub fn parse(text: &str) -> Result<Self> {
        let mut lines = text.lines().enumerate().map(|(index, line)| (index + 1, line));
        match lines.next() {
            Some((_, FORMAT_LINE)) => {}
            other => bail!("the description must start with {FORMAT_LINE:?}, not {:?}", other.map(|(_, line)| line)),
        }
        let mut name = None;
        let mut replacements = Vec::new();
        let mut object = None;
        for (number, line) in lines.filter(|(_, line)| !line.trim().is_empty()) {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["name", module] if name.is_none() => name = Some(module.to_string()),
                ["object", module] => object = Some(module.to_string()),
                ["name", _] => bail!("description line {number}: a second name"),
                ["replace", old_name, new_symbol, flags @ ..]
                    if flags.is_empty() || flags == [portable::module::ALLOW_INLINED] =>
                {
                    replacements.push(Replacement {
                        object: object.clone(),
                        old_name: old_name.to_string(),
                        new_symbol: new_symbol.to_string(),
                        allow_inlined: !flags.is_empty(),
                    })
                }
                // Checked by the kernel's parser below.
                ["atomic-replace"]
                | ["state", ..]
                | ["callback", ..]
                | ["build-id", ..]
                | ["toc", ..]
                | ["abi-checked", ..] => {}
                _ => bail!(
                    "description line {number}: expected `name NAME` or `replace OLD NEW [allow_inlined]`, found {line:?}"
                ),
            }
        }
        let name = name.context("the description has no `name` line")?;
        if replacements.is_empty() {
            bail!("the description of {name} replaces nothing");
        }
        // Then the kernel's own parser checks every line (atomic replace,
        // states and callbacks included), as the loader will.
        portable::module::parse_description(text.as_bytes())
            .map_err(|error| anyhow::anyhow!("the description is refused as the kernel would: {error}"))?;
        Ok(Description { name, replacements, module: None })
    }

    /// A target module's description (`.klp.module`), parsed as the kernel parses it.
    pub fn parse_module(text: &str) -> Result<Self> {
        let module = portable::module::parse_module_description(text.as_bytes())
            .map_err(|error| anyhow::anyhow!("module description: {error}"))?;
        Ok(Description { name: module.name.clone(), replacements: Vec::new(), module: Some(module) })
    }
}

/// A checked patch module object.
#[derive(Debug)]
pub struct Inspection {
    pub description: Description,
    /// Symbols the loader must resolve in the kernel (`.TOC.` aside), sorted.
    pub undefined: Vec<String>,
    /// Relocation counts per type name.
    pub relocations: BTreeMap<String, usize>,
}

/// Reads and checks a patch module object: ELF64 little-endian relocatable for
/// PowerPC64 with a valid description, every replacement defined as a global
/// function, no undefined reference into `core`/`alloc` and only relocation types
/// the loader supports. Errors name the code that caused them.
pub fn inspect(data: &[u8]) -> Result<Inspection> {
    let file = object::File::parse(data).context("not an ELF object")?;
    let little_endian = file.endianness() == object::Endianness::Little;
    if file.architecture() != object::Architecture::PowerPc64
        || !little_endian
        || file.kind() != ObjectKind::Relocatable
    {
        bail!("not a relocatable little-endian PowerPC64 object");
    }
    let module_section = file.section_by_name(portable::module::MODULE_SECTION);
    let description = match (file.section_by_name(DESCRIPTION_SECTION), module_section) {
        (Some(_), Some(_)) => bail!("both a {DESCRIPTION_SECTION} and a .klp.module section: a patch or a module?"),
        (None, Some(section)) => {
            Description::parse_module(std::str::from_utf8(section.data()?).context("the description is not UTF-8")?)?
        }
        (Some(section), None) => {
            Description::parse(std::str::from_utf8(section.data()?).context("the description is not UTF-8")?)?
        }
        (None, None) => bail!(
            "no {DESCRIPTION_SECTION} section: declare the patch with klp_patch::klp_patch! \
             (or a target module with klp_patch::klp_module!)"
        ),
    };
    if let Some(section) =
        file.sections().find(|section| matches!(section.kind(), SectionKind::Tls | SectionKind::UninitializedTls))
    {
        bail!("section {} holds thread-local data, which a module cannot have", section.name().unwrap_or("?"));
    }

    let defined = |name: &str| {
        file.symbols().find(|symbol| symbol.name() == Ok(name)).is_some_and(|symbol| {
            symbol.is_global()
                && symbol.kind() == object::SymbolKind::Text
                && matches!(symbol.section(), SymbolSection::Section(_))
        })
    };
    if let Some(module) = &description.module
        && let Some(missing) = module.functions().find(|name| !defined(name))
    {
        bail!(
            "the module's description names {missing}, which is not a global function: mark it #[unsafe(no_mangle)] pub"
        );
    }
    for replacement in &description.replacements {
        if !defined(&replacement.new_symbol) {
            bail!(
                "the replacement {} for {} is not a global function of the object: mark it #[unsafe(no_mangle)] pub fn",
                replacement.new_symbol,
                replacement.old_name
            );
        }
    }

    let mut undefined: Vec<String> = file
        .symbols()
        .filter(|symbol| symbol.is_undefined() && symbol.index().0 != 0)
        .filter_map(|symbol| symbol.name().ok().map(String::from))
        .filter(|name| !name.is_empty() && name != ".TOC.")
        .collect();
    undefined.sort();
    undefined.dedup();
    let from_rust: Vec<String> =
        undefined.iter().map(|name| demangle(name)).filter(|name| is_standard_library(name)).collect();
    if !from_rust.is_empty() {
        bail!(
            "the module calls into the standard library, which the kernel does not export: {} \
             (avoid core::fmt, panics, unwrap and indexing that can fail)",
            from_rust.join(", ")
        );
    }

    let mut relocations = BTreeMap::new();
    let mut unsupported = Vec::new();
    for section in file.sections() {
        for (offset, relocation) in section.relocations() {
            let RelocationFlags::Elf { r_type } = relocation.flags() else { continue };
            *relocations.entry(relocation_name(r_type)).or_insert(0) += 1;
            if !SUPPORTED_RELOCATIONS.iter().any(|(known, _)| *known == r_type) {
                let target = match relocation.target() {
                    RelocationTarget::Symbol(index) => file
                        .symbol_by_index(index)
                        .ok()
                        .and_then(|symbol| symbol.name().ok().map(demangle))
                        .unwrap_or_default(),
                    _ => String::new(),
                };
                let place = enclosing_symbol(&file, &section, offset).unwrap_or_else(|| format!("offset {offset:#x}"));
                unsupported.push(format!(
                    "{} in {} at {place} against {target}",
                    relocation_name(r_type),
                    section.name().unwrap_or("?")
                ));
            }
        }
    }
    if !unsupported.is_empty() {
        bail!("relocations the kernel's loader does not apply:\n    {}", unsupported.join("\n    "));
    }
    Ok(Inspection { description, undefined, relocations })
}

/// The function or object of `section` that contains `offset`, demangled, with the offset into it.
fn enclosing_symbol(file: &object::File, section: &object::Section, offset: u64) -> Option<String> {
    file.symbols()
        .filter(|symbol| symbol.section_index() == Some(section.index()) && symbol.size() > 0)
        .filter(|symbol| (symbol.address()..symbol.address() + symbol.size()).contains(&offset))
        .find_map(|symbol| Some(format!("{}+{:#x}", demangle(symbol.name().ok()?), offset - symbol.address())))
}

fn demangle(name: &str) -> String {
    format!("{:#}", rustc_demangle::demangle(name))
}

fn is_standard_library(demangled: &str) -> bool {
    ["core::", "alloc::", "std::", "compiler_builtins::", "<core::", "<alloc::", "<&"]
        .iter()
        .any(|prefix| demangled.starts_with(prefix))
}

/// The one object of an rlib built with one codegen unit (its `.rmeta` aside).
pub fn object_from_rlib(rlib: &[u8]) -> Result<Vec<u8>> {
    let archive = ArchiveFile::parse(rlib).context("not an rlib (ar archive)")?;
    let mut objects = Vec::new();
    for member in archive.members() {
        let member = member?;
        if member.name().ends_with(b".o") {
            objects.push(member.data(rlib)?.to_vec());
        }
    }
    match objects.len() {
        1 => Ok(objects.pop().expect("one")),
        count => bail!("the rlib holds {count} objects, not one: build with codegen-units = 1"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object::write::{Object as Writer, Relocation, StandardSection, Symbol, SymbolSection as WriteSection};
    use object::{Architecture, BinaryFormat, Endianness, SymbolFlags, SymbolKind, SymbolScope};

    const TEXT: &str = "klp-patch 1\nname counter\nreplace kernel::shell::greeting counter_greeting\n";

    #[test]
    fn parses_the_description_the_macro_writes() {
        let description = Description::parse(TEXT).unwrap();
        assert_eq!(description.name, "counter");
        assert_eq!(
            description.replacements,
            [Replacement {
                object: None,
                old_name: "kernel::shell::greeting".into(),
                new_symbol: "counter_greeting".into(),
                allow_inlined: false
            }]
        );
        let fix = Description::parse("klp-patch 1\nname fix\nobject hello-module\nreplace m n\n").unwrap();
        assert_eq!(fix.replacements[0].object.as_deref(), Some("hello-module"));
        let module = Description::parse_module("klp-module 1\nname m\ninit start\n").unwrap();
        assert_eq!((module.name.as_str(), module.module.unwrap().init.as_deref()), ("m", Some("start")));
        assert!(Description::parse_module("klp-module 1\ninit start\n").is_err());
        let flagged = Description::parse("klp-patch 1\nname x\nreplace a b allow_inlined\n").unwrap();
        assert!(flagged.replacements[0].allow_inlined);
        // The lines of a patch made from a diff, checked by the kernel's parser.
        let generated = "klp-patch 1\nname g\nbuild-id 00112233445566778899aabbccddeeff00112233\ntoc kernel\nabi-checked\nreplace a b\n";
        assert_eq!(Description::parse(generated).unwrap().name, "g");
        let error = |text: &str| Description::parse(text).unwrap_err().to_string();
        assert!(error("klp-patch 2\nname x\nreplace a b\n").contains("must start with"));
        assert!(error("klp-patch 1\nreplace a b\n").contains("no `name`"));
        assert!(error("klp-patch 1\nname x\n").contains("replaces nothing"));
        assert!(error("klp-patch 1\nname x\nname y\nreplace a b\n").contains("second name"));
        assert!(error("klp-patch 1\nname x\nreplace a\n").contains("line 3"));
        assert!(error("klp-patch 1\nname x\nreplace a b force\n").contains("line 3"));
        assert!(error("klp-patch 1\nname x\ntoc module\nreplace a b\n").contains("toc kernel"));
        assert!(error("klp-patch 1\nname x\nabi-checked yes\nreplace a b\n").contains("no argument"));
    }

    /// A small PowerPC64 object: one global function, a call to `call`, a relocation of type `kind`.
    fn object(description: &str, function: &str, call: &str, kind: u32) -> Vec<u8> {
        let mut writer = Writer::new(BinaryFormat::Elf, Architecture::PowerPc64, Endianness::Little);
        let text = writer.section_id(StandardSection::Text);
        let offset = writer.append_section_data(text, &[0; 16], 4);
        writer.add_symbol(Symbol {
            name: function.as_bytes().to_vec(),
            value: offset,
            size: 16,
            kind: SymbolKind::Text,
            scope: SymbolScope::Linkage,
            weak: false,
            section: WriteSection::Section(text),
            flags: SymbolFlags::None,
        });
        let callee = writer.add_symbol(Symbol {
            name: call.as_bytes().to_vec(),
            value: 0,
            size: 0,
            kind: SymbolKind::Unknown,
            scope: SymbolScope::Linkage,
            weak: false,
            section: WriteSection::Undefined,
            flags: SymbolFlags::None,
        });
        writer
            .add_relocation(
                text,
                Relocation { offset: 4, symbol: callee, addend: 0, flags: RelocationFlags::Elf { r_type: kind } },
            )
            .unwrap();
        let section = writer.add_section(Vec::new(), b".klp.patch".to_vec(), SectionKind::ReadOnlyData);
        writer.append_section_data(section, description.as_bytes(), 1);
        writer.write().unwrap()
    }

    #[test]
    fn accepts_a_well_formed_module() {
        let inspection = inspect(&object(TEXT, "counter_greeting", "klp_print", elf::R_PPC64_REL24)).unwrap();
        assert_eq!(inspection.description.name, "counter");
        assert_eq!(inspection.undefined, ["klp_print"]);
        assert_eq!(inspection.relocations.get("R_PPC64_REL24"), Some(&1));
    }

    #[test]
    fn refuses_what_the_loader_could_not_use() {
        let error = |data: Vec<u8>| inspect(&data).unwrap_err().to_string();
        assert!(error(object(TEXT, "other", "klp_print", elf::R_PPC64_REL24)).contains("counter_greeting"));
        assert!(error(object("klp-patch 1\n", "f", "klp_print", elf::R_PPC64_REL24)).contains("no `name`"));
        let panics = "_ZN4core9panicking5panic17h0123456789abcdefE";
        assert!(error(object(TEXT, "counter_greeting", panics, elf::R_PPC64_REL24)).contains("core::panicking::panic"));
        let unsupported = error(object(TEXT, "counter_greeting", "klp_print", elf::R_PPC64_ADDR16_HA));
        assert!(unsupported.contains("type 6 in .text at counter_greeting+0x4 against klp_print"), "{unsupported}");
        assert!(error(b"not elf".to_vec()).contains("not an ELF"));
    }

    #[test]
    fn finds_the_object_in_an_rlib() {
        let member = |name: &str, data: &[u8]| {
            let mut header = format!("{name:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n", 0, 0, 0, 644, data.len()).into_bytes();
            header.extend_from_slice(data);
            if data.len() % 2 == 1 {
                header.push(b'\n');
            }
            header
        };
        let mut rlib = b"!<arch>\n".to_vec();
        rlib.extend(member("lib.rmeta/", b"metadata"));
        rlib.extend(member("patch.cgu.0.o/", b"OBJECT"));
        assert_eq!(object_from_rlib(&rlib).unwrap(), b"OBJECT");
        rlib.extend(member("patch.cgu.1.o/", b"SECOND"));
        assert!(object_from_rlib(&rlib).unwrap_err().to_string().contains("codegen-units = 1"));
    }
}
