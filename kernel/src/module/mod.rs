//! Patch modules: verify a signed object, link it into kernel memory, and hand its patch to the livepatch core.
//!
//! A module is a relocatable ELF object built apart from the kernel (see
//! `patches/`), with its own TOC, signed with the project's key. Loading:
//! check the ed25519 signature against the public key built into the kernel,
//! parse and link it (`portable::module`: sections placed, `.TOC.` defined,
//! kernel calls through stubs that keep r2), flush the instruction cache, then
//! add and enable its patch. Every failure frees what was allocated and
//! leaves the kernel as it was.
pub mod busy;
pub mod channel;
pub mod embedded;
mod memory;

use crate::arch::cache;
use crate::livepatch::{self, Function, LivepatchError, Object, Patch, PlanError};
use crate::sync::Mutex;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use memory::ModuleMemory;
// The pattern freed module memory is filled with, for the in-kernel tests.
#[cfg(feature = "ktest")]
pub use memory::POISON;
use portable::module::{self, LinkedModule, ModuleError};

/// The public half of the project's signing key (xtask generates the pair).
static PUBLIC_KEY: &[u8; 32] = include_bytes!(concat!(env!("OUT_DIR"), "/patch_public_key.bin"));

/// A module in memory, with its patch.
pub struct LoadedModule {
    pub name: String,
    pub memory: ModuleMemory,
    pub linked: LinkedModule,
    /// Set while `load` enables its patch: `unload` leaves it alone until
    /// `load` has finished (and, if the enable failed, taken it back).
    pub loading: bool,
}

/// Loaded modules, for `klp list`, unloading and the debugger.
static MODULES: Mutex<Vec<LoadedModule>> = Mutex::new(Vec::new());

/// Why a module was refused or could not be unloaded.
#[derive(Debug)]
pub enum LoadError {
    Signature(&'static str),
    Format(ModuleError),
    NoMemory(usize),
    AlreadyLoaded(String),
    NotLoaded(String),
    /// The module, and who still holds it.
    Busy(String, busy::Holder),
    /// The module's patch is still being disabled: the threads that block the transition.
    InTransition(String, Vec<livepatch::Blocked>),
    /// The module's patch was forced (`klp force`): a thread may still run its code.
    Forced(String),
    Livepatch(LivepatchError),
}

impl fmt::Display for LoadError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Signature(why) => write!(formatter, "module refused: {why}"),
            LoadError::Format(error) => write!(formatter, "module refused: {error}"),
            LoadError::NoMemory(bytes) => write!(formatter, "no memory for a {bytes}-byte module"),
            LoadError::AlreadyLoaded(name) => write!(formatter, "a patch named '{name}' is already loaded"),
            LoadError::NotLoaded(name) => write!(formatter, "no module named '{name}' is loaded"),
            LoadError::Busy(name, holder) => {
                write!(
                    formatter,
                    "module '{name}' is in use: thread {} {} {:#x} in its code (its patch is disabled now); try again",
                    holder.thread,
                    match holder.cpu {
                        Some(cpu) => alloc::format!("(running on CPU {cpu}) holds"),
                        None => String::from("holds"),
                    },
                    holder.address
                )
            }
            LoadError::InTransition(name, blocked) => {
                write!(formatter, "module '{name}' is in use: its patch is being disabled")?;
                for blocked in blocked {
                    write!(formatter, "; {blocked}")?;
                }
                write!(formatter, " (the transition goes on; unload again later, or `klp force {name}`)")
            }
            LoadError::Forced(name) => write!(
                formatter,
                "module '{name}' stays loaded: its patch's transition was forced, so a thread may still run its code"
            ),
            LoadError::Livepatch(error) => write!(formatter, "{error}"),
        }
    }
}

/// Checks the signature of a signed module file; returns the object bytes.
pub fn verify(file: &[u8]) -> Result<&[u8], LoadError> {
    let (object, signature) = module::split_signed(file).map_err(LoadError::Format)?;
    let key = ed25519_compact::PublicKey::new(*PUBLIC_KEY);
    let signature = ed25519_compact::Signature::new(*signature);
    key.verify(object, &signature)
        .map_err(|_| LoadError::Signature("bad signature (not signed with this kernel's key, or altered)"))?;
    Ok(object)
}

