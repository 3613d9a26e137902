//! The livepatch core: patches made of objects made of functions, enabled and disabled at run time.
//!
//! In the spirit of Linux's kernel/livepatch: a `Patch` holds `Object`s (the
//! kernel itself, or a loaded module), an object holds `Function`s `{ old
//! name (+ position when the name is ambiguous), new function }`. Several
//! patches may replace the same function: the newest enabled one runs, and
//! disabling it (only the topmost may be disabled) falls back to the previous
//! one, then to the original.
//!
//! The bookkeeping (which patches exist, which are enabled, the stack of
//! replacements per function) and what each operation does to it live in
//! `portable::livepatch`, tested on the host. Every operation here goes in
//! three steps: plan it (a pure function of the current state: the next
//! stacks, or an error), apply it (install the redirect table and the ftrace
//! registration; on failure that step undoes its own part), then commit it.
//! The state changes only at the commit, so every error leaves everything as
//! it was.
mod allowed;
pub mod api;
mod builtin;
pub mod notes;
mod redirect;

pub use allowed::{Anchor, is_livepatchable};
pub use builtin::register_builtin;
pub use notes::{Holder, Holders};
/// The replacements of one function, which `redirect` installs.
pub use portable::livepatch::Stack;

use crate::symbols;
use crate::sync::Mutex;
use crate::trace::{self, FtraceError, NameError};
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
pub use portable::livepatch::PlanError;
use portable::livepatch::{Operation, PatchState, Replaced, State};

/// A function to replace.
#[derive(Clone)]
pub struct Function {
    /// The old function's name as the symbol table spells it.
    pub old_name: String,
    /// 1-based position among the functions of that name (address order), for ambiguous names.
    pub old_position: Option<usize>,
    /// The replacement's global entry point.
    pub new_address: u64,
    /// Replace the function even though callers hold inlined copies of it
    /// (which keep running the original): the patch says it knows.
    pub allow_inlined: bool,
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
    /// The patch list refused the operation (unknown or duplicate patch,
    /// a function replaced twice, enable/disable/remove in the wrong state).
    Plan(PlanError),
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
    /// `add`: callers (`holders`) hold inlined copies of the function, which
    /// a replacement would not reach, and the patch did not allow that.
    Inlined { name: String, holders: Vec<Holder> },
    /// `add`: the function has no out-of-line copy at all: the compiler
    /// inlined it into every caller (`holders`).
    InlinedEverywhere { name: String, holders: Vec<Holder> },
    /// `enable`: another IPMODIFY ftrace user (`owner`) already redirects the function.
    Busy { name: String, owner: &'static str },
    /// `add`: an object names a module; only kernel functions (object
    /// `module: None`) can be patched, module objects are not supported.
    UnknownObject(String),
    /// Text patching or ftrace registration failed; nothing was changed.
    Ftrace(FtraceError),
}

impl fmt::Display for LivepatchError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LivepatchError::Plan(error) => write!(formatter, "{error}"),
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
            LivepatchError::Inlined { name, holders } => {
                write!(
                    formatter,
                    "'{name}' has inlined copies in {}, which a replacement would not reach (they keep running the original); allow it per function (allow_inlined) if that is what the patch wants",
                    Holders(holders)
                )
            }
            LivepatchError::InlinedEverywhere { name, holders } => {
                write!(
                    formatter,
                    "'{name}' has no function of its own to replace: the compiler inlined it into {}",
                    Holders(holders)
                )
            }
            LivepatchError::Busy { name, owner } => {
                write!(formatter, "'{name}' is busy: its calls are already redirected by '{owner}'")
            }
            LivepatchError::UnknownObject(name) => write!(formatter, "object '{name}' is not loaded"),
            LivepatchError::Ftrace(error) => write!(formatter, "{error}"),
        }
    }
}

impl From<PlanError> for LivepatchError {
    fn from(error: PlanError) -> LivepatchError {
        LivepatchError::Plan(error)
    }
}

/// The patches and the replacement stacks (`portable::livepatch`): changed
/// only by committing a plan whose redirect is in place.
static REGISTRY: Mutex<State> = Mutex::new(State::new());

/// Plans `operation`, installs the redirect table it leads to (for `enable`
/// and `disable`), then commits it. When installing fails, the plan is
/// dropped: the patches, the stacks, the table and the text are as before.
fn carry_out(operation: Operation) -> Result<(), LivepatchError> {
    let name = operation.patch_name();
    let mut registry = REGISTRY.lock();
    let plan = registry.plan(operation)?;
    if let Some(functions) = plan.functions() {
        redirect::apply(functions).map_err(|error| ftrace_error(registry.patch(name), error))?;
    }
    registry.commit(plan);
    let patch = registry.patch(name);
    let pairs: Vec<(u64, u64)> = patch
        .map(|patch| patch.functions.iter().map(|function| (function.entry, function.new)).collect())
        .unwrap_or_default();
    crate::debug::patch_changed(name, patch.map(|patch| patch.enabled), &pairs);
    Ok(())
}

