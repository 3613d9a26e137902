//! Writes a generated patch's module object: the patched build's replacement functions, what they need copied, klp relocations for the rest.
//!
//! Input: the patched build of the kernel crate (one relocatable object,
//! large code model, see docs/modules.md "From a diff") and the functions to
//! replace. Starting from those, every relocation of every section taken is
//! followed, and its target becomes one of:
//!
//! - `.TOC.`: stays `.TOC.` (the module runs on the kernel's TOC base, `toc kernel`);
//! - a `.toc` entry: a new entry in the module's own `.toc`, whose ADDR64 is
//!   placed by these same rules (the module's code reaches data only through it);
//! - a function or static the [`Kernel`] has (by its mangled name) that is not
//!   itself taken: the undefined symbol `.klp.sym.vmlinux.NAME,POSITION`,
//!   which the loader resolves to the running kernel's own copy, so a static is
//!   always the running kernel's instance;
//! - anything else defined in the object (a new function, a new static, an
//!   anonymous constant, a function the running kernel has no copy of): copied
//!   into the module, section by section; a string of a merged string section
//!   (file names of panic locations) or a merged constant: only those bytes.
//!
//! A named writable static the running kernel lacks but the base build had
//! is refused: a copy would be a second instance with other contents.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use anyhow::{Context, Result, bail};
use object::elf;
use object::write::{Object as Writer, Relocation, SectionId, Symbol, SymbolId, SymbolSection};
use object::{
    Architecture, BinaryFormat, Endianness, FileFlags, Object, ObjectSection, ObjectSymbol, RelocationFlags,
    RelocationTarget, SectionIndex, SectionKind, SymbolFlags, SymbolKind, SymbolScope,
};

use crate::object_diff::Build;

/// The prefix of the undefined symbols naming the running kernel's own symbols.
pub const KERNEL_SYMBOL_PREFIX: &str = ".klp.sym.vmlinux.";

/// What the generator knows of the running kernel for placing references.
pub trait Kernel {
    /// `.klp.sym.vmlinux.NAME,POSITION` for the kernel's symbol `mangled`, `None` if it has none of that name.
    fn klp_symbol(&self, mangled: &str) -> Result<Option<String>>;
}

/// The module object and what went into it.
#[derive(Debug, Default)]
pub struct Extracted {
    pub object: Vec<u8>,
    /// Functions copied besides the replacements (mangled).
    pub copied_functions: Vec<String>,
    /// Named statics the module holds (mangled): new in the fix, or read-only copies.
    pub copied_statics: Vec<String>,
    /// Anonymous constants copied (sections, strings, merged constants).
    pub constants: usize,
    /// References resolved to the running kernel: the mangled names.
    pub kernel_references: BTreeSet<String>,
    /// Bytes of code and data the module carries (sections, `.toc` included, description excluded).
    pub loaded_bytes: u64,
}

/// What the rules need to know of one name of the patched object.
pub struct Rules<'r> {
    /// Functions replaced (mangled): global in the module, named by the description.
    pub replaced: &'r BTreeSet<String>,
    /// Functions whose code changed or that the base build lacks (mangled): always copied, never the kernel's.
    pub new_code: &'r BTreeSet<String>,
    /// Statics the base build lacks (mangled): new in the fix, they live in the module.
    pub new_statics: &'r BTreeSet<String>,
}

/// Builds the module object: `description` goes into `.klp.patch`.
pub fn extract(patched: &Build, rules: &Rules, kernel: &dyn Kernel, description: &str) -> Result<Extracted> {
    let mut writer = Writer::new(BinaryFormat::Elf, Architecture::PowerPc64, Endianness::Little);
    // ELFv2 (e_flags 2), as rustc writes.
    writer.flags = FileFlags::Elf { os_abi: 0, abi_version: 0, e_flags: 2 };
    let mut state = State {
        patched,
        rules,
        kernel,
        writer,
        sections: HashMap::new(),
        queue: VecDeque::new(),
        undefined: BTreeMap::new(),
        defined: HashMap::new(),
        toc: None,
        toc_entries: HashMap::new(),
        strings: None,
        string_offsets: BTreeMap::new(),
        constants: None,
        constant_offsets: BTreeMap::new(),
        extracted: Extracted::default(),
    };
    for symbol in rules.replaced {
        let &index =
            patched.functions.get(symbol).with_context(|| format!("no function {symbol} in the patched build"))?;
        state.take(index)?;
    }
    while let Some(index) = state.queue.pop_front() {
        state.relocate(index)?;
    }
    let section = state.writer.add_section(Vec::new(), b".klp.patch".to_vec(), SectionKind::ReadOnlyData);
    state.writer.append_section_data(section, description.as_bytes(), 1);
    let mut extracted = state.extracted;
    extracted.object = state.writer.write().context("writing the module object")?;
    Ok(extracted)
}

