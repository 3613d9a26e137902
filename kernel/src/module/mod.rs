//! Modules: verify a signed object, link it into kernel memory, and hand its patch to the livepatch core (or, for a target module, run it: `target`).
//!
//! A module is a relocatable ELF object built apart from the kernel (see
//! `patches/`), with its own TOC, signed with the project's key. Loading:
//! check the ed25519 signature against the public key built into the kernel,
//! parse and link it (`portable::module`: sections placed, `.TOC.` defined,
//! kernel calls through stubs that keep r2), flush the instruction cache, then
//! add and enable its patch. Every failure frees what was allocated and
//! leaves the kernel as it was. An object with a `.klp.module` description
//! is a loadable target module instead: `target` registers its ftrace sites
//! and runs its init (and, at unload, its exit).
pub mod busy;
pub mod channel;
pub mod commands;
pub mod embedded;
pub mod klp_symbols;
pub mod log;
mod memory;
mod target;

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
    /// Set while `load` enables its patch (or runs a target module's init):
    /// `unload` leaves it alone until `load` has finished (and, if the
    /// enable failed, taken it back).
    pub loading: bool,
    /// A target module whose exit (and `livepatch::module_going`) has run:
    /// an unload found a thread still inside it afterwards, and the next
    /// unload only waits for it again.
    pub exited: bool,
    /// A target module being unloaded now (its exit may be running): a
    /// second unload meanwhile is refused.
    pub unloading: bool,
    /// A patch that refers to target modules' symbols (`klp_symbols`).
    pub klp: Option<klp_symbols::KlpReferences>,
}

impl LoadedModule {
    /// Whether this is a loadable target module (not a patch).
    /// A module being loaded: listed, not yet live (`loading`).
    pub(crate) fn loading(
        name: String,
        memory: ModuleMemory,
        linked: LinkedModule,
        klp: Option<klp_symbols::KlpReferences>,
    ) -> LoadedModule {
        LoadedModule { klp, name, memory, linked, loading: true, exited: false, unloading: false }
    }

    pub fn is_target(&self) -> bool {
        self.linked.description.module().is_some()
    }

    fn range(&self) -> core::ops::Range<u64> {
        self.memory.address()..self.memory.address() + self.memory.size() as u64
    }
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
    /// A target module's ftrace sites could not be registered: why.
    Site(String),
    /// A target module's init returned this non-zero status.
    InitFailed(String, i32),
    /// Another unload of this target module is in progress.
    Unloading(String),
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
            LoadError::Site(why) => write!(formatter, "module refused: {why}"),
            LoadError::Unloading(name) => write!(formatter, "module '{name}' is being unloaded already"),
            LoadError::InitFailed(name, status) => {
                write!(formatter, "module '{name}' refused: its init returned {status}")
            }
        }
    }
}

/// Held by the one `load` or `unload` in progress (Linux's `module_mutex`):
/// their steps (link against the modules listed, add the patch, list the
/// module; or exit, `module_going`, the busy wait, the release) each take
/// their own locks, and another load or unload between two of them would
/// see half a module (a patch linked while its target was absent, added
/// after the target came). A flag waited for by sleeping, as these steps
/// sleep (transitions, busy waits): never taken with a spin lock held or
/// from a callback; not reentrant (neither calls the other).
static OPERATION: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Releases `OPERATION` when dropped.
struct OneAtATime;

impl Drop for OneAtATime {
    fn drop(&mut self) {
        OPERATION.store(false, core::sync::atomic::Ordering::Release);
    }
}

