//! The livepatch core: patches made of objects made of functions, enabled and disabled at run time.
//!
//! In the spirit of Linux's kernel/livepatch: a `Patch` holds `Object`s (the
//! kernel itself, or a loaded module), an object holds `Function`s `{ old
//! name (+ position when the name is ambiguous), new function }`. Several
//! patches may replace the same function: the newest enabled one runs, and
//! disabling it (only the topmost may be disabled) falls back to the previous
//! one, then to the original. Every error leaves everything as it was.
mod builtin;
mod function;

pub use builtin::register_builtin;
pub use function::PatchedFunction;

use crate::symbols;
use crate::trace::{self, FtraceError};
use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use spin::Mutex;

/// A function to replace.
#[derive(Clone)]
pub struct Function {
    /// The old function's name as the symbol table spells it.
    pub old_name: String,
    /// 1-based position among the functions of that name (address order), for ambiguous names.
    pub old_position: Option<usize>,
    /// The replacement's global entry point.
    pub new_address: u64,
}

/// The functions of one object: the kernel (`None`) or a module.
#[derive(Clone)]
pub struct Object {
    pub module: Option<String>,
    pub functions: Vec<Function>,
}

/// A named set of replacements, enabled and disabled as a whole.
#[derive(Clone)]
pub struct Patch {
    pub name: String,
    pub objects: Vec<Object>,
}

/// Why a livepatch operation changed nothing.
#[derive(Debug)]
pub enum LivepatchError {
    UnknownPatch(String),
    DuplicatePatch(String),
    UnknownFunction(String),
    Ambiguous { name: String, count: usize },
    BadPosition { name: String, position: usize, count: usize },
    NotTraceable(String),
    Busy { name: String, owner: &'static str },
    AlreadyEnabled(String),
    NotEnabled(String),
    NotTopmost { patch: String, function: String, topmost: String },
    UnknownObject(String),
    Ftrace(FtraceError),
}

impl fmt::Display for LivepatchError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LivepatchError::UnknownPatch(name) => write!(formatter, "no patch named '{name}'"),
            LivepatchError::DuplicatePatch(name) => write!(formatter, "a patch named '{name}' already exists"),
            LivepatchError::UnknownFunction(name) => write!(formatter, "no kernel function named '{name}'"),
            LivepatchError::Ambiguous { name, count } => {
                write!(formatter, "'{name}' names {count} functions: give its position (1..={count})")
            }
            LivepatchError::BadPosition { name, position, count } => {
                write!(formatter, "'{name}' has {count} functions, no position {position}")
            }
            LivepatchError::NotTraceable(name) => write!(formatter, "'{name}' has no ftrace site (notrace) and cannot be patched"),
            LivepatchError::Busy { name, owner } => {
                write!(formatter, "'{name}' is busy: its calls are already redirected by '{owner}'")
            }
            LivepatchError::AlreadyEnabled(name) => write!(formatter, "patch '{name}' is already enabled"),
            LivepatchError::NotEnabled(name) => write!(formatter, "patch '{name}' is not enabled"),
            LivepatchError::NotTopmost { patch, function, topmost } => write!(
                formatter,
                "patch '{patch}' is not the topmost on '{function}': disable '{topmost}' first"
            ),
            LivepatchError::UnknownObject(name) => write!(formatter, "object '{name}' is not loaded"),
            LivepatchError::Ftrace(error) => write!(formatter, "{error}"),
        }
    }
}

struct Entry {
    id: u64,
    patch: Patch,
    enabled: bool,
    /// Resolved (old address, new address) per function, while enabled.
    resolved: Vec<(u64, u64, String)>,
}

struct Registry {
    patches: Vec<Entry>,
    functions: BTreeMap<u64, Box<PatchedFunction>>,
    next_id: u64,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry { patches: Vec::new(), functions: BTreeMap::new(), next_id: 1 });

/// Adds a patch (disabled). Names are unique.
pub fn add(patch: Patch) -> Result<(), LivepatchError> {
    let mut registry = REGISTRY.lock();
    if registry.patches.iter().any(|entry| entry.patch.name == patch.name) {
        return Err(LivepatchError::DuplicatePatch(patch.name));
    }
    let id = registry.next_id;
    registry.next_id += 1;
    registry.patches.push(Entry { id, patch, enabled: false, resolved: Vec::new() });
    Ok(())
}

/// Removes a disabled patch.
pub fn remove(name: &str) -> Result<Patch, LivepatchError> {
    let mut registry = REGISTRY.lock();
    let index = position(&registry, name)?;
    if registry.patches[index].enabled {
        return Err(LivepatchError::AlreadyEnabled(String::from(name)));
    }
    Ok(registry.patches.remove(index).patch)
}

fn position(registry: &Registry, name: &str) -> Result<usize, LivepatchError> {
    registry
        .patches
        .iter()
        .position(|entry| entry.patch.name == name)
        .ok_or_else(|| LivepatchError::UnknownPatch(String::from(name)))
}