struct State<'s, 'd> {
    patched: &'s Build<'d>,
    rules: &'s Rules<'s>,
    kernel: &'s dyn Kernel,
    writer: Writer<'static>,
    /// Sections of the patched object copied: their module section.
    sections: HashMap<SectionIndex, SectionId>,
    queue: VecDeque<SectionIndex>,
    /// Undefined module symbols by name (`.TOC.`, `.klp.sym.vmlinux.*`).
    undefined: BTreeMap<String, SymbolId>,
    /// Symbols of the patched object defined in the module: by their index there.
    defined: HashMap<object::SymbolIndex, SymbolId>,
    toc: Option<SectionId>,
    /// The module's `.toc` entries by what they hold.
    toc_entries: HashMap<(SymbolId, i64), u64>,
    strings: Option<SectionId>,
    string_offsets: BTreeMap<Vec<u8>, u64>,
    constants: Option<SectionId>,
    constant_offsets: BTreeMap<(Vec<u8>, u64), u64>,
    extracted: Extracted,
}

impl State<'_, '_> {
    /// Copies section `index` (once) with the symbols it defines; queues its relocations.
    fn take(&mut self, index: SectionIndex) -> Result<SectionId> {
        if let Some(&id) = self.sections.get(&index) {
            return Ok(id);
        }
        let file = &self.patched.file;
        let section = file.section_by_index(index)?;
        let name = section.name().context("section name")?;
        let kind = section.kind();
        let id = self.writer.add_section(Vec::new(), name.as_bytes().to_vec(), kind);
        if kind == SectionKind::UninitializedData {
            self.writer.append_section_bss(id, section.size(), section.align().max(1));
        } else {
            let data = section.uncompressed_data().context("section data")?;
            self.writer.append_section_data(id, &data, section.align().max(1));
        }
        self.extracted.loaded_bytes += section.size();
        self.sections.insert(index, id);
        self.queue.push_back(index);
        for symbol in file.symbols().filter(|symbol| symbol.section_index() == Some(index)) {
            let name = symbol.name().unwrap_or("");
            if name.is_empty() || symbol.kind() == SymbolKind::Section {
                continue;
            }
            let global = self.rules.replaced.contains(name);
            let object::SymbolFlags::Elf { st_other, .. } = symbol.flags() else { bail!("{name}: not an ELF symbol") };
            let kind = match symbol.kind() {
                SymbolKind::Text => elf::STT_FUNC,
                SymbolKind::Data => elf::STT_OBJECT,
                _ => elf::STT_NOTYPE,
            };
            let bind = if global { elf::STB_GLOBAL } else { elf::STB_LOCAL };
            let defined = self.writer.add_symbol(Symbol {
                name: name.as_bytes().to_vec(),
                value: symbol.address(),
                size: symbol.size(),
                kind: symbol.kind(),
                scope: if global { SymbolScope::Linkage } else { SymbolScope::Compilation },
                weak: false,
                section: SymbolSection::Section(id),
                flags: SymbolFlags::Elf { st_info: (bind << 4) | kind, st_other },
            });
            self.defined.insert(symbol.index(), defined);
            match symbol.kind() {
                SymbolKind::Text if !global => self.extracted.copied_functions.push(name.to_string()),
                SymbolKind::Data => self.extracted.copied_statics.push(name.to_string()),
                _ => {}
            }
        }
        if self.patched.functions.values().all(|&function| function != index)
            && self.patched.statics.values().all(|&named| named != index)
        {
            self.extracted.constants += 1;
        }
        Ok(id)
    }

