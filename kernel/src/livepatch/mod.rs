//! The livepatch core: patches made of objects made of functions, enabled and disabled at run time.
//!
//! In the spirit of Linux's kernel/livepatch: a `Patch` holds `Object`s (the
//! kernel itself, or a loaded module), an object holds `Function`s `{ old
//! name (+ position when the name is ambiguous), new function }`. Several
//! patches may replace the same function: the newest enabled one runs, and
//! disabling it (only the topmost may be disabled) falls back to the previous
//! one, then to the original. Every error leaves everything as it was.
mod builtin;
mod redirect;

pub use builtin::register_builtin;
pub use redirect::LIVEPATCH_OPS;

use crate::symbols;
use crate::trace::{self, FtraceError};
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use spin::Mutex;

/// The address of a `#[livepatchable]` function, kept so that its
/// calling convention stays the standard one (see `macros::livepatchable`).
pub struct Anchor(pub *const ());
// Safety: only an address, never dereferenced.
unsafe impl Sync for Anchor {}

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
    /// Per replaced function (old global entry): (patch id, replacement), oldest first.
    functions: BTreeMap<u64, Vec<(u64, u64)>>,
    next_id: u64,
}

/// What each replaced function runs now: the newest replacement.
fn redirects(functions: &BTreeMap<u64, Vec<(u64, u64)>>) -> Vec<(u64, u64)> {
    functions.iter().filter_map(|(old, stack)| stack.last().map(|(_, new)| (*old, *new))).collect()
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
    let candidates: Vec<u64> = trace::named(name).into_iter().map(trace::entry_of).collect();
    let address = match (candidates.len(), function.old_position) {
        (0, _) => {
            let exists = symbols::table().is_some_and(|table| table.find(name).next().is_some());
            return Err(if exists {
                LivepatchError::NotTraceable(name.clone())
            } else {
                LivepatchError::UnknownFunction(name.clone())
            });
        }
        (1, None) => candidates[0],
        (count, None) => return Err(LivepatchError::Ambiguous { name: name.clone(), count }),
        (count, Some(position)) if position == 0 || position > count => {
            return Err(LivepatchError::BadPosition { name: name.clone(), position, count });
        }
        (_, Some(position)) => candidates[position - 1],
    };
    Ok(address)
}

fn ftrace_error(name: &str, error: FtraceError) -> LivepatchError {
    match error {
        FtraceError::Busy { owner, .. } => LivepatchError::Busy { name: String::from(name), owner },
        FtraceError::NotTraceable(_) => LivepatchError::NotTraceable(String::from(name)),
        other => LivepatchError::Ftrace(other),
    }
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
    let mut functions = registry.functions.clone();
    for (old, new, _) in &resolved {
        functions.entry(*old).or_default().push((id, *new));
    }
    if let Err(error) = redirect::apply(&redirects(&functions)) {
        let culprit = match &error {
            FtraceError::Busy { function, .. } | FtraceError::NotTraceable(function) => resolved
                .iter()
                .find(|(old, _, _)| trace::function_of_entry(*old) == Some(*function) || old == function)
                .map_or_else(String::new, |(_, _, name)| name.clone()),
            _ => String::new(),
        };
        return Err(ftrace_error(&culprit, error));
    }
    registry.functions = functions;
    let entry = &mut registry.patches[index];
    entry.enabled = true;
    entry.resolved = resolved;
    Ok(())
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
        let topmost = registry.functions.get(old).and_then(|stack| stack.last()).map_or(0, |(patch, _)| *patch);
        if topmost != entry.id {
            let topmost = registry
                .patches
                .iter()
                .find(|other| other.id == topmost)
                .map_or_else(String::new, |other| other.patch.name.clone());
            return Err(LivepatchError::NotTopmost { patch: String::from(name), function: function_name.clone(), topmost });
        }
    }
    let mut functions = registry.functions.clone();
    for (old, _, _) in &entry.resolved {
        if let Some(stack) = functions.get_mut(old) {
            stack.pop();
            if stack.is_empty() {
                functions.remove(old);
            }
        }
    }
    redirect::apply(&redirects(&functions)).map_err(|error| ftrace_error(name, error))?;
    registry.functions = functions;
    let entry = &mut registry.patches[index];
    entry.enabled = false;
    entry.resolved.clear();
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
                    let active = registry
                        .functions
                        .get(&old)
                        .and_then(|stack| stack.last())
                        .is_some_and(|(patch, new)| *patch == entry.id && *new == function.new_address);
                    (function.old_name.clone(), old, function.new_address, active)
                })
                .collect(),
        })
        .collect()
}
