//! The livepatch core: patches made of objects made of functions, enabled and disabled at run time.
//!
//! In the spirit of Linux's kernel/livepatch: a `Patch` holds `Object`s (the
//! kernel itself, or a loaded module), an object holds `Function`s `{ old
//! name (+ position when the name is ambiguous), new function }`. Several
//! patches may replace the same function: the newest enabled one runs, and
//! disabling it (only the topmost may be disabled) falls back to the previous
//! one, then to the original. Every error leaves everything as it was.
mod allowed;
pub mod api;
mod builtin;
mod redirect;

pub use allowed::{Anchor, is_livepatchable};
pub use builtin::register_builtin;

use crate::symbols;
use crate::sync::Mutex;
use crate::trace::{self, FtraceError, NameError};
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use smallvec::{SmallVec, smallvec};

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
    /// `enable`, `disable` or `remove` named no added patch.
    UnknownPatch(String),
    /// `add` of a patch whose name is taken.
    DuplicatePatch(String),
    /// `add`: no kernel function has this name.
    UnknownFunction(String),
    /// `add`: the name is shared by `count` functions and no position was given.
    Ambiguous { name: String, count: usize },
    /// `add`: the position is outside 1..=`count`.
    BadPosition { name: String, position: usize, count: usize },
    /// `add`: the function has no ftrace entry site (`#[notrace]`).
    NotTraceable(String),
    /// `add`: the function is not marked `#[livepatchable]`.
    NotLivepatchable(String),
    /// `enable`: another IPMODIFY ftrace user (`owner`) already redirects the function.
    Busy { name: String, owner: &'static str },
    /// `enable` of a patch that is enabled.
    AlreadyEnabled(String),
    /// `remove` of a patch that is still enabled.
    StillEnabled(String),
    /// `add`: the patch replaces one function twice.
    DuplicateFunction(String),
    /// `disable` of a patch that is not enabled.
    NotEnabled(String),
    /// `disable` of a patch that a newer enabled patch (`topmost`) stacks on.
    NotTopmost { patch: String, function: String, topmost: String },
    /// `add`: an object names a module; only kernel functions (object
    /// `module: None`) can be patched, module objects are not supported.
    UnknownObject(String),
    /// Text patching or ftrace registration failed; nothing was changed.
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
            LivepatchError::NotTraceable(name) => {
                write!(formatter, "'{name}' has no ftrace site (notrace) and cannot be patched")
            }
            LivepatchError::NotLivepatchable(name) => write!(
                formatter,
                "'{name}' is not marked #[livepatchable]: the compiler may have changed how its callers call it, so it cannot be replaced"
            ),
            LivepatchError::Busy { name, owner } => {
                write!(formatter, "'{name}' is busy: its calls are already redirected by '{owner}'")
            }
            LivepatchError::AlreadyEnabled(name) => write!(formatter, "patch '{name}' is already enabled"),
            LivepatchError::StillEnabled(name) => {
                write!(formatter, "patch '{name}' is enabled: disable it before removing it")
            }
            LivepatchError::DuplicateFunction(name) => write!(formatter, "the patch replaces '{name}' twice"),
            LivepatchError::NotEnabled(name) => write!(formatter, "patch '{name}' is not enabled"),
            LivepatchError::NotTopmost { patch, function, topmost } => {
                write!(formatter, "patch '{patch}' is not the topmost on '{function}': disable '{topmost}' first")
            }
            LivepatchError::UnknownObject(name) => write!(formatter, "object '{name}' is not loaded"),
            LivepatchError::Ftrace(error) => write!(formatter, "{error}"),
        }
    }
}

/// A function of an enabled patch, resolved.
struct Resolved {
    entry: u64,
    site: u64,
    new: u64,
}

struct Entry {
    id: u64,
    patch: Patch,
    enabled: bool,
    /// Its functions, resolved when the patch was added.
    resolved: Vec<Resolved>,
}

/// The replacements of one function, oldest first: the last one runs.
pub struct Stack {
    /// The function's ftrace site.
    pub site: u64,
    /// (patch id, replacement global entry); two fit without an allocation.
    pub replacements: SmallVec<[(u64, u64); 2]>,
}

struct Registry {
    patches: Vec<Entry>,
    /// Per replaced function, sorted by global entry (stacks may be empty
    /// for a moment inside `disable`).
    functions: Vec<(u64, Stack)>,
    next_id: u64,
}