/// The address of the function `function` names, checked to be patchable.
pub fn resolve(function: &Function) -> Result<u64, LivepatchError> {
    let name = &function.old_name;
    let table = symbols::table().ok_or_else(|| LivepatchError::UnknownFunction(name.clone()))?;
    let candidates: Vec<u64> = table.find(name).map(|symbol| symbol.address).collect();
    let address = match (candidates.len(), function.old_position) {
        (0, _) => return Err(LivepatchError::UnknownFunction(name.clone())),
        (1, None) => candidates[0],
        (count, None) => return Err(LivepatchError::Ambiguous { name: name.clone(), count }),
        (count, Some(position)) if position == 0 || position > count => {
            return Err(LivepatchError::BadPosition { name: name.clone(), position, count });
        }
        (_, Some(position)) => candidates[position - 1],
    };
    if trace::function_of_entry(address).is_none() {
        return Err(LivepatchError::NotTraceable(name.clone()));
    }
    Ok(address)
}

/// Enables a patch: its replacements run from the next call on.
pub fn enable(name: &str) -> Result<(), LivepatchError> {
    // One CPU, no preemption: other threads see all of the patch or none of it.
    let _preempt = crate::thread::preempt_disable();
    let mut registry = REGISTRY.lock();
    let index = position(&registry, name)?;
    if registry.patches[index].enabled {
        return Err(LivepatchError::AlreadyEnabled(String::from(name)));
    }
    let id = registry.patches[index].id;
    let mut resolved = Vec::new();
    for object in &registry.patches[index].patch.objects {
        if let Some(module) = &object.module {
            return Err(LivepatchError::UnknownObject(module.clone()));
        }
        for function in &object.functions {
            resolved.push((resolve(function)?, function.new_address, function.old_name.clone()));
        }
    }
    for (done, (old, new, function_name)) in resolved.iter().enumerate() {
        if let Err(error) = attach(&mut registry, id, *old, *new) {
            for (undo_old, _, _) in resolved[..done].iter().rev() {
                detach(&mut registry, *undo_old);
            }
            return Err(match error {
                FtraceError::Busy { owner, .. } => LivepatchError::Busy { name: function_name.clone(), owner },
                FtraceError::NotTraceable(_) => LivepatchError::NotTraceable(function_name.clone()),
                other => LivepatchError::Ftrace(other),
            });
        }
    }
    let entry = &mut registry.patches[index];
    entry.enabled = true;
    entry.resolved = resolved;
    Ok(())
}

fn attach(registry: &mut Registry, patch: u64, old: u64, new: u64) -> Result<(), FtraceError> {
    if let Some(function) = registry.functions.get_mut(&old) {
        function.push(patch, new);
        return Ok(());
    }
    let function = PatchedFunction::install(old, patch, new)?;
    registry.functions.insert(old, function);
    Ok(())
}

/// Undoes the newest `attach` on `old`.
fn detach(registry: &mut Registry, old: u64) {
    let Some(mut function) = registry.functions.remove(&old) else { return };
    if function.pop() {
        registry.functions.insert(old, function);
    } else if let Err((function, error)) = function.remove() {
        crate::println!("livepatch: could not restore {}: {error}", symbols::Symbolized(old));
        registry.functions.insert(old, function);
    }
}

/// Disables a patch; it must be the topmost on each of its functions.
pub fn disable(name: &str) -> Result<(), LivepatchError> {
    let _preempt = crate::thread::preempt_disable();
    let mut registry = REGISTRY.lock();
    let index = position(&registry, name)?;
    let entry = &registry.patches[index];
    if !entry.enabled {
        return Err(LivepatchError::NotEnabled(String::from(name)));
    }
    for (old, _, function_name) in &entry.resolved {
        let topmost = registry.functions.get(old).map_or(0, |function| function.topmost_patch());
        if topmost != entry.id {
            let topmost =
                registry.patches.iter().find(|other| other.id == topmost).map_or_else(String::new, |other| other.patch.name.clone());
            return Err(LivepatchError::NotTopmost { patch: String::from(name), function: function_name.clone(), topmost });
        }
    }
    let resolved = core::mem::take(&mut registry.patches[index].resolved);
    for (old, _, _) in resolved.iter().rev() {
        detach(&mut registry, *old);
    }
    registry.patches[index].enabled = false;
    Ok(())
}

/// One line of `klp list`.
pub struct PatchSummary {
    pub name: String,
    pub enabled: bool,
    /// (old name, old address, new address, whether this patch's replacement runs now)
    pub functions: Vec<(String, u64, u64, bool)>,
}

/// Every patch, in the order they were added.
pub fn list() -> Vec<PatchSummary> {
    let registry = REGISTRY.lock();
    registry
        .patches
        .iter()
        .map(|entry| PatchSummary {
            name: entry.patch.name.clone(),
            enabled: entry.enabled,
            functions: entry
                .patch
                .objects
                .iter()
                .flat_map(|object| object.functions.iter())
                .map(|function| {
                    let old = resolve(function).unwrap_or(0);
                    let active = registry.functions.get(&old).is_some_and(|patched| {
                        patched.topmost_patch() == entry.id && patched.current_target() == function.new_address
                    });
                    (function.old_name.clone(), old, function.new_address, active)
                })
                .collect(),
        })
        .collect()
}
