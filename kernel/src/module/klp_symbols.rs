//! Klp relocations: a patch's references to the kernel's (`.klp.sym.vmlinux.SYMBOL,N`) and a target module's own symbols (`.klp.sym.MODULE.SYMBOL,N`), the module's resolved when it is there and cleared when it goes.
//!
//! Module `vmlinux` is the kernel: SYMBOL is the ELF (mangled) name of one
//! of its functions (resolving to its global entry) or data objects, found
//! in the klp table xtask fills (`symbols::klp_table`) by the rule of
//! `SymbolTable::klp_address`; a name it lacks, or one several symbols share
//! with position 0, refuses the patch (`UndefinedSymbol`, before anything is
//! listed). The kernel never goes, so these references are not recorded for
//! a relink.
//!
//! When a patch module is linked, each `.klp.sym.MODULE.SYMBOL,N` it
//! refers to resolves to that symbol of target module MODULE if MODULE is
//! loaded (a missing symbol refuses the patch, `UndefinedSymbol`), or else
//! to `UNRESOLVED`. A patch that refers to any target module keeps a copy
//! of its object (`LoadedModule::klp`), so that its relocations against
//! MODULE can be applied again (`ModuleImage::relink_symbols`): when MODULE
//! loads (after its sites are registered, before
//! `livepatch::module_coming`; an error refuses MODULE's load), and when it
//! goes (after `livepatch::module_going`), back to `UNRESOLVED`.
//!
//! `UNRESOLVED` is a zeroed kernel buffer: a patch reading a static of a
//! module that is not loaded reads zeros, a write lands in the buffer
//! (shared by every such reference), and a call branches into zeros, which
//! is an illegal instruction: a program check, an Oops naming the address,
//! never another module's code. Code of a patch that reaches a module's
//! symbols runs, by the livepatch core's rules, only while that module is
//! loaded; `UNRESOLVED` is the net under a patch that breaks them.
//!
//! Concurrency: the words rewritten are a patch's `.toc` entries (one
//! aligned doubleword each, so a reader sees the old or the new address) and
//! its call stubs for the module's functions (several words: a thread
//! running such a stub while it changes could run a mix, so none may, which
//! the rule above guarantees: the module is not loaded before, not yet
//! applied by `module_coming`, or already taken off by `module_going`). The
//! rewrite happens under the module list's lock; the instruction cache is
//! flushed over the patch's memory before it is released.
use super::{LoadError, LoadedModule, MODULES};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::AtomicU64;
use portable::module::{self, KLP_SYMBOL_PREFIX, ModuleSymbol, parse_klp_symbol};

/// What a reference to a symbol of a module that is not loaded points at (see above).
static UNRESOLVED: [AtomicU64; 64] = [const { AtomicU64::new(0) }; 64];

/// The address klp references of absent modules resolve to.
pub fn unresolved() -> u64 {
    UNRESOLVED.as_ptr() as u64
}

/// What a patch keeps to relink its klp references.
pub struct KlpReferences {
    /// The patch's object (parsed again for each relink).
    pub object: Vec<u8>,
    /// The target modules it refers to.
    pub modules: Vec<String>,
}

/// The address of symbol `symbol` (the `position`th of that name, from 1;
/// 0: the only one) among `symbols`.
fn find(symbols: &[ModuleSymbol], symbol: &str, position: usize) -> Option<u64> {
    let mut named = symbols.iter().filter(|candidate| candidate.name == symbol);
    match position {
        0 => {
            let first = named.next()?;
            named.next().is_none().then_some(first.address)
        }
        position => named.nth(position - 1).map(|found| found.address),
    }
}

/// Resolves a patch's undefined symbol `name` at its link: a kernel export,
/// or a klp symbol (recording its module in `modules`). None refuses the patch.
pub fn resolve_at_link(name: &str, modules: &mut Vec<String>) -> Option<u64> {
    let Some(klp) = parse_klp_symbol(name) else {
        return crate::livepatch::api::lookup(name);
    };
    if klp.module == crate::livepatch::KERNEL_OBJECT {
        return crate::symbols::klp_table()?.klp_address(klp.symbol, klp.position).ok();
    }
    if !modules.iter().any(|module| module == klp.module) {
        modules.push(String::from(klp.module));
    }
    let listed = MODULES.lock();
    match listed.iter().find(|loaded| loaded.name == klp.module && loaded.is_target() && !loaded.exited) {
        Some(target) => find(&target.linked.symbols, klp.symbol, klp.position),
        None => Some(unresolved()),
    }
}

/// Applies again the klp relocations of every patch that refers to target
/// module `module`: against `symbols` (the module came), or `UNRESOLVED`
/// (None: it goes). Caller: holds no module lock.
pub fn relink(module: &str, symbols: Option<&[ModuleSymbol]>) -> Result<(), LoadError> {
    let prefix = format!("{KLP_SYMBOL_PREFIX}{module}.");
    let select = |name: &str| name.starts_with(prefix.as_str());
    let mut listed = MODULES.lock();
    for patch in listed.iter_mut() {
        let LoadedModule { memory, linked, klp: Some(klp), .. } = patch else { continue };
        if !klp.modules.iter().any(|referred| referred == module) {
            continue;
        }
        let image = module::parse(&klp.object).map_err(LoadError::Format)?;
        let base = memory.address();
        let mut resolve = |name: &str| {
            let klp = parse_klp_symbol(name)?;
            match symbols {
                Some(symbols) => find(symbols, klp.symbol, klp.position),
                None => Some(unresolved()),
            }
        };
        let written = image.relink_symbols(memory.bytes_mut(), base, linked.toc, &select, &mut resolve);
        crate::arch::cache::synchronize_instructions(base, memory.size() as u64);
        written.map_err(|error| {
            LoadError::Site(format!("patch '{}' refers to a symbol '{module}' lacks: {error}", patch.name))
        })?;
    }
    Ok(())
}