/// Where `entry`'s stack is in `functions`, or where it would go.
fn stack_index(functions: &[(u64, Stack)], entry: u64) -> Result<usize, usize> {
    functions.binary_search_by_key(&entry, |(function, _)| *function)
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry { patches: Vec::new(), functions: Vec::new(), next_id: 1 });

/// Adds a patch (disabled), after resolving every function it names: an
/// unknown, ambiguous, notrace or not `#[livepatchable]` target, or a
/// function named twice, refuses
/// the whole patch here, before anything could run. Names are unique.
pub fn add(patch: Patch) -> Result<(), LivepatchError> {
    let mut resolved: Vec<Resolved> = Vec::new();
    for object in &patch.objects {
        if let Some(module) = &object.module {
            return Err(LivepatchError::UnknownObject(module.clone()));
        }
        for function in &object.functions {
            let (entry, site) = resolve(function)?;
            if resolved.iter().any(|other| other.entry == entry) {
                return Err(LivepatchError::DuplicateFunction(function.old_name.clone()));
            }
            resolved.push(Resolved { entry, site, new: function.new_address });
        }
    }
    let mut registry = REGISTRY.lock();
    if registry.patches.iter().any(|entry| entry.patch.name == patch.name) {
        return Err(LivepatchError::DuplicatePatch(patch.name));
    }
    let id = registry.next_id;
    registry.next_id += 1;
    let pairs: Vec<(u64, u64)> = resolved.iter().map(|function| (function.entry, function.new)).collect();
    crate::debug::patch_changed(&patch.name, Some(false), &pairs);
    registry.patches.push(Entry { id, patch, enabled: false, resolved });
    Ok(())
}

/// Removes a disabled patch.
pub fn remove(name: &str) -> Result<Patch, LivepatchError> {
    let mut registry = REGISTRY.lock();
    let index = position(&registry, name)?;
    if registry.patches[index].enabled {
        return Err(LivepatchError::StillEnabled(String::from(name)));
    }
    crate::debug::patch_changed(name, None, &[]);
    Ok(registry.patches.remove(index).patch)
}

fn position(registry: &Registry, name: &str) -> Result<usize, LivepatchError> {
    registry
        .patches
        .iter()
        .position(|entry| entry.patch.name == name)
        .ok_or_else(|| LivepatchError::UnknownPatch(String::from(name)))
}

/// The (global entry, ftrace site) of the function `function` names,
/// checked to be patchable: it exists, has an ftrace site and is marked
/// `#[livepatchable]` (see `allowed`).
pub fn resolve(function: &Function) -> Result<(u64, u64), LivepatchError> {
    let name = &function.old_name;
    match trace::site_table().named_entry(name, function.old_position).map(|site| (site.function, site.address)) {
        Ok((entry, _)) if !is_livepatchable(entry) => Err(LivepatchError::NotLivepatchable(name.clone())),
        Ok(found) => Ok(found),
        Err(NameError::Missing) => {
            let exists = symbols::table().is_some_and(|table| table.find(name).next().is_some());
            Err(if exists {
                LivepatchError::NotTraceable(name.clone())
            } else {
                LivepatchError::UnknownFunction(name.clone())
            })
        }
        Err(NameError::Ambiguous { count }) => Err(LivepatchError::Ambiguous { name: name.clone(), count }),
        Err(NameError::BadPosition { count }) => {
            Err(LivepatchError::BadPosition { name: name.clone(), position: function.old_position.unwrap_or(0), count })
        }
    }
}

fn ftrace_error(name: &str, error: FtraceError) -> LivepatchError {
    match error {
        FtraceError::Busy { owner, .. } => LivepatchError::Busy { name: String::from(name), owner },
        FtraceError::NotTraceable(_) => LivepatchError::NotTraceable(String::from(name)),
        other => LivepatchError::Ftrace(other),
    }
}

/// The old name of the function of `patch` whose entry or site is `address`.
fn name_at(patch: &Patch, resolved: &[Resolved], address: u64) -> String {
    let functions = patch.objects.iter().flat_map(|object| object.functions.iter());
    resolved
        .iter()
        .zip(functions)
        .find(|(function, _)| function.entry == address || function.site == address)
        .map_or_else(String::new, |(_, function)| function.old_name.clone())
}