    /// Writes the relocations of copied section `index`, each target placed by the rules.
    fn relocate(&mut self, index: SectionIndex) -> Result<()> {
        let section = self.patched.file.section_by_index(index)?;
        let name = section.name().unwrap_or("?").to_string();
        let id = self.sections[&index];
        for (offset, relocation) in section.relocations() {
            let RelocationFlags::Elf { r_type } = relocation.flags() else {
                bail!("{name}+{offset:#x}: not an ELF relocation");
            };
            // A branch calls; anything else takes an address.
            let call = matches!(r_type, elf::R_PPC64_REL24 | elf::R_PPC64_REL14);
            let (symbol, addend) = self
                .place(relocation.target(), relocation.addend(), call)
                .with_context(|| format!("the reference at {name}+{offset:#x}"))?;
            self.writer
                .add_relocation(id, Relocation { offset, symbol, addend, flags: RelocationFlags::Elf { r_type } })
                .with_context(|| format!("{name}+{offset:#x}"))?;
        }
        Ok(())
    }

    /// Where a reference to `target + addend` goes in the module (see the module's doc).
    fn place(&mut self, target: RelocationTarget, addend: i64, call: bool) -> Result<(SymbolId, i64)> {
        let file = &self.patched.file;
        let section = match target {
            RelocationTarget::Symbol(index) => {
                let symbol = file.symbol_by_index(index)?;
                let name = symbol.name().unwrap_or("");
                if symbol.kind() == SymbolKind::Section || name.is_empty() {
                    symbol.section_index().context("an unnamed symbol without a section")?
                } else {
                    return self.place_named(index, name.to_string(), addend, call);
                }
            }
            RelocationTarget::Section(index) => index,
            _ => bail!("a reference to an absolute address"),
        };
        if let Some((toc, entries)) = &self.patched.toc
            && *toc == section
        {
            let offset = u64::try_from(addend).context("a negative .toc offset")?;
            let &(inner, inner_addend) =
                entries.get(&offset).with_context(|| format!("no .toc entry at {offset:#x}"))?;
            let entry = self.place(inner, inner_addend, false)?;
            return Ok((self.toc_symbol()?, self.toc_entry(entry)? as i64));
        }
        if let Some(merged) = crate::object_diff::merged_constant(file, section, addend)? {
            let alignment = file.section_by_index(section)?.align().max(1);
            let (symbol, offset) = if merged.string {
                self.string(&merged.bytes, alignment)?
            } else {
                self.constant(&merged.bytes, alignment)?
            };
            return Ok((symbol, offset + merged.within as i64));
        }
        // A named static reached through its section's symbol (how LLVM
        // refers to local statics): placed as the static.
        let named = file.symbols().find(|symbol| {
            symbol.section_index() == Some(section)
                && symbol.kind() == SymbolKind::Data
                && symbol.address() == 0
                && symbol.name().is_ok_and(|name| !name.is_empty())
        });
        if let Some(symbol) = named {
            return self.place_named(symbol.index(), symbol.name()?.to_string(), addend, call);
        }
        // A section of its own: an anonymous constant, a jump table, or a
        // function reached through its section symbol. A reference to a
        // function's entry follows the rules for functions; one into its
        // middle (a jump table's entry, REL32 to a label) is to code the
        // module holds: the function making it is copied.
        if let Some(symbol) = crate::object_diff::function_symbol(file, section) {
            let entry = file.symbols().find(|candidate| candidate.name() == Ok(symbol.as_str()));
            let entry = entry.map_or(0, |found| found.address());
            if u64::try_from(addend).ok() == Some(entry) && !self.must_copy_function(&symbol, call)? {
                return Ok((self.kernel_symbol(&symbol)?, 0));
            }
        }
        let id = self.take(section)?;
        Ok((self.writer.section_symbol(id), addend))
    }