/// Verifies, links, and enables the patch in a signed module file. Returns the patch name.
pub fn load(file: &[u8]) -> Result<String, LoadError> {
    let object = verify(file)?;
    let image = module::parse(object).map_err(LoadError::Format)?;
    let mut memory = ModuleMemory::allocate(image.memory_size(), image.memory_alignment())
        .ok_or(LoadError::NoMemory(image.memory_size()))?;
    let base = memory.address();
    let linked =
        image.link(memory.bytes_mut(), base, &mut |name| livepatch::api::lookup(name)).map_err(LoadError::Format)?;
    cache::synchronize_instructions(base, memory.size() as u64);
    let name = linked.description.name.clone();
    if MODULES.lock().iter().any(|module| module.name == name) {
        return Err(LoadError::AlreadyLoaded(name));
    }
    let mut patch = patch_of(&linked)?;
    describe_more(&mut patch, &linked)?;
    livepatch::add(patch).map_err(|error| match error {
        LivepatchError::Plan(PlanError::DuplicatePatch(name)) => LoadError::AlreadyLoaded(name),
        other => LoadError::Livepatch(other),
    })?;
    // gdb learns the module's symbols before any call can reach its code: a
    // breakpoint set in it before it arrived is in place for the first call.
    let sections: Vec<(&str, u64)> =
        linked.sections.iter().map(|section| (section.name.as_str(), section.address)).collect();
    crate::debug::module_loaded(&name, base, memory.size() as u64, linked.toc, &sections);
    drop(sections);
    crate::debug::klp_debug_module_event();
    // Listed before its patch is enabled: the transition counts the module's
    // whole memory as the patch's code, and the stack walker knows it as text.
    MODULES.lock().push(LoadedModule { name: name.clone(), memory, linked, loading: true });
    let enabled = livepatch::enable(&name);
    if let Some(module) = MODULES.lock().iter_mut().find(|module| module.name == name) {
        module.loading = false;
    }
    if let Err(error) = enabled {
        let memory = {
            let mut modules = MODULES.lock();
            let position = modules.iter().position(|module| module.name == name).expect("pushed above");
            modules.remove(position).memory
        };
        // Not loaded after all: gdb forgets it again.
        crate::debug::module_unloaded(base);
        crate::debug::klp_debug_module_event();
        // Removing a patch that was added a moment ago and never enabled has
        // nothing to refuse; should it fail all the same, the patch stays
        // added and names code in this module's memory, so the memory is
        // kept (leaked) rather than freed under it.
        if let Err(undo) = livepatch::remove(&name) {
            crate::println!(
                "klp: removing '{name}' after its failed enable failed too ({undo}); its module memory is kept"
            );
            core::mem::forget(memory);
        }
        return Err(LoadError::Livepatch(error));
    }
    Ok(name)
}

/// The livepatch description of a linked module: kernel functions replaced by module symbols.
fn patch_of(linked: &LinkedModule) -> Result<Patch, LoadError> {
    let mut functions = Vec::new();
    for replaced in &linked.description.functions {
        let symbol = linked
            .symbol(&replaced.new_symbol)
            .ok_or_else(|| LoadError::Format(ModuleError::ReplacementNotFunction(replaced.new_symbol.clone())))?;
        functions.push(Function {
            old_name: replaced.old_name.clone(),
            old_position: replaced.old_position,
            new_address: symbol.address,
            allow_inlined: replaced.allow_inlined,
        });
    }
    Ok(Patch {
        name: linked.description.name.clone(),
        objects: alloc::vec![Object { module: None, functions, ..Default::default() }],
        ..Default::default()
    })
}