/// The old name of the `index`th function of `patch`.
fn name_of(patch: &Patch, index: usize) -> String {
    patch
        .objects
        .iter()
        .flat_map(|object| object.functions.iter())
        .nth(index)
        .map_or_else(String::new, |function| function.old_name.clone())
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
    let resolved = core::mem::take(&mut registry.patches[index].resolved);
    // Push onto existing stacks; new stacks are merged in sorted, in one pass.
    let mut added: Vec<(u64, Stack)> = Vec::new();
    for function in &resolved {
        match stack_index(&registry.functions, function.entry) {
            Ok(position) => registry.functions[position].1.replacements.push((id, function.new)),
            Err(_) => {
                added.push((function.entry, Stack { site: function.site, replacements: smallvec![(id, function.new)] }))
            }
        }
    }
    added.sort_unstable_by_key(|(entry, _)| *entry);
    let existing = core::mem::take(&mut registry.functions);
    registry.functions = merge(existing, added);
    if let Err(error) = redirect::apply(&registry.functions) {
        // Undo the pushes so every stack is as it was.
        for function in &resolved {
            if let Ok(position) = stack_index(&registry.functions, function.entry) {
                registry.functions[position].1.replacements.pop();
            }
        }
        registry.functions.retain(|(_, stack)| !stack.replacements.is_empty());
        let culprit = match &error {
            FtraceError::Busy { function, .. } | FtraceError::NotTraceable(function) => {
                name_at(&registry.patches[index].patch, &resolved, *function)
            }
            _ => String::new(),
        };
        registry.patches[index].resolved = resolved;
        return Err(ftrace_error(&culprit, error));
    }
    let pairs: Vec<(u64, u64)> = resolved.iter().map(|function| (function.entry, function.new)).collect();
    crate::debug::patch_changed(name, Some(true), &pairs);
    let entry = &mut registry.patches[index];
    entry.enabled = true;
    entry.resolved = resolved;
    Ok(())
}

/// Merges two lists sorted by entry with no entry in both.
fn merge(existing: Vec<(u64, Stack)>, added: Vec<(u64, Stack)>) -> Vec<(u64, Stack)> {
    if added.is_empty() {
        return existing;
    }
    let mut merged = Vec::with_capacity(existing.len() + added.len());
    let (mut left, mut right) = (existing.into_iter().peekable(), added.into_iter().peekable());
    loop {
        let take_left = match (left.peek(), right.peek()) {
            (Some((a, _)), Some((b, _))) => a < b,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        merged.extend(if take_left { left.next() } else { right.next() });
    }
    merged
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
    for (position, function) in entry.resolved.iter().enumerate() {
        let topmost = stack_index(&registry.functions, function.entry)
            .ok()
            .and_then(|at| registry.functions[at].1.replacements.last())
            .map_or(0, |(patch, _)| *patch);
        if topmost != entry.id {
            let topmost = registry
                .patches
                .iter()
                .find(|other| other.id == topmost)
                .map_or_else(String::new, |other| other.patch.name.clone());
            let function = name_of(&entry.patch, position);
            return Err(LivepatchError::NotTopmost { patch: String::from(name), function, topmost });
        }
    }
    let resolved = core::mem::take(&mut registry.patches[index].resolved);
    // Pop in place (stacks may go empty: apply skips them), retain after success.
    let mut popped = Vec::with_capacity(resolved.len());
    for function in &resolved {
        let at = stack_index(&registry.functions, function.entry).expect("enabled functions have stacks");
        popped.push(registry.functions[at].1.replacements.pop().expect("topmost checked above"));
    }
    if let Err(error) = redirect::apply(&registry.functions) {
        for (function, replacement) in resolved.iter().zip(popped) {
            let at = stack_index(&registry.functions, function.entry).expect("still there");
            registry.functions[at].1.replacements.push(replacement);
        }
        registry.patches[index].resolved = resolved;
        return Err(ftrace_error(name, error));
    }
    registry.functions.retain(|(_, stack)| !stack.replacements.is_empty());
    let pairs: Vec<(u64, u64)> = resolved.iter().map(|function| (function.entry, function.new)).collect();
    crate::debug::patch_changed(name, Some(false), &pairs);
    registry.patches[index].resolved = resolved;
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
                .zip(&entry.resolved)
                .map(|(function, resolved)| {
                    // Resolved once, when the patch was added.
                    let old = resolved.entry;
                    let active = stack_index(&registry.functions, old)
                        .ok()
                        .and_then(|at| registry.functions[at].1.replacements.last())
                        .is_some_and(|(patch, new)| *patch == entry.id && *new == function.new_address);
                    (function.old_name.clone(), old, function.new_address, active)
                })
                .collect(),
        })
        .collect()
}