    /// A reference to the named symbol `index` of the patched object.
    fn place_named(
        &mut self,
        index: object::SymbolIndex,
        name: String,
        addend: i64,
        call: bool,
    ) -> Result<(SymbolId, i64)> {
        if name == ".TOC." {
            return Ok((self.undefined_symbol(".TOC."), addend));
        }
        let symbol = self.patched.file.symbol_by_index(index)?;
        let Some(section) = symbol.section_index() else {
            // Defined in another crate (core, alloc, compiler_builtins): the kernel's copy.
            return Ok((self.kernel_symbol(&name)?, addend));
        };
        let copy = match symbol.kind() {
            SymbolKind::Text => self.must_copy_function(&name, call)?,
            SymbolKind::Data => {
                if self.rules.new_statics.contains(&name) {
                    true
                } else if self.kernel.klp_symbol(&name)?.is_some() {
                    false
                } else {
                    let section = self.patched.file.section_by_index(section)?;
                    let object::SectionFlags::Elf { sh_flags } = section.flags() else { bail!("not an ELF section") };
                    if sh_flags & u64::from(elf::SHF_WRITE) != 0 {
                        bail!(
                            "static {} is in both builds but not in the running kernel's symbol table: a copy in the \
                             patch would be a second instance, not the running kernel's",
                            crate::symbols::demangle(&name)
                        );
                    }
                    true
                }
            }
            _ => true,
        };
        if !copy {
            return Ok((self.kernel_symbol(&name)?, addend));
        }
        self.take(section)?;
        let defined =
            *self.defined.get(&index).with_context(|| format!("symbol {name} was not copied with its section"))?;
        Ok((defined, addend))
    }

    /// Whether a reference to function `name` goes to a copy in the module.
    /// A call: when the function is replaced or new code, or the running
    /// kernel has no copy of it. An address taken (a function pointer): only
    /// when the kernel has no copy, so that the patched code's pointer is the
    /// one the rest of the kernel holds (a handler unregistered by address, a
    /// pointer compared), and a call through it still reaches the
    /// replacement through the original's ftrace site (kpatch does the same).
    fn must_copy_function(&self, name: &str, call: bool) -> Result<bool> {
        let in_kernel = self.kernel.klp_symbol(name)?.is_some();
        Ok(!in_kernel || (call && (self.rules.replaced.contains(name) || self.rules.new_code.contains(name))))
    }

    /// The undefined `.klp.sym.vmlinux.NAME,POSITION` symbol for the kernel's `name`.
    fn kernel_symbol(&mut self, name: &str) -> Result<SymbolId> {
        let Some(klp) = self.kernel.klp_symbol(name)? else {
            bail!(
                "{} is needed but the running kernel has no symbol of that name (the linker dropped it, \
                 or it is new in another crate than the kernel's)",
                crate::symbols::demangle(name)
            );
        };
        self.extracted.kernel_references.insert(name.to_string());
        Ok(self.undefined_symbol(&klp))
    }

    fn undefined_symbol(&mut self, name: &str) -> SymbolId {
        if let Some(&id) = self.undefined.get(name) {
            return id;
        }
        let id = self.writer.add_symbol(Symbol {
            name: name.as_bytes().to_vec(),
            value: 0,
            size: 0,
            kind: SymbolKind::Unknown,
            scope: SymbolScope::Linkage,
            weak: false,
            section: SymbolSection::Undefined,
            flags: SymbolFlags::None,
        });
        self.undefined.insert(name.to_string(), id);
        id
    }

    fn toc_symbol(&mut self) -> Result<SymbolId> {
        let id =
            *self.toc.get_or_insert_with(|| self.writer.add_section(Vec::new(), b".toc".to_vec(), SectionKind::Data));
        Ok(self.writer.section_symbol(id))
    }

    /// The offset in the module's `.toc` of an entry holding `target` (made once).
    fn toc_entry(&mut self, target: (SymbolId, i64)) -> Result<u64> {
        if let Some(&offset) = self.toc_entries.get(&target) {
            return Ok(offset);
        }
        let toc = self.toc.context("the module's .toc")?;
        let offset = self.writer.append_section_data(toc, &[0; 8], 8);
        self.writer.add_relocation(
            toc,
            Relocation {
                offset,
                symbol: target.0,
                addend: target.1,
                flags: RelocationFlags::Elf { r_type: elf::R_PPC64_ADDR64 },
            },
        )?;
        self.extracted.loaded_bytes += 8;
        self.toc_entries.insert(target, offset);
        Ok(offset)
    }

