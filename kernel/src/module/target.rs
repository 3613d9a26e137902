//! Loadable target modules: ordinary modules (a `.klp.module` description) with an init, an exit and ftrace sites that live patches may redirect.
//!
//! Same signed object format, checks and linker as patch modules
//! (`module::load` verifies and links, then comes here). Loading, in order
//! (each failure undoes every step before it, in reverse, and refuses the load):
//!
//! 1. **Sites.** The module's `__patchable_function_entries` records (its
//!    functions' global entries, relocated) are validated and prepared as
//!    the kernel's are at boot and published as one more site table
//!    (`trace::add_module_sites`): ftrace filters, the tracers and
//!    `resolve_function` find them from here on.
//! 2. **Listed.** The module joins `MODULES` (marked `loading`, so `unload`
//!    leaves it alone): `memory_ranges`, `contains`, `symbolize` and
//!    `busy` cover it, and gdb learns its symbols.
//! 3. **`livepatch::module_coming(name)`**: patches naming the module as
//!    their object are applied to it. An error refuses the load (after
//!    the core undid its own part).
//! 4. **init** (`extern "C" fn() -> i32`): non-zero refuses the load, and
//!    `livepatch::module_going(name)` takes back what step 3 applied, as
//!    Linux calls `klp_module_going` when `do_init_module` fails.
//!
//! Unloading (`module::unload` for a target module): refused while it is
//! still loading or another unload of it runs; runs **exit** once (a thread of the module's own is
//! stopped by it), then **`livepatch::module_going(name)`**; then waits for
//! every thread to be out of the module's memory (`busy::inside`, every
//! stack and register with the machine stopped, retried for
//! `BUSY_WAIT_MILLISECONDS`): if one is still inside, `Busy` names it and
//! the module stays listed, marked exited (unloading again only repeats
//! the wait). Then it leaves `MODULES` (in the same round as the check
//! that found nobody inside), its sites are released
//! (`trace::remove_module_sites`: out of every ftrace ops first), and after a grace
//! period (`thread::synchronize`) its memory is poisoned and freed.
use super::{LoadError, LoadedModule, MODULES, ModuleMemory};
use crate::{livepatch, trace};
use alloc::string::String;
use alloc::vec::Vec;
use portable::module::{LinkedModule, ModuleDescription};

/// The section the compiler records each function's ftrace site in.
pub const SITES_SECTION: &str = "__patchable_function_entries";

/// The module's (global entry, name) of every function with an ftrace
/// site, read from its linked `__patchable_function_entries` sections; an
/// error names a record that is not one of the module's functions.
fn site_functions(memory: &ModuleMemory, linked: &LinkedModule) -> Result<Vec<(u64, String)>, LoadError> {
    let base = memory.address();
    let mut functions = Vec::new();
    for section in linked.sections.iter().filter(|section| section.name == SITES_SECTION) {
        if !section.size.is_multiple_of(8) || !section.address.is_multiple_of(8) {
            return Err(LoadError::Site(alloc::format!(
                "{SITES_SECTION} at {:#x} is not a list of addresses",
                section.address
            )));
        }
        for offset in (0..section.size).step_by(8) {
            let at = (section.address + offset - base) as usize;
            let bytes = memory
                .bytes()
                .get(at..at + 8)
                .ok_or_else(|| LoadError::Site(String::from("record outside the module")))?;
            let function = u64::from_le_bytes(bytes.try_into().expect("8 bytes"));
            let symbol = linked
                .symbols
                .iter()
                .filter(|symbol| symbol.function && symbol.address == function)
                .max_by_key(|symbol| symbol.global)
                .ok_or_else(|| LoadError::Site(alloc::format!("record {function:#x} is no function of the module")))?;
            functions.push((function, symbol.name.clone()));
        }
    }
    Ok(functions)
}

