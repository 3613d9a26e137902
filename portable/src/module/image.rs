//! A parsed and validated patch module object, ready to be linked at an address.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

use super::description::parse_description;
use super::elf::{Section, read_sections};
use super::layout::{Layout, layout};
use super::relocations::{self, Branch, Relocation, RelocationSection};
use super::symbols::{Definition, Symbol, SymbolTable};
use super::target::{MODULE_SECTION, parse_module_description};
use super::{DESCRIPTION_SECTION, Description, ModuleError};

/// A stub's identity: the external function's name and the call's addend.
pub(super) type StubKey<'a> = (&'a str, i64);

/// A patch module object that passed every check that needs no address: ELF header,
/// sections, symbols, relocations (types, bounds, call sites), the patch description.
/// [`link`](ModuleImage::link) places it in memory.
pub struct ModuleImage<'a> {
    pub(super) sections: Vec<Section<'a>>,
    pub(super) symbols: SymbolTable<'a>,
    pub(super) relocations: Vec<RelocationSection<'a>>,
    /// The stub slot of each distinct external call target, numbered in order of first use.
    pub(super) stubs: BTreeMap<StubKey<'a>, usize>,
    pub(super) layout: Layout,
    pub(super) description: Description,
    /// The module runs on the kernel's TOC base (`toc kernel`): calls out need no nop.
    pub(super) kernel_toc: bool,
}

/// Parses and validates a patch module: a ppc64le ELFv2 relocatable object with a
/// `.klp.patch` section. Never panics, whatever the input; see [`ModuleError`] for what is
/// refused.
pub fn parse(bytes: &[u8]) -> Result<ModuleImage<'_>, ModuleError> {
    let sections = read_sections(bytes)?;
    let symbols = SymbolTable::read(&sections)?;
    let relocations = relocations::read(&sections, &symbols)?;
    // Whether calls out need a nop depends on the description's `toc kernel`
    // line; a description that does not parse is refused below, as before.
    let kernel_toc = read_description(&sections).is_ok_and(|description| description.kernel_toc());
    let mut stubs = BTreeMap::new();
    for group in &relocations {
        for entry in group.entries {
            let Some(relocation) = relocations::decode(group, entry, &sections, &symbols, kernel_toc)? else {
                continue;
            };
            if relocation.branch == Branch::External {
                let next = stubs.len();
                stubs.entry((relocation.symbol.name, relocation.addend)).or_insert(next);
            }
        }
    }
    let layout = layout(&sections, stubs.len())?;
    let description = read_description(&sections)?;
    let image = ModuleImage { sections, symbols, relocations, stubs, layout, description, kernel_toc };
    let functions = image.functions();
    match &image.description {
        Description::Patch(patch) => {
            for function in &patch.functions {
                if !functions.contains_key(function.new_symbol.as_str()) {
                    return Err(ModuleError::ReplacementNotFunction(function.new_symbol.clone()));
                }
            }
        }
        Description::Module(module) => {
            if let Some(missing) = module.functions().find(|name| !functions.contains_key(name)) {
                return Err(ModuleError::ModuleFunctionMissing(String::from(missing)));
            }
        }
    }
    Ok(image)
}

/// Finds and parses the `.klp.patch` or the `.klp.module` section (one of them, not both).
fn read_description(sections: &[Section<'_>]) -> Result<Description, ModuleError> {
    let find = |name: &str| sections.iter().find(|section| section.name == name);
    let section = match (find(DESCRIPTION_SECTION), find(MODULE_SECTION)) {
        (None, None) => return Err(ModuleError::MissingDescription),
        (Some(_), Some(_)) => return Err(ModuleError::TwoDescriptions),
        (Some(section), None) | (None, Some(section)) => section,
    };
    if !section.has_file_bytes() {
        return Err(ModuleError::Description { line: 0, reason: String::from("the section has no contents") });
    }
    if section.name == MODULE_SECTION {
        parse_module_description(section.bytes).map(Description::Module)
    } else {
        parse_description(section.bytes).map(Description::Patch)
    }
}

impl<'a> ModuleImage<'a> {
    /// Bytes of memory the module needs once loaded: every SHF_ALLOC section (each at its
    /// alignment; NOBITS zero-filled), then the call stubs area (one 32-byte stub per distinct
    /// external function called through R_PPC64_REL24), laid out deterministically:
    /// executable, read-only, writable, NOBITS sections, then stubs.
    pub fn memory_size(&self) -> usize {
        self.layout.size as usize
    }

    /// Alignment the memory handed to [`link`](Self::link) must have: at least 16, and the
    /// largest section alignment.
    pub fn memory_alignment(&self) -> usize {
        self.layout.alignment as usize
    }

    /// The description read from `.klp.patch` or `.klp.module`.
    pub fn description(&self) -> &Description {
        &self.description
    }

    /// The relocations of every patched section, in file order, each checked again.
    pub(super) fn each_relocation(
        &self,
        mut visit: impl FnMut(Relocation<'a>) -> Result<(), ModuleError>,
    ) -> Result<(), ModuleError> {
        for group in &self.relocations {
            for entry in group.entries {
                if let Some(relocation) =
                    relocations::decode(group, entry, &self.sections, &self.symbols, self.kernel_toc)?
                {
                    visit(relocation)?;
                }
            }
        }
        Ok(())
    }

    /// Every symbol after the null one, in table order (parse checked them all).
    pub(super) fn each_symbol(&self) -> impl Iterator<Item = Symbol<'a>> + '_ {
        (1..self.symbols.len()).filter_map(|index| self.symbols.get(index, &self.sections).ok())
    }

    /// The functions defined in executable sections of the module, by name (a global one
    /// where a name has several).
    pub(super) fn functions(&self) -> BTreeMap<&'a str, Symbol<'a>> {
        let executable = |symbol: &Symbol<'a>| match symbol.definition {
            Definition::Loaded(index) => self
                .sections
                .get(index)
                .is_some_and(|section| section.flags & u64::from(object::elf::SHF_EXECINSTR) != 0),
            _ => false,
        };
        let mut functions: BTreeMap<&'a str, Symbol<'a>> = BTreeMap::new();
        for symbol in self.each_symbol().filter(Symbol::is_defined_function).filter(executable) {
            let known = functions.get(symbol.name).is_some_and(|known| known.global || !symbol.global);
            if !known {
                functions.insert(symbol.name, symbol);
            }
        }
        functions
    }
}