    /// A NUL-terminated string of a merged string section, copied once.
    fn string(&mut self, bytes: &[u8], alignment: u64) -> Result<(SymbolId, i64)> {
        let section = *self.strings.get_or_insert_with(|| {
            self.writer.add_section(Vec::new(), b".rodata.klp_strings".to_vec(), SectionKind::ReadOnlyData)
        });
        let offset = match self.string_offsets.get(bytes) {
            Some(&offset) => offset,
            None => {
                let offset = self.writer.append_section_data(section, bytes, alignment);
                self.extracted.loaded_bytes += bytes.len() as u64;
                self.extracted.constants += 1;
                self.string_offsets.insert(bytes.to_vec(), offset);
                offset
            }
        };
        Ok((self.writer.section_symbol(section), offset as i64))
    }

    /// A constant of a merged constant section, copied once.
    fn constant(&mut self, bytes: &[u8], alignment: u64) -> Result<(SymbolId, i64)> {
        let section = *self.constants.get_or_insert_with(|| {
            self.writer.add_section(Vec::new(), b".rodata.klp_constants".to_vec(), SectionKind::ReadOnlyData)
        });
        let key = (bytes.to_vec(), alignment);
        let offset = match self.constant_offsets.get(&key) {
            Some(&offset) => offset,
            None => {
                let offset = self.writer.append_section_data(section, bytes, alignment);
                self.extracted.loaded_bytes += bytes.len() as u64;
                self.extracted.constants += 1;
                self.constant_offsets.insert(key, offset);
                offset
            }
        };
        Ok((self.writer.section_symbol(section), offset as i64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture_object::compile_with;
    use crate::object_diff::diff_builds;

    const BASE: &str = r#"#![no_std]
use core::sync::atomic::{AtomicU64, Ordering};
pub static COUNT: AtomicU64 = AtomicU64::new(0);
#[inline(never)]
pub fn helper(x: u64) -> u64 { x.rotate_left(7) ^ 0x55 }
#[inline(never)]
#[unsafe(no_mangle)]
pub fn target(x: u64) -> &'static str {
    COUNT.fetch_add(helper(x), Ordering::Relaxed);
    if x > 3 { "many" } else { "few" }
}
"#;

    /// The fix: `target` counts in a new static too, through a new function, and says "plenty".
    const PATCHED: &str = r#"#![no_std]
use core::sync::atomic::{AtomicU64, Ordering};
pub static COUNT: AtomicU64 = AtomicU64::new(0);
pub static FRESH: AtomicU64 = AtomicU64::new(5);
#[inline(never)]
pub fn helper(x: u64) -> u64 { x.rotate_left(7) ^ 0x55 }
#[inline(never)]
pub fn fresh_helper(x: u64) -> u64 { FRESH.fetch_add(x, Ordering::Relaxed) }
#[inline(never)]
#[unsafe(no_mangle)]
pub fn target(x: u64) -> &'static str {
    COUNT.fetch_add(helper(x), Ordering::Relaxed);
    fresh_helper(x);
    if x > 3 { "plenty" } else { "few" }
}
"#;

    /// A kernel that has the symbols named.
    struct FakeKernel(BTreeSet<String>);

    impl Kernel for FakeKernel {
        fn klp_symbol(&self, mangled: &str) -> Result<Option<String>> {
            Ok(self.0.contains(mangled).then(|| format!("{KERNEL_SYMBOL_PREFIX}{mangled},0")))
        }
    }

    const DESCRIPTION: &str = "klp-patch 1\nname fixture\nbuild-id 00112233445566778899aabbccddeeff00112233\n\
                               toc kernel\nabi-checked\nreplace fixture::target target\n";

    fn named<'a>(names: impl IntoIterator<Item = &'a String>, part: &str) -> String {
        names.into_iter().find(|name| name.contains(part)).cloned().unwrap_or_else(|| panic!("no {part}"))
    }

