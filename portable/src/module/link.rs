//! Linking a validated module at its address: copy the sections, write the stubs, relocate.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

use object::elf;

use super::Description;
use super::ModuleError;
use super::image::ModuleImage;
use super::relocation::{Fault, compute, write};
use super::relocation::{R_PPC64_REL16_HA, R_PPC64_TOC16_DS, R_PPC64_TOC16_HA};
use super::relocations::{Branch, Relocation};
use super::stub::{CALL_NOP, RESTORE_TOC, STUB_SIZE, STUB_WORDS, kernel_toc_stub_words, stub_words};
use super::symbols::{Definition, TOC_SYMBOL};

/// A module placed in memory and relocated: what the kernel needs to use and debug it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkedModule {
    /// The module's TOC pointer value (`.TOC.`): what its functions compute
    /// into r2; the kernel's for a module that says `toc kernel`.
    pub toc: u64,
    /// The loaded sections (not empty ones) by address (for gdb's `add-symbol-file`).
    pub sections: Vec<LoadedSection>,
    /// The symbols defined in loaded sections (not section or file symbols).
    pub symbols: Vec<ModuleSymbol>,
    /// The description from `.klp.patch` or `.klp.module`.
    pub description: Description,
}

/// A loaded section: where it went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedSection {
    /// The section's name, e.g. `.text.fixture_replacement`.
    pub name: String,
    /// Its address in module memory.
    pub address: u64,
    /// Its size in bytes.
    pub size: u64,
}

/// A symbol defined in the module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleSymbol {
    /// The name as written in the object (Rust symbols are mangled unless `#[no_mangle]`).
    pub name: String,
    /// Its address; for a function, the global entry point (expects r12 = this address).
    pub address: u64,
    /// `st_size`.
    pub size: u64,
    /// Bytes from the global to the local entry point (0, or 8 after a TOC set-up pair).
    pub local_entry_offset: u64,
    /// Whether the symbol is global (or weak) rather than local to the object.
    pub global: bool,
    /// Whether the symbol is a function (STT_FUNC).
    pub function: bool,
}

impl LinkedModule {
    /// The symbol `name`, a global one if there are several.
    pub fn symbol(&self, name: &str) -> Option<&ModuleSymbol> {
        let mut matches = self.symbols.iter().filter(|symbol| symbol.name == name);
        let first = matches.next()?;
        if first.global { Some(first) } else { matches.find(|symbol| symbol.global).or(Some(first)) }
    }
}

/// Resolves undefined symbols through the caller, once per name; `.TOC.` is the module's.
struct Resolver<'r, 'a> {
    resolve: &'r mut dyn FnMut(&str) -> Option<u64>,
    known: BTreeMap<&'a str, u64>,
    toc: u64,
}

impl<'a> Resolver<'_, 'a> {
    /// The address of undefined symbol `name`.
    fn address(&mut self, name: &'a str) -> Result<u64, ModuleError> {
        if name == TOC_SYMBOL {
            return Ok(self.toc);
        }
        if let Some(&address) = self.known.get(name) {
            return Ok(address);
        }
        let address = (self.resolve)(name).ok_or_else(|| ModuleError::UndefinedSymbol(String::from(name)))?;
        self.known.insert(name, address);
        Ok(address)
    }
}