/// Loads linked target module `linked` (already in `memory`, flushed): sites,
/// listed, `module_coming`, init. Returns its name.
pub(super) fn load(memory: ModuleMemory, linked: LinkedModule) -> Result<String, LoadError> {
    let description: ModuleDescription = linked.description.module().expect("a target module").clone();
    let name = description.name.clone();
    let base = memory.address();
    let range = base..base + memory.size() as u64;
    let text: Vec<core::ops::Range<u64>> = linked
        .sections
        .iter()
        .filter(|section| section.name.starts_with(".text"))
        .map(|section| section.address..section.address + section.size)
        .collect();
    let functions = site_functions(&memory, &linked)?;
    // Sites first: their registration checks the name against the other
    // module tables under its own lock, so of two loads of the same name at
    // once only one gets this far.
    trace::add_module_sites(&name, range, &text, functions).map_err(|refused| match refused {
        trace::SiteRefused::Duplicate => LoadError::AlreadyLoaded(name.clone()),
        trace::SiteRefused::Site { function, reason } => LoadError::Site(alloc::format!(
            "the ftrace site of {} is refused: {reason}",
            super::symbol_in(&linked, function).unwrap_or_else(|| alloc::format!("{function:#x}")),
        )),
    })?;
    let init = description.init.as_ref().and_then(|init| linked.symbol(init)).map(|symbol| symbol.address);
    let sections: Vec<(&str, u64)> =
        linked.sections.iter().map(|section| (section.name.as_str(), section.address)).collect();
    crate::debug::module_loaded(&name, base, memory.size() as u64, linked.toc, &sections);
    drop(sections);
    crate::debug::klp_debug_module_event();
    MODULES.lock().push(LoadedModule::loading(name.clone(), memory, linked, None));
    // The klp references of patches loaded before it: resolved now, before
    // `module_coming` applies those patches to it.
    let symbols = MODULES.lock().iter().find(|module| module.name == name).map(|module| module.linked.symbols.clone());
    if let Err(error) = super::klp_symbols::relink(&name, symbols.as_deref()) {
        // Those patches point back at `UNRESOLVED` (a failure on a later one leaves earlier ones relinked).
        let _ = super::klp_symbols::relink(&name, None);
        forget(&name);
        return Err(error);
    }
    drop(symbols);
    if let Err(error) = livepatch::module_coming(&name) {
        let _ = super::klp_symbols::relink(&name, None);
        forget(&name);
        return Err(LoadError::Livepatch(error));
    }
    if let Some(init) = init {
        // Safety: `init` is the global entry of the module's init function,
        // `extern "C" fn() -> i32` (klp_module! checks the type), linked and
        // flushed; an indirect call passes its address in r12, from which it
        // computes its own TOC.
        let init: extern "C" fn() -> i32 = unsafe { core::mem::transmute(init as usize) };
        let status = init();
        if status != 0 {
            livepatch::module_going(&name);
            let _ = super::klp_symbols::relink(&name, None);
            forget(&name);
            return Err(LoadError::InitFailed(name, status));
        }
    }
    if let Some(module) = MODULES.lock().iter_mut().find(|module| module.name == name) {
        module.loading = false;
    }
    Ok(name)
}

/// Takes back a load that failed after the module was listed: sites, list,
/// gdb, then the memory after a grace period. No thread can be inside: its
/// init did not run, or returned (an init that left a thread running in
/// the module while failing breaks its contract; `busy` would not see it here).
fn forget(name: &str) {
    trace::remove_module_sites(name);
    let module = {
        let mut modules = MODULES.lock();
        let position = modules.iter().position(|module| module.name == name).expect("listed by load");
        modules.remove(position)
    };
    crate::debug::module_unloaded(module.memory.address());
    crate::debug::klp_debug_module_event();
    crate::thread::synchronize();
    drop(module);
}

/// The exit step of an unload (the caller marked the module `unloading`):
/// runs the module's exit, then `module_going`, once (marks the module exited).
pub(super) fn exit(name: &str) {
    let exit = {
        let mut modules = MODULES.lock();
        let Some(module) = modules.iter_mut().find(|module| module.name == name && !module.loading) else {
            return;
        };
        if module.exited {
            return;
        }
        module.exited = true;
        let description = module.linked.description.module().expect("a target module");
        description.exit.as_ref().and_then(|exit| module.linked.symbol(exit)).map(|symbol| symbol.address)
    };
    if let Some(exit) = exit {
        // Safety: the global entry of the module's `extern "C" fn()` exit
        // (klp_module! checks the type); the module stays loaded meanwhile
        // (only `unload` removes it, and this is its caller).
        let exit: extern "C" fn() = unsafe { core::mem::transmute(exit as usize) };
        exit();
    }
    livepatch::module_going(name);
}

/// After the busy wait of an unload: patches referring to the module's
/// symbols point at `UNRESOLVED` again (not at the exit: a thread still in
/// a replacement that uses them, entered before the module went, reads the
/// module until it leaves). Cannot fail: `UNRESOLVED` resolves every
/// reference, and the patches' objects were parsed before.
pub(super) fn forget_references(name: &str) {
    if let Err(error) = super::klp_symbols::relink(name, None) {
        crate::println!("klp: clearing the references to '{name}' failed: {error}");
    }
}

/// The last step of an unload, once no thread is inside: releases the sites.
pub(super) fn release_sites(name: &str) {
    trace::remove_module_sites(name);
}