    /// Builds both fixtures and extracts `target` for a kernel holding the base's symbols but `missing`.
    fn extracted(test: &str, missing: &str) -> (Result<Extracted>, Vec<u8>) {
        let options = ["-C", "opt-level=2"];
        let base_bytes = compile_with(test, "base", BASE, "fixture", &options);
        let patched_bytes = compile_with(test, "patched", PATCHED, "fixture", &options);
        let base = Build::parse(&base_bytes).unwrap();
        let patched = Build::parse(&patched_bytes).unwrap();
        let diff = diff_builds(&base, &patched).unwrap();
        assert_eq!(diff.changed.iter().map(|changed| changed.name.as_str()).collect::<Vec<_>>(), ["target"]);
        let kernel_names: BTreeSet<String> = base
            .functions
            .keys()
            .chain(base.statics.keys())
            .filter(|name| !missing.is_empty() && !name.contains(missing) || missing.is_empty())
            .cloned()
            .collect();
        let replaced = BTreeSet::from(["target".to_string()]);
        let new_code: BTreeSet<String> = diff.added.iter().cloned().collect();
        let new_statics: BTreeSet<String> = diff.added_statics.iter().cloned().collect();
        let rules = Rules { replaced: &replaced, new_code: &new_code, new_statics: &new_statics };
        (extract(&patched, &rules, &FakeKernel(kernel_names), DESCRIPTION), patched_bytes)
    }

    #[test]
    fn klp_module_places_each_reference_and_the_loader_links_it() {
        let (extracted, patched_bytes) = extracted("klp-module-places", "");
        let extracted = extracted.unwrap();
        let count = named(&extracted.kernel_references, "5COUNT");
        let helper = named(&extracted.kernel_references, "6helper");
        assert_eq!(extracted.kernel_references.len(), 2, "{:?}", extracted.kernel_references);
        assert_eq!(extracted.copied_statics.len(), 1);
        assert!(extracted.copied_statics[0].contains("5FRESH"), "{extracted:?}");
        assert!(extracted.copied_functions.iter().any(|name| name.contains("12fresh_helper")), "{extracted:?}");

        let module = object::File::parse(&*extracted.object).unwrap();
        let mut undefined: Vec<String> = module
            .symbols()
            .filter(|symbol| symbol.is_undefined() && !symbol.name().unwrap_or("").is_empty())
            .map(|symbol| symbol.name().unwrap().to_string())
            .collect();
        undefined.sort();
        let mut expected = vec![
            ".TOC.".to_string(),
            format!("{KERNEL_SYMBOL_PREFIX}{count},0"),
            format!("{KERNEL_SYMBOL_PREFIX}{helper},0"),
        ];
        expected.sort();
        assert_eq!(undefined, expected, "a static the kernel has is never copied; new code and statics are");
        // The replacement is global, with its local entry as the compiler wrote it.
        let original = object::File::parse(&*patched_bytes).unwrap();
        let entry_flags = |file: &object::File| {
            let symbol = file.symbols().find(|symbol| symbol.name() == Ok("target")).unwrap();
            (symbol.is_global(), symbol.flags(), symbol.address(), symbol.size())
        };
        let (global, flags, address, size) = entry_flags(&module);
        assert!(global);
        assert_eq!((flags, address, size), {
            let (_, f, a, s) = entry_flags(&original);
            (f, a, s)
        });
        let loaded: Vec<u8> = module
            .sections()
            .filter(|section| section.name().is_ok_and(|name| name.starts_with(".rodata")))
            .flat_map(|section| section.data().unwrap().to_vec())
            .collect();
        assert!(loaded.windows(6).any(|window| window == b"plenty"), "the changed literal is in the module");

        // The kernel's loader links it on the kernel's TOC, the klp symbols to the kernel's addresses.
        let image = portable::module::parse(&extracted.object).unwrap();
        let (base, kernel_toc, count_address, helper_address) =
            (0x2000_0000u64, 0x1000_8000u64, 0x1100_0000u64, 0x1000_4000u64);
        let mut memory = vec![0u8; image.memory_size()];
        let count_symbol = format!("{KERNEL_SYMBOL_PREFIX}{count},0");
        let helper_symbol = format!("{KERNEL_SYMBOL_PREFIX}{helper},0");
        let linked = image
            .link(&mut memory, base, kernel_toc, &mut |name| {
                (name == count_symbol).then_some(count_address).or((name == helper_symbol).then_some(helper_address))
            })
            .unwrap();
        assert_eq!(linked.toc, kernel_toc, "toc kernel: the module's .TOC. is the kernel's");
        let toc = linked.sections.iter().find(|section| section.name == ".toc").unwrap();
        let start = (toc.address - base) as usize;
        let entries: Vec<u64> = memory[start..start + toc.size as usize]
            .chunks_exact(8)
            .map(|entry| u64::from_le_bytes(entry.try_into().unwrap()))
            .collect();
        assert!(entries.contains(&count_address), "COUNT is the kernel's instance: {entries:x?}");
        let fresh = linked.symbols.iter().find(|symbol| symbol.name.contains("5FRESH")).unwrap();
        assert!(entries.contains(&fresh.address), "FRESH is the module's: {entries:x?}");
        assert!(entries.iter().all(|&entry| entry != 0), "every entry filled: {entries:x?}");
    }