/// Adds a patch (disabled), after resolving every function it names: an
/// unknown, ambiguous, notrace or not `#[livepatchable]` target, one with
/// inlined copies (unless the function allows them), or a function named
/// twice, refuses the whole patch here, before anything could run. Names
/// are unique.
pub fn add(patch: Patch) -> Result<(), LivepatchError> {
    let mut functions: Vec<Replaced> = Vec::new();
    for object in patch.objects {
        if let Some(module) = object.module {
            return Err(LivepatchError::UnknownObject(module));
        }
        // std collects this in place (a `Function` and a `Replaced` have the same
        // size and alignment): the object's own buffer becomes the list, so
        // adding a patch neither allocates it anew nor leaves the old one as
        // a hole in the heap that later allocations walk past.
        const _: () =
            assert!(size_of::<Function>() == size_of::<Replaced>() && align_of::<Function>() == align_of::<Replaced>());
        let resolved = object
            .functions
            .into_iter()
            .map(|function| {
                let (entry, site) = resolve(&function)?;
                Ok(Replaced {
                    name: function.old_name,
                    entry,
                    site,
                    new: function.new_address,
                    allow_inlined: function.allow_inlined,
                })
            })
            .collect::<Result<Vec<Replaced>, LivepatchError>>()?;
        if functions.is_empty() {
            functions = resolved;
        } else {
            functions.extend(resolved);
        }
    }
    carry_out(Operation::Add { name: &patch.name, functions })
}

/// Removes a disabled patch.
pub fn remove(name: &str) -> Result<(), LivepatchError> {
    carry_out(Operation::Remove(name))
}

/// The (global entry, ftrace site) of the function `function` names,
/// checked to be patchable: it exists, has an ftrace site, is marked
/// `#[livepatchable]` (see `allowed`) and no caller holds an inlined copy
/// of it, unless `function.allow_inlined` (see `notes`).
pub fn resolve(function: &Function) -> Result<(u64, u64), LivepatchError> {
    let name = &function.old_name;
    match trace::site_table().named_entry(name, function.old_position).map(|site| (site.function, site.address)) {
        Ok((entry, _)) if !is_livepatchable(entry) => Err(LivepatchError::NotLivepatchable(name.clone())),
        Ok((entry, site)) => match notes::note(entry) {
            Some(note) if note.is_inlined() && !function.allow_inlined => {
                Err(LivepatchError::Inlined { name: name.clone(), holders: notes::holders(&note) })
            }
            _ => Ok((entry, site)),
        },
        Err(NameError::Missing) => {
            let exists = symbols::table().is_some_and(|table| table.find(name).next().is_some());
            let everywhere = notes::table().and_then(|table| table.named(name).find(|note| note.function.is_none()));
            Err(if exists {
                LivepatchError::NotTraceable(name.clone())
            } else if let Some(note) = everywhere {
                LivepatchError::InlinedEverywhere { name: name.clone(), holders: notes::holders(&note) }
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

/// `error` from installing `patch`'s redirect, naming the function of
/// `patch` it is about.
fn ftrace_error(patch: Option<&PatchState>, error: FtraceError) -> LivepatchError {
    let name = |address: u64| {
        patch.and_then(|patch| patch.function_at(address)).map_or_else(String::new, |function| function.name.clone())
    };
    match error {
        FtraceError::Busy { function, owner } => LivepatchError::Busy { name: name(function), owner },
        FtraceError::NotTraceable(function) => LivepatchError::NotTraceable(name(function)),
        other => LivepatchError::Ftrace(other),
    }
}

/// Enables a patch: its replacements run from the next call on.
pub fn enable(name: &str) -> Result<(), LivepatchError> {
    // One CPU, no preemption: other threads see all of the patch or none of it.
    let _preempt = crate::thread::preempt_disable();
    carry_out(Operation::Enable(name))
}

/// Disables a patch; it must be the topmost on each of its functions.
pub fn disable(name: &str) -> Result<(), LivepatchError> {
    let _preempt = crate::thread::preempt_disable();
    carry_out(Operation::Disable(name))
}

/// One patch in `klp list`.
pub struct PatchSummary {
    pub name: String,
    pub enabled: bool,
    pub functions: Vec<FunctionSummary>,
}

/// One replaced function in `klp list`.
pub struct FunctionSummary {
    /// The old function's name, its global entry, the replacement's.
    pub name: String,
    pub old: u64,
    pub new: u64,
    /// Whether this patch's replacement runs now.
    pub active: bool,
    /// Whether the patch allowed inlined copies of the old function.
    pub allow_inlined: bool,
    /// The functions holding inlined copies of the old one, which keep running
    /// the original (a patch may replace such a function only with `allow_inlined`).
    pub inlined_into: Vec<Holder>,
}

/// Every patch, in the order they were added.
pub fn list() -> Vec<PatchSummary> {
    let registry = REGISTRY.lock();
    registry
        .patches()
        .iter()
        .map(|patch| PatchSummary {
            name: patch.name.clone(),
            enabled: patch.enabled,
            functions: patch
                .functions
                .iter()
                .map(|function| FunctionSummary {
                    name: function.name.clone(),
                    old: function.entry,
                    new: function.new,
                    // Resolved once, when the patch was added.
                    active: registry.topmost(function.entry) == Some((patch.id, function.new)),
                    allow_inlined: function.allow_inlined,
                    inlined_into: notes::inlined_into(function.entry),
                })
                .collect(),
        })
        .collect()
}