/// Adds what the description says beyond the replacements: atomic
/// replace, the system states, and each callback (a function of the
/// module) on its object, which is added without functions if the patch
/// replaces none of that object's (an object with callbacks only).
fn describe_more(patch: &mut Patch, linked: &LinkedModule) -> Result<(), LoadError> {
    let description = &linked.description;
    patch.replace = description.atomic_replace;
    patch.states = description.states.iter().map(|&(id, version)| livepatch::SystemState { id, version }).collect();
    for line in &description.callbacks {
        let symbol = linked
            .symbol(&line.symbol)
            .filter(|symbol| symbol.function)
            .ok_or_else(|| LoadError::Format(ModuleError::ReplacementNotFunction(line.symbol.clone())))?;
        // Safety: a function of the module with the callback signature (the
        // klp_patch! macro checks it; the loader cannot check types).
        let callback: livepatch::Callback = unsafe { core::mem::transmute(symbol.address as usize) };
        let module = (line.object != livepatch::KERNEL_OBJECT).then(|| line.object.clone());
        let object = match patch.objects.iter().position(|object| object.module == module) {
            Some(index) => &mut patch.objects[index],
            None => {
                patch.objects.push(Object { module, ..Default::default() });
                patch.objects.last_mut().expect("pushed")
            }
        };
        let slot = match line.kind.as_str() {
            "pre_patch" => &mut object.callbacks.pre_patch,
            "post_patch" => &mut object.callbacks.post_patch,
            "pre_unpatch" => &mut object.callbacks.pre_unpatch,
            _ => &mut object.callbacks.post_unpatch,
        };
        *slot = Some(callback);
    }
    Ok(())
}

/// How long `unload` waits for the patch's disable transition.
pub const UNLOAD_WAIT_MILLISECONDS: u64 = 200;
/// How long it then retries the final scan while it finds a thread inside
/// the module: a thread that entered it through a pointer the module handed
/// out and leaves within many time slices (`busy`: what a preempted
/// thread can still use counts, not its stale registers or slots).
pub const BUSY_WAIT_MILLISECONDS: u64 = 50;

/// Disables a module's patch, waits until its disable transition is
/// complete and no thread is inside the module, and frees its memory.
///
/// Safety comes from the consistency model: the disable transition
/// completes only once every thread has been seen, with a reliable stack
/// walk, holding none of the module's memory on its stack (the module's
/// whole memory is code the transition checks), and from then on no call
/// reaches the module (the handler's table no longer names it, after a
/// grace period). If the transition does not complete within
/// `UNLOAD_WAIT_MILLISECONDS`, `InTransition` names the threads blocking it;
/// the patch stays in transition and the module loaded (unloading again
/// waits again). A final scan (`busy::inside`, every thread's stack and
/// registers with the other CPUs stopped) catches a thread that entered the
/// module another way (a function pointer it handed out); it returns
/// `Busy`. Then the patch and module are removed, and the memory is freed
/// (poisoned first) after `thread::synchronize`: a caller handed a pointer
/// into the module just before gets its time slice first. A module whose
/// patch was forced is never unloaded (`Forced`).
pub fn unload(name: &str) -> Result<(), LoadError> {
    // A module `load` is still enabling counts as not loaded yet.
    let memory_of = |name: &str| {
        MODULES
            .lock()
            .iter()
            .find(|module| module.name == name && !module.loading)
            .map(|module| module.memory.address()..module.memory.address() + module.memory.size() as u64)
            .ok_or_else(|| LoadError::NotLoaded(String::from(name)))
    };
    memory_of(name)?;
    if livepatch::was_forced(name) {
        return Err(LoadError::Forced(String::from(name)));
    }
    match livepatch::disable(name) {
        Ok(_)
        | Err(LivepatchError::Plan(PlanError::NotEnabled(_)))
        | Err(LivepatchError::AlreadyInTransition { enabling: false, .. }) => {}
        Err(error) => return Err(LoadError::Livepatch(error)),
    }
    if livepatch::in_transition(name)
        && let livepatch::Progress::Pending(blocked) = livepatch::wait_for_transition(UNLOAD_WAIT_MILLISECONDS)
    {
        return Err(LoadError::InTransition(String::from(name), blocked));
    }
    let deadline = crate::arch::registers::timebase() + crate::time::milliseconds_to_timebase(BUSY_WAIT_MILLISECONDS);
    let module = loop {
        {
            let _preempt = crate::thread::preempt_disable();
            let memory = memory_of(name)?;
            match busy::inside(memory) {
                None => {
                    // Refused if the patch was enabled again meanwhile, or
                    // forced (`klp force` during the wait above).
                    livepatch::remove(name).map_err(|error| match error {
                        LivepatchError::Forced(name) => LoadError::Forced(name),
                        other => LoadError::Livepatch(other),
                    })?;
                    let mut modules = MODULES.lock();
                    let position = modules
                        .iter()
                        .position(|module| module.name == name)
                        .expect("found above, preemption off since");
                    break modules.remove(position);
                }
                Some(holder) if crate::arch::registers::timebase() >= deadline => {
                    return Err(LoadError::Busy(String::from(name), holder));
                }
                Some(_) => {}
            }
        }
        // The holder must run to leave (or to overwrite a stale value): kick
        // every other CPU (under round-robin TCG an IPI hands that vCPU its
        // turn), give up this one, and look again.
        for cpu in crate::arch::percpu::online_cpus().without(crate::arch::percpu::smp_processor_id()).iter() {
            crate::arch::smp::send_reschedule(cpu);
        }
        crate::thread::yield_now();
        crate::arch::smp::confer();
    };
    crate::debug::module_unloaded(module.memory.address());
    crate::thread::synchronize();
    drop(module);
    crate::debug::klp_debug_module_event();
    Ok(())
}