/// Writes `words` at `offset` in `memory`; false if they do not fit.
fn put_words(memory: &mut [u8], offset: u64, words: &[u32]) -> bool {
    let Ok(start) = usize::try_from(offset) else { return false };
    let Some(target) = start.checked_add(words.len() * 4).and_then(|end| memory.get_mut(start..end)) else {
        return false;
    };
    for (chunk, word) in target.chunks_exact_mut(4).zip(words) {
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    true
}

impl<'a> ModuleImage<'a> {
    /// Copies the sections into `memory` (at least [`memory_size`](Self::memory_size) bytes,
    /// which the kernel has placed at address `base`, a multiple of
    /// [`memory_alignment`](Self::memory_alignment)), writes the stubs, applies every relocation
    /// and returns where everything went. `kernel_toc` is the kernel's TOC pointer (the r2 of
    /// kernel code): a patch whose description says `toc kernel` gets it as its `.TOC.`, and
    /// stubs that leave r2 alone ([`stub`](super::stub)); other modules ignore it. `resolve` maps an undefined symbol name (as written
    /// in the object) to an absolute address in the kernel, or `None`; it is called once per
    /// name. Only `memory[..memory_size]` is written. The caller flushes the instruction cache
    /// over `base..base + memory_size` before running module code.
    pub fn link(
        &self,
        memory: &mut [u8],
        base: u64,
        kernel_toc: u64,
        resolve: &mut dyn FnMut(&str) -> Option<u64>,
    ) -> Result<LinkedModule, ModuleError> {
        let size = self.memory_size();
        let alignment = self.memory_alignment();
        let given = memory.len();
        let Some(memory) = memory.get_mut(..size) else {
            return Err(ModuleError::MemoryTooSmall { needed: size, given });
        };
        if !base.is_multiple_of(alignment as u64) {
            return Err(ModuleError::MisalignedBase { base, alignment });
        }
        let Some(own_toc) = base.checked_add(self.layout.size).and_then(|_| base.checked_add(self.layout.toc)) else {
            return Err(ModuleError::AddressOverflow { base, size });
        };
        let toc = if self.kernel_toc { kernel_toc } else { own_toc };
        let mut resolver = Resolver { resolve, known: BTreeMap::new(), toc };

        memory.fill(0);
        for section in &self.sections {
            let Some(offset) = self.offset(section.index) else { continue };
            let start = offset as usize;
            if let Some(target) = memory.get_mut(start..start.saturating_add(section.bytes.len())) {
                target.copy_from_slice(section.bytes);
            }
        }
        for (&(name, addend), &slot) in &self.stubs {
            let target = resolver.address(name)?.wrapping_add(addend as u64);
            put_words(memory, self.stub_offset(slot), &self.stub_words(target));
        }
        self.each_relocation(|relocation| self.apply(&relocation, memory, base, &mut resolver))?;

        let mut sections: Vec<LoadedSection> = self
            .sections
            .iter()
            .filter_map(|section| {
                let offset = self.offset(section.index)?;
                (section.size > 0).then(|| LoadedSection {
                    name: String::from(section.name),
                    address: base + offset,
                    size: section.size,
                })
            })
            .collect();
        sections.sort_by_key(|section| section.address);
        let symbols = self
            .each_symbol()
            .filter(|symbol| !symbol.name.is_empty())
            .filter(|symbol| matches!(symbol.kind, elf::STT_FUNC | elf::STT_OBJECT | elf::STT_NOTYPE))
            .filter_map(|symbol| {
                let Definition::Loaded(index) = symbol.definition else { return None };
                Some(ModuleSymbol {
                    name: String::from(symbol.name),
                    address: base + self.offset(index)? + symbol.value,
                    size: symbol.size,
                    local_entry_offset: symbol.local_entry_offset,
                    global: symbol.global,
                    function: symbol.kind == elf::STT_FUNC,
                })
            })
            .collect();
        Ok(LinkedModule { toc, sections, symbols, description: self.description.clone() })
    }

    /// Applies again, to this module already linked at `base` in `memory`,
    /// the relocations against the undefined symbols `select` picks, with
    /// the addresses `resolve` gives now, and rewrites their call stubs;
    /// nothing else is written (the module's data keeps its state). For a
    /// patch's klp relocations (`.klp.sym.MODULE.SYMBOL,N`) when their
    /// target module comes or goes after the patch was linked. A call's
    /// `bl` to its stub and the TOC restore after it stay as `link` wrote
    /// them: only the stub's target changes. Returns how many fields and
    /// stubs were written. The caller flushes the instruction cache and
    /// makes sure no thread runs a stub being rewritten (its words change
    /// one at a time). `toc` is the module's `.TOC.` as `link` returned it
    /// ([`LinkedModule::toc`]).
    pub fn relink_symbols(
        &self,
        memory: &mut [u8],
        base: u64,
        toc: u64,
        select: &dyn Fn(&str) -> bool,
        resolve: &mut dyn FnMut(&str) -> Option<u64>,
    ) -> Result<usize, ModuleError> {
        let size = self.memory_size();
        let given = memory.len();
        let Some(memory) = memory.get_mut(..size) else {
            return Err(ModuleError::MemoryTooSmall { needed: size, given });
        };
        let mut resolver = Resolver { resolve, known: BTreeMap::new(), toc };
        let mut written = 0;
        for (&(name, addend), &slot) in &self.stubs {
            if select(name) {
                let target = resolver.address(name)?.wrapping_add(addend as u64);
                put_words(memory, self.stub_offset(slot), &self.stub_words(target));
                written += 1;
            }
        }
        self.each_relocation(|relocation| {
            let chosen = relocation.symbol.definition == Definition::Undefined && select(relocation.symbol.name);
            if !chosen || relocation.branch == Branch::External {
                return Ok(());
            }
            written += 1;
            self.apply(&relocation, memory, base, &mut resolver)
        })?;
        Ok(written)
    }

    /// The offset of loaded section `index` from the module base.
    fn offset(&self, index: usize) -> Option<u64> {
        self.layout.offsets.get(index).copied().flatten()
    }

    /// The words of this module's stub to `target`: without a TOC save for a `toc kernel` module.
    fn stub_words(&self, target: u64) -> [u32; STUB_WORDS] {
        if self.kernel_toc { kernel_toc_stub_words(target) } else { stub_words(target) }
    }

    /// The offset of stub `slot` from the module base.
    fn stub_offset(&self, slot: usize) -> u64 {
        self.layout.stubs + (slot * STUB_SIZE) as u64
    }

    /// Applies one relocation to `memory` (module memory placed at `base`).
    fn apply(
        &self,
        relocation: &Relocation<'a>,
        memory: &mut [u8],
        base: u64,
        resolver: &mut Resolver<'_, 'a>,
    ) -> Result<(), ModuleError> {
        let symbol = &relocation.symbol;
        // The patched section's name, for messages only.
        let section = || self.sections.get(relocation.target).map_or_else(String::new, |section| section.label());
        let unsupported = |reason| ModuleError::UnsupportedTarget {
            kind: relocation.kind,
            section: section(),
            offset: relocation.offset,
            symbol: String::from(symbol.name),
            reason,
        };
        let Some(target_offset) = self.offset(relocation.target) else {
            return Err(unsupported("the patched section is not loaded"));
        };
        let field_offset = target_offset + relocation.offset;
        let place = base + field_offset;
        let address = match symbol.definition {
            Definition::Loaded(index) => match self.offset(index) {
                Some(offset) => base + offset + symbol.value,
                None => return Err(unsupported("the symbol is in a section that is not loaded")),
            },
            Definition::Absolute => symbol.value,
            Definition::Undefined => resolver.address(symbol.name)?,
            Definition::Unloaded(_) => return Err(unsupported("the symbol is in a section that is not loaded")),
        };
        let (address, addend) = match relocation.branch {
            Branch::None => (address, relocation.addend),
            Branch::Local => (address.wrapping_add(symbol.local_entry_offset), relocation.addend),
            Branch::External => {
                let Some(&slot) = self.stubs.get(&(symbol.name, relocation.addend)) else {
                    return Err(unsupported("no stub was planned for this call"));
                };
                // One TOC base (`toc kernel`): whatever follows the call (a nop, or not) stays.
                if !self.kernel_toc {
                    let nop_offset = field_offset + 4;
                    let found = memory.get(nop_offset as usize..).and_then(|rest| rest.get(..4));
                    if found != Some(&CALL_NOP.to_le_bytes()[..]) {
                        return Err(ModuleError::MissingNop {
                            symbol: String::from(symbol.name),
                            section: section(),
                            offset: relocation.offset,
                            found: found.and_then(|bytes| Some(u32::from_le_bytes(bytes.try_into().ok()?))),
                        });
                    }
                    put_words(memory, nop_offset, &[RESTORE_TOC]);
                }
                (base + self.stub_offset(slot), 0)
            }
        };
        let field = compute(relocation.kind, address, addend, place, resolver.toc).map_err(|fault| {
            let (kind, offset, symbol) = (relocation.kind, relocation.offset, String::from(symbol.name));
            match fault {
                // A module on the kernel's TOC base reaches its `.toc` (and
                // computes `.TOC.`) relative to the kernel's TOC pointer.
                Fault::Overflow(value)
                    if self.kernel_toc
                        && (matches!(kind, R_PPC64_TOC16_HA | R_PPC64_TOC16_DS)
                            || (kind == R_PPC64_REL16_HA && symbol == TOC_SYMBOL)) =>
                {
                    ModuleError::KernelTocOutOfReach { kind, section: section(), offset, symbol, value }
                }
                Fault::Overflow(value) => {
                    ModuleError::RelocationOverflow { kind, section: section(), offset, symbol, value }
                }
                Fault::Misaligned(value) => {
                    ModuleError::MisalignedRelocation { kind, section: section(), offset, symbol, value }
                }
                Fault::Unsupported => ModuleError::UnsupportedRelocation { kind, section: section(), offset },
            }
        })?;
        let written = memory.get_mut(field_offset as usize..).is_some_and(|bytes| write(field, bytes));
        if !written {
            let size = self.sections.get(relocation.target).map_or(0, |section| section.size);
            return Err(ModuleError::RelocationOutOfSection {
                kind: relocation.kind,
                section: section(),
                offset: relocation.offset,
                size,
            });
        }
        Ok(())
    }
}