/// Waits for the load or unload in progress to finish, then holds `OPERATION`.
fn one_at_a_time() -> OneAtATime {
    while OPERATION.swap(true, core::sync::atomic::Ordering::Acquire) {
        crate::thread::sleep_milliseconds(1);
    }
    OneAtATime
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
///
/// For a target module (`.klp.module`): registers its sites, lists it,
/// calls `livepatch::module_coming`, runs its init (see `target`). Returns its name.
pub fn load(file: &[u8]) -> Result<String, LoadError> {
    let _one = one_at_a_time();
    let object = verify(file)?;
    let image = module::parse(object).map_err(LoadError::Format)?;
    // A patch made for one kernel image (a `build-id` line) goes into that
    // image only: refused here, before anything is allocated or linked.
    if let Some(patch) = image.description().patch() {
        patch.check_build_id(crate::build_id::id()).map_err(LoadError::Format)?;
    }
    let mut memory = ModuleMemory::allocate(image.memory_size(), image.memory_alignment())
        .ok_or(LoadError::NoMemory(image.memory_size()))?;
    let base = memory.address();
    // A patch may refer to target modules' own symbols (`klp_symbols`); a target module to exports only.
    let is_patch = image.description().patch().is_some();
    let mut referred = Vec::new();
    let linked = image
        // A `toc kernel` patch runs on the kernel's TOC base: this r2.
        .link(memory.bytes_mut(), base, crate::arch::registers::toc_pointer(), &mut |name| match is_patch {
            true => klp_symbols::resolve_at_link(name, &mut referred),
            false => livepatch::api::lookup(name),
        })
        .map_err(LoadError::Format)?;
    let klp = (!referred.is_empty())
        .then(|| klp_symbols::KlpReferences { object: alloc::vec::Vec::from(object), modules: referred });
    cache::synchronize_instructions(base, memory.size() as u64);
    let name = String::from(linked.description.name());
    if MODULES.lock().iter().any(|module| module.name == name) {
        return Err(LoadError::AlreadyLoaded(name));
    }
    if linked.description.module().is_some() {
        return target::load(memory, linked);
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
    MODULES.lock().push(LoadedModule::loading(name.clone(), memory, linked, klp));
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

/// The livepatch description of a linked patch module: functions of the
/// kernel (object `None`) and of target modules (an `object` line each)
/// replaced by module symbols, one `Object` per object in the order of its
/// first `replace` line.
fn patch_of(linked: &LinkedModule) -> Result<Patch, LoadError> {
    let description = linked.description.patch().ok_or(LoadError::Format(ModuleError::MissingDescription))?;
    let mut objects: Vec<Object> = Vec::new();
    for replaced in &description.functions {
        let symbol = linked
            .symbol(&replaced.new_symbol)
            .ok_or_else(|| LoadError::Format(ModuleError::ReplacementNotFunction(replaced.new_symbol.clone())))?;
        let function = Function {
            old_name: replaced.old_name.clone(),
            old_position: replaced.old_position,
            new_address: symbol.address,
            allow_inlined: replaced.allow_inlined,
        };
        match objects.iter_mut().find(|object| object.module == replaced.object) {
            Some(object) => object.functions.push(function),
            None => objects.push(Object {
                module: replaced.object.clone(),
                functions: alloc::vec![function],
                ..Default::default()
            }),
        }
    }
    Ok(Patch { name: description.name.clone(), objects, abi_checked: description.abi_checked, ..Default::default() })
}

/// Adds what the description says beyond the replacements: atomic
/// replace, the system states, and each callback (a function of the
/// module) on its object, which is added without functions if the patch
/// replaces none of that object's (an object with callbacks only).
fn describe_more(patch: &mut Patch, linked: &LinkedModule) -> Result<(), LoadError> {
    let description = linked.description.patch().ok_or(LoadError::Format(ModuleError::MissingDescription))?;
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

/// `SYMBOL+0xOFFSET` of `address` among `linked`'s function symbols.
fn symbol_in(linked: &LinkedModule, address: u64) -> Option<String> {
    let symbol = linked
        .symbols
        .iter()
        .filter(|symbol| symbol.function)
        .find(|symbol| symbol.address <= address && address - symbol.address < symbol.size.max(1))?;
    Some(alloc::format!("{}+{:#x}", symbol.name, address - symbol.address))
}

/// How long `unload` waits for the patch's disable transition (unless
/// `livepatch.transition_wait` says otherwise: `livepatch::transition_wait`).
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
/// `UNLOAD_WAIT_MILLISECONDS` (or what `livepatch.transition_wait` says),
/// `InTransition` names the threads blocking it;
/// the patch stays in transition and the module loaded (unloading again
/// waits again). A final scan (`busy::inside`, every thread's stack and
/// registers with the other CPUs stopped) catches a thread that entered the
/// module another way (a function pointer it handed out); it returns
/// `Busy`. Then the patch and module are removed, and the memory is freed
/// (poisoned first) after `thread::synchronize`: a caller handed a pointer
/// into the module just before gets its time slice first. A module whose
/// patch was forced is never unloaded (`Forced`).
pub fn unload(name: &str) -> Result<(), LoadError> {
    let _one = one_at_a_time();
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
    if MODULES.lock().iter().any(|module| module.name == name && module.is_target()) {
        return unload_target(name);
    }
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
        && let livepatch::Progress::Pending(blocked) =
            livepatch::wait_for_transition(livepatch::transition_wait(UNLOAD_WAIT_MILLISECONDS))
    {
        return Err(LoadError::InTransition(String::from(name), blocked));
    }
    let module = take_when_unused(name, || {
        // Refused if the patch was enabled again meanwhile, or forced
        // (`klp force` during the wait above).
        livepatch::remove(name).map_err(|error| match error {
            LivepatchError::Forced(name) => LoadError::Forced(name),
            other => LoadError::Livepatch(other),
        })
    })?;
    crate::debug::module_unloaded(module.memory.address());
    crate::thread::synchronize();
    drop(module);
    crate::debug::klp_debug_module_event();
    Ok(())
}

/// Unloads target module `name` (see `target`): exit and `module_going`
/// (once), then the wait until no thread is inside, then list, sites and
/// memory. `Busy` leaves it loaded, exited; unloading again waits again.
/// One unload of a module at a time: another meanwhile is refused (`Unloading`).
fn unload_target(name: &str) -> Result<(), LoadError> {
    {
        let mut modules = MODULES.lock();
        let module = modules
            .iter_mut()
            .find(|module| module.name == name && !module.loading)
            .ok_or_else(|| LoadError::NotLoaded(String::from(name)))?;
        if module.unloading {
            return Err(LoadError::Unloading(String::from(name)));
        }
        module.unloading = true;
    }
    target::exit(name);
    let module = match take_when_unused(name, || Ok(())) {
        Ok(module) => module,
        Err(error) => {
            if let Some(module) = MODULES.lock().iter_mut().find(|module| module.name == name) {
                module.unloading = false;
            }
            return Err(error);
        }
    };
    // Out of the list, no thread inside: the patches referring to its
    // symbols point at `UNRESOLVED` again, and its sites go (out of every
    // ops first).
    target::forget_references(name);
    target::release_sites(name);
    crate::debug::module_unloaded(module.memory.address());
    crate::thread::synchronize();
    drop(module);
    crate::debug::klp_debug_module_event();
    Ok(())
}

/// Retries `busy::inside` over module `name`'s memory until no thread is
/// inside, then, in the same round with preemption still off, runs `then`
/// and takes the module out of the list (returned), or until
/// `BUSY_WAIT_MILLISECONDS` passed (`Busy`, nothing changed). An error of
/// `then` is returned with nothing changed either.
fn take_when_unused(name: &str, then: impl Fn() -> Result<(), LoadError>) -> Result<LoadedModule, LoadError> {
    let deadline = crate::arch::registers::timebase() + crate::time::milliseconds_to_timebase(BUSY_WAIT_MILLISECONDS);
    loop {
        {
            let _preempt = crate::thread::preempt_disable();
            let memory = MODULES
                .lock()
                .iter()
                .find(|module| module.name == name)
                .map(LoadedModule::range)
                .ok_or_else(|| LoadError::NotLoaded(String::from(name)))?;
            match busy::inside(memory) {
                None => {
                    then()?;
                    let mut modules = MODULES.lock();
                    let position = modules
                        .iter()
                        .position(|module| module.name == name)
                        .expect("found above, preemption off since");
                    return Ok(modules.remove(position));
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
    }
}

/// Whether `name` is a loaded target module (not a patch module).
/// One that has exited (its unload waits for a thread to leave it) no
/// longer counts: a patch added then waits for its next load.
pub fn is_target(name: &str) -> bool {
    MODULES.lock().iter().any(|module| module.name == name && module.is_target() && !module.exited)
}

/// The names of the loaded target modules, and whether each is still loading or has exited.
pub fn targets() -> Vec<(String, bool, bool)> {
    MODULES
        .lock()
        .iter()
        .filter(|module| module.is_target())
        .map(|module| (module.name.clone(), module.loading, module.exited))
        .collect()
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
///
/// Errors: `UnknownObject` (no target module of that name is listed),
/// `NotLivepatchable` (the module's description does not name the
/// function `livepatchable`), `UnknownFunction` (no function of the module
/// has that name), `NotTraceable` (it has no ftrace site), `Ambiguous` and
/// `BadPosition` as for kernel functions.
pub fn resolve_function(module: &str, name: &str, position: Option<usize>) -> Result<(u64, u64), LivepatchError> {
    let (livepatchable, exists) = {
        let modules = MODULES.lock();
        let target = modules
            .iter()
            .find(|loaded| loaded.name == module && loaded.is_target() && !loaded.exited)
            .ok_or_else(|| LivepatchError::UnknownObject(String::from(module)))?;
        let description = target.linked.description.module().expect("a target module");
        let exists = target.linked.symbols.iter().any(|symbol| symbol.function && symbol.name == name);
        (description.livepatchable.iter().any(|function| function == name), exists)
    };
    if !exists {
        return Err(LivepatchError::UnknownFunction(String::from(name)));
    }
    if !livepatchable {
        return Err(LivepatchError::NotLivepatchable(String::from(name)));
    }
    let name = String::from(name);
    crate::trace::module_entry(module, &name, position).map_err(|error| match error {
        None => LivepatchError::UnknownObject(String::from(module)),
        Some(crate::trace::NameError::Missing) => LivepatchError::NotTraceable(name),
        Some(crate::trace::NameError::Ambiguous { count }) => LivepatchError::Ambiguous { name, count },
        Some(crate::trace::NameError::BadPosition { count }) => {
            LivepatchError::BadPosition { name, position: position.unwrap_or(0), count }
        }
    })
}