/// Names, addresses and sizes of the loaded modules' sections, for `klp list` and gdb.
pub fn summaries() -> Vec<(String, u64, usize, u64)> {
    MODULES
        .lock()
        .iter()
        .map(|module| (module.name.clone(), module.memory.address(), module.memory.size(), module.linked.toc))
        .collect()
}

/// `SYMBOL+0xOFFSET [MODULE]` for an address in a loaded module's memory:
/// the module's function (or other symbol) containing it, as the module's
/// symbol table names it; `MODULE+0xOFFSET` from the module's start when no
/// symbol covers it. `None` outside every module.
pub fn symbolize(address: u64) -> Option<String> {
    let modules = MODULES.lock();
    let module = modules.iter().find(|module| {
        (module.memory.address()..module.memory.address() + module.memory.size() as u64).contains(&address)
    })?;
    let covering = |symbol: &&module::ModuleSymbol| {
        !symbol.name.is_empty() && symbol.address <= address && address - symbol.address < symbol.size.max(1)
    };
    // A function first, a global one before a local one of the same place.
    let symbol = module.linked.symbols.iter().filter(covering).max_by_key(|symbol| (symbol.function, symbol.global));
    Some(match symbol {
        Some(symbol) => alloc::format!("{}+{:#x} [{}]", symbol.name, address - symbol.address, module.name),
        None => alloc::format!("{}+{:#x}", module.name, address - module.memory.address()),
    })
}

/// The memory of every loaded module.
pub fn memory_ranges() -> Vec<core::ops::Range<u64>> {
    MODULES
        .lock()
        .iter()
        .map(|module| module.memory.address()..module.memory.address() + module.memory.size() as u64)
        .collect()
}

/// Whether `address` lies in the memory of a loaded module.
pub fn contains(address: u64) -> bool {
    MODULES.lock().iter().any(|module| {
        (module.memory.address()..module.memory.address() + module.memory.size() as u64).contains(&address)
    })
}

/// The TOC pointer of a loaded module.
pub fn toc_of(name: &str) -> Option<u64> {
    MODULES.lock().iter().find(|module| module.name == name).map(|module| module.linked.toc)
}

/// The (global entry, ftrace site) of the function `name` (the `position`th
/// of that name, from 1, when given) in the loaded target module `module`,
/// checked to be patchable as `livepatch::resolve` checks kernel functions.
/// Works from before `livepatch::module_coming` until after
/// `livepatch::module_going` for that module.
pub fn resolve_function(module: &str, name: &str, position: Option<usize>) -> Result<(u64, u64), LivepatchError> {
    let _ = (name, position);
    Err(LivepatchError::UnknownObject(String::from(module)))
}