    #[test]
    fn klp_module_copies_a_replaced_function_s_jump_table() {
        // 70 arms: a jump table (LLVM's PowerPC minimum is 64 entries), in
        // `.rodata.dispatch`, reached through a `.toc` entry; its entries are
        // offsets from a label inside `dispatch` (no relocations), so the
        // module must carry the table with the function.
        let source = |first: u64| {
            let helpers: String = (0..6)
                .map(|n| format!("#[inline(never)] pub fn f{n}(y: u64) -> u64 {{ y.rotate_left({n}) ^ {n} }}\n"))
                .collect();
            let arms: String = (0..70u64)
                .map(|arm| {
                    format!("{arm} => f{}(y).wrapping_add({}), ", arm % 6, if arm == 0 { first } else { arm * 7919 })
                })
                .collect();
            format!(
                "#![no_std]\n{helpers}#[inline(never)]\n#[unsafe(no_mangle)]\npub fn dispatch(x: u64, y: u64) -> u64 {{ match x {{ {arms}_ => 0 }} }}\n"
            )
        };
        let options = ["-C", "opt-level=2"];
        let base_bytes = compile_with("klp-module-jump", "base", &source(11), "fixture", &options);
        let patched_bytes = compile_with("klp-module-jump", "patched", &source(13), "fixture", &options);
        let (base, patched) = (Build::parse(&base_bytes).unwrap(), Build::parse(&patched_bytes).unwrap());
        let diff = diff_builds(&base, &patched).unwrap();
        assert_eq!(diff.changed.iter().map(|changed| changed.name.as_str()).collect::<Vec<_>>(), ["dispatch"]);
        let table = |file: &object::File| {
            file.section_by_name(".rodata.dispatch").map(|section| section.data().unwrap().to_vec())
        };
        let original = table(&patched.file).expect("the fixture compiles to a jump table");
        let replaced = BTreeSet::from(["dispatch".to_string()]);
        let none = BTreeSet::new();
        let rules = Rules { replaced: &replaced, new_code: &none, new_statics: &none };
        let helpers: BTreeSet<String> = patched.functions.keys().filter(|name| *name != "dispatch").cloned().collect();
        let kernel = FakeKernel(helpers.iter().cloned().chain(["dispatch".to_string()]).collect());
        let description = DESCRIPTION.replace("fixture::target target", "dispatch dispatch");
        let extracted = extract(&patched, &rules, &kernel, &description).unwrap();
        let module = object::File::parse(&*extracted.object).unwrap();
        assert_eq!(table(&module), Some(original), "the table travels with its function, unchanged");
        let kernel_references = &extracted.kernel_references;
        assert!(kernel_references.len() >= 5 && kernel_references.is_subset(&helpers), "the helpers stay the kernel's");
        let image = portable::module::parse(&extracted.object).unwrap();
        let mut memory = vec![0u8; image.memory_size()];
        image.link(&mut memory, 0x2000_0000, 0x1000_8000, &mut |_| Some(0x1000_4000)).unwrap();
    }

    #[test]
    fn klp_module_refuses_a_second_instance_of_a_static() {
        // The running kernel lacks COUNT (say, only the compared build has it): copying it would fork its state.
        let (extracted, _) = extracted("klp-module-refuses", "5COUNT");
        let error = format!("{:#}", extracted.unwrap_err());
        assert!(error.contains("fixture::COUNT") && error.contains("second instance"), "{error}");
    }
}
