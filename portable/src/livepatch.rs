//! The livepatch core's bookkeeping: the patches, which are enabled, and per replaced function its stack of replacements; every operation is planned here without changing anything, then committed.
//!
//! The kernel (`kernel/src/livepatch/`) resolves names and owns the ftrace
//! side; this module decides what an operation means. An operation goes in
//! three steps:
//!
//! 1. plan: `State::plan` checks the operation against the current state and
//!    computes what follows (the replacement stacks afterwards, the functions
//!    whose running code changes, the patch list's edit), or says what is
//!    wrong (`PlanError`). It takes `&self`: a refused operation changes
//!    nothing, by construction.
//! 2. apply: the kernel installs `Plan::functions` (the redirect table and
//!    the ftrace registration). If that fails it drops the plan; the state is
//!    still the one before the call.
//! 3. commit: `State::commit` makes the plan the current state. It cannot
//!    fail.
//!
//! Several patches may replace the same function: each function has a stack
//! of (patch, replacement) pairs, oldest first, and the newest enabled patch
//! (the top) runs. Only the topmost patch on each of its functions may be
//! disabled; disabling it falls back to the patch below, then to the original.
//!
//! A patch marked `replace` (Linux's atomic replace, a cumulative patch)
//! takes over from every enabled patch in one transition: enabling it puts
//! it on top of every replaced function, with a `NOP` entry (the original
//! code) for each function it does not replace itself; once its transition
//! is complete, `DropReplaced` disables the patches it replaced (their
//! callbacks do not run) and drops the `NOP` entries. A patch declares the
//! system states it handles (`SystemState`); enabling one that would drop
//! (a cumulative patch without it) or downgrade a state an enabled patch
//! installed is refused. Functions of a module object join a patch when the
//! module loads (`AddObject`) and leave when it goes (`RemoveObject`).
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use smallvec::{SmallVec, smallvec};

/// The replacement of an atomic replace's `NOP` entry: the original code.
pub const NOP: u64 = 0;

/// A system state a patch handles (Linux's `struct klp_state`): what the
/// patch changed beyond code, e.g. a setting its callbacks adjusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SystemState {
    pub id: u64,
    pub version: u64,
}

/// A function a patch replaces, resolved when the patch is added.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replaced {
    /// The old function's name as the patch spells it (for messages and `klp list`).
    pub name: String,
    /// The old function's global entry.
    pub entry: u64,
    /// The old function's ftrace site.
    pub site: u64,
    /// The replacement's global entry.
    pub new: u64,
    /// Whether the patch replaces it although callers hold inlined copies,
    /// which keep running the original (`klp list` says so).
    pub allow_inlined: bool,
}

/// A patch as the core tracks it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PatchState {
    /// Unique among the patches ever added; names a patch in the stacks.
    pub id: u64,
    pub name: String,
    pub enabled: bool,
    /// In the order the patch lists them (of loaded objects only).
    pub functions: Vec<Replaced>,
    /// Atomic replace: enabling it takes over from every enabled patch.
    pub replace: bool,
    /// While an atomic replace is being enabled: the functions of other
    /// patches it does not replace itself, each with `new` = `NOP`.
    pub nops: Vec<Replaced>,
    /// The system states it handles.
    pub states: Vec<SystemState>,
    /// While an atomic replace's enable is not complete: the ids of the
    /// patches that were enabled when it started, which `DropReplaced`
    /// disables (not those enabled after it).
    pub replaces: Vec<u64>,
    /// When it was last enabled (a counter): stacks hold their entries in
    /// this order, also those a module adds when it loads.
    pub enabled_sequence: u64,
}

impl PatchState {
    /// The function of this patch whose global entry or ftrace site is `address`.
    pub fn function_at(&self, address: u64) -> Option<&Replaced> {
        self.functions.iter().find(|function| function.entry == address || function.site == address)
    }

    /// Its state `id`, if it declares one (Linux's `klp_get_state`).
    pub fn state(&self, id: u64) -> Option<SystemState> {
        self.states.iter().copied().find(|state| state.id == id)
    }
}

/// The replacements of one function, oldest first: the last one runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stack {
    /// The function's ftrace site.
    pub site: u64,
    /// (patch id, replacement global entry); two fit without an allocation.
    pub replacements: SmallVec<[(u64, u64); 2]>,
}

/// An operation on the patches, as the kernel offers them.
#[derive(Clone, Debug)]
pub enum Operation<'a> {
    /// Adds a patch, disabled, with its functions already resolved (those of
    /// loaded objects), whether it is an atomic replace, and its states.
    Add { name: &'a str, functions: Vec<Replaced>, replace: bool, states: Vec<SystemState> },
    /// Enables a patch: its replacements go on top of their functions' stacks.
    Enable(&'a str),
    /// Disables a patch that is topmost on each of its functions.
    Disable(&'a str),
    /// Removes a disabled patch.
    Remove(&'a str),
    /// Once an atomic replace's enable transition is complete: disables
    /// every other enabled patch (no callbacks run) and drops the `NOP` entries.
    DropReplaced(&'a str),
    /// A module the patch names as an object loaded: its functions join the
    /// patch (and, if the patch is enabled, go on top of their stacks).
    AddObject { name: &'a str, functions: Vec<Replaced> },
    /// An atomic replace being enabled: the functions at `entries` (a
    /// module's, just added by the patches it replaces) get its NOP entry
    /// on top where it has no replacement of its own (Linux's NOP objects
    /// for module objects, `klp_add_object_nops`).
    AddNops { name: &'a str, entries: Vec<u64> },
    /// The module at `range` goes: the patch's functions in it leave the
    /// patch and every stack.
    RemoveObject { name: &'a str, range: core::ops::Range<u64> },
}

impl<'a> Operation<'a> {
    /// The name of the patch the operation is about.
    pub fn patch_name(&self) -> &'a str {
        match self {
            Operation::Add { name, .. }
            | Operation::Enable(name)
            | Operation::Disable(name)
            | Operation::Remove(name)
            | Operation::DropReplaced(name)
            | Operation::AddObject { name, .. }
            | Operation::AddNops { name, .. }
            | Operation::RemoveObject { name, .. } => name,
        }
    }
}

/// Why an operation was refused; each names what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlanError {
    /// `enable`, `disable` or `remove` named no added patch.
    UnknownPatch(String),
    /// `add` of a patch whose name is taken.
    DuplicatePatch(String),
    /// `add`: the patch replaces the function of this name twice (by entry, so also under two spellings).
    DuplicateFunction(String),
    /// `enable` of a patch that is enabled.
    AlreadyEnabled(String),
    /// `remove` of a patch that is still enabled.
    StillEnabled(String),
    /// `disable` of a patch that is not enabled.
    NotEnabled(String),
    /// `disable` of a patch that a newer enabled patch (`topmost`) stacks on, on `function`.
    NotTopmost { patch: String, function: String, topmost: String },
    /// `enable` of a cumulative patch without state `id`, which the enabled `installed_by` handles.
    StateDropped { patch: String, id: u64, installed_by: String },
    /// `enable` of a patch with state `id` at `version`, below the enabled `installed_by`'s `installed`.
    StateDowngraded { patch: String, id: u64, version: u64, installed_by: String, installed: u64 },
    /// `DropReplaced` of a patch that is not an enabled atomic replace.
    NotReplacing(String),
}

impl fmt::Display for PlanError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanError::UnknownPatch(name) => write!(formatter, "no patch named '{name}'"),
            PlanError::DuplicatePatch(name) => write!(formatter, "a patch named '{name}' already exists"),
            PlanError::DuplicateFunction(name) => write!(formatter, "the patch replaces '{name}' twice"),
            PlanError::AlreadyEnabled(name) => write!(formatter, "patch '{name}' is already enabled"),
            PlanError::StillEnabled(name) => {
                write!(formatter, "patch '{name}' is enabled: disable it before removing it")
            }
            PlanError::NotEnabled(name) => write!(formatter, "patch '{name}' is not enabled"),
            PlanError::NotTopmost { patch, function, topmost } => {
                write!(formatter, "patch '{patch}' is not the topmost on '{function}': disable '{topmost}' first")
            }
            PlanError::StateDropped { patch, id, installed_by } => write!(
                formatter,
                "patch '{patch}' replaces every patch but does not handle system state {id}, which '{installed_by}' installed"
            ),
            PlanError::StateDowngraded { patch, id, version, installed_by, installed } => write!(
                formatter,
                "patch '{patch}' handles system state {id} at version {version}, below version {installed} that '{installed_by}' installed"
            ),
            PlanError::NotReplacing(name) => write!(formatter, "patch '{name}' is not an enabled atomic replace"),
        }
    }
}

/// What one function runs after an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Change {
    /// The function's global entry.
    pub entry: u64,
    /// Its ftrace site.
    pub site: u64,
    /// The replacement it runs from now on; `None`: its original code.
    pub target: Option<u64>,
}

/// How an operation edits the patch list.
#[derive(Clone, Debug)]
enum Edit {
    Add(PatchState),
    /// The patch, its `NOP` entries and the patches it replaces.
    Enable(usize, Vec<Replaced>, Vec<u64>),
    Disable(usize),
    Remove(usize),
    /// The atomic replace that stays enabled.
    DropReplaced(usize),
    AddObject(usize, Vec<Replaced>),
    AddNops(usize, Vec<Replaced>),
    RemoveObject(usize, core::ops::Range<u64>),
}

/// A planned operation, not yet committed: what the kernel applies, then commits.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The `State::generation` planned from; only that state may commit it.
    generation: u64,
    edit: Edit,
    /// The stacks after the operation; `None` when it leaves them as they are.
    functions: Option<Vec<(u64, Stack)>>,
    changes: Vec<Change>,
}

impl Plan {
    /// The replacement stacks after the operation, sorted by entry, when it
    /// changes them (`enable`, `disable`): what the redirect must install
    /// before the plan is committed. `None` for `add` and `remove`.
    pub fn functions(&self) -> Option<&[(u64, Stack)]> {
        self.functions.as_deref()
    }

    /// The functions whose running code changes, sorted by entry.
    pub fn changes(&self) -> &[Change] {
        &self.changes
    }
}

/// Every patch and every replaced function's stack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct State {
    /// In the order they were added.
    patches: Vec<PatchState>,
    /// Per replaced function (global entry), sorted by entry; never an empty stack.
    functions: Vec<(u64, Stack)>,
    next_id: u64,
    /// The next `enabled_sequence`.
    next_sequence: u64,
    /// Counts commits, so that a plan is committed only to the state it was planned from.
    generation: u64,
}

impl Default for State {
    fn default() -> Self {
        State::new()
    }
}

/// Where `entry`'s stack is in `functions` (sorted by entry), or where it would go.
pub fn stack_index(functions: &[(u64, Stack)], entry: u64) -> Result<usize, usize> {
    functions.binary_search_by_key(&entry, |(function, _)| *function)
}

impl State {
    /// No patches.
    pub const fn new() -> State {
        State { patches: Vec::new(), functions: Vec::new(), next_id: 1, next_sequence: 1, generation: 0 }
    }

    /// Every patch, in the order they were added.
    pub fn patches(&self) -> &[PatchState] {
        &self.patches
    }

    /// The patch named `name`.
    pub fn patch(&self, name: &str) -> Option<&PatchState> {
        self.patches.iter().find(|patch| patch.name == name)
    }

    /// Every replaced function's (global entry, stack), sorted by entry.
    pub fn functions(&self) -> &[(u64, Stack)] {
        &self.functions
    }

    /// The stack of the function whose global entry is `entry`, if an enabled patch replaces it.
    pub fn stack(&self, entry: u64) -> Option<&Stack> {
        stack_index(&self.functions, entry).ok().map(|at| &self.functions[at].1)
    }

    /// The (patch id, replacement) that runs for the function at `entry`, if any.
    pub fn topmost(&self, entry: u64) -> Option<(u64, u64)> {
        self.stack(entry).and_then(|stack| stack.replacements.last().copied())
    }

    fn index(&self, name: &str) -> Result<usize, PlanError> {
        self.patches.iter().position(|patch| patch.name == name).ok_or_else(|| PlanError::UnknownPatch(name.into()))
    }

    /// What `operation` would do, or why it is refused. Changes nothing.
    pub fn plan(&self, operation: Operation) -> Result<Plan, PlanError> {
        match operation {
            Operation::Add { name, functions, replace, states } => self.plan_add(name, functions, replace, states),
            Operation::Enable(name) => self.plan_enable(name),
            Operation::Disable(name) => self.plan_disable(name),
            Operation::Remove(name) => self.plan_remove(name),
            Operation::DropReplaced(name) => self.plan_drop_replaced(name),
            Operation::AddObject { name, functions } => self.plan_add_object(name, functions),
            Operation::AddNops { name, entries } => self.plan_add_nops(name, entries),
            Operation::RemoveObject { name, range } => self.plan_remove_object(name, range),
        }
    }

    /// The 1-based position of patch `name` in the patch list (Linux's
    /// `stack_order`): renumbered when an earlier patch is removed.
    pub fn stack_order(&self, name: &str) -> Option<usize> {
        self.patches.iter().position(|patch| patch.name == name).map(|index| index + 1)
    }

    /// The newest enabled patch other than `except` that declares state `id`
    /// (Linux's `klp_get_prev_state`, `except` being the patch in transition).
    pub fn previous_state(&self, id: u64, except: &str) -> Option<(&PatchState, SystemState)> {
        self.patches
            .iter()
            .rev()
            .filter(|patch| patch.enabled && patch.name != except)
            .find_map(|patch| patch.state(id).map(|state| (patch, state)))
    }

    fn plan_add(
        &self,
        name: &str,
        functions: Vec<Replaced>,
        replace: bool,
        states: Vec<SystemState>,
    ) -> Result<Plan, PlanError> {
        for (position, function) in functions.iter().enumerate() {
            if functions[..position].iter().any(|earlier| earlier.entry == function.entry) {
                return Err(PlanError::DuplicateFunction(function.name.clone()));
            }
        }
        if self.patch(name).is_some() {
            return Err(PlanError::DuplicatePatch(name.into()));
        }
        let patch = PatchState {
            id: self.next_id,
            name: name.into(),
            enabled: false,
            functions,
            replace,
            nops: Vec::new(),
            states,
            replaces: Vec::new(),
            enabled_sequence: 0,
        };
        Ok(self.planned(Edit::Add(patch), None, Vec::new()))
    }

    fn plan_enable(&self, name: &str) -> Result<Plan, PlanError> {
        let index = self.index(name)?;
        let patch = &self.patches[index];
        if patch.enabled {
            return Err(PlanError::AlreadyEnabled(name.into()));
        }
        self.check_states(patch)?;
        // An atomic replace also covers every function replaced now, with
        // the original code where it has no replacement of its own.
        let nops: Vec<Replaced> = if patch.replace {
            self.functions
                .iter()
                .filter(|(entry, _)| !patch.functions.iter().any(|function| function.entry == *entry))
                .map(|(entry, stack)| Replaced {
                    name: self.function_name(*entry),
                    entry: *entry,
                    site: stack.site,
                    new: NOP,
                    allow_inlined: false,
                })
                .collect()
        } else {
            Vec::new()
        };
        // The patch goes on top of each of its functions.
        let mut changes: Vec<Change> = patch
            .functions
            .iter()
            .chain(&nops)
            .map(|function| Change {
                entry: function.entry,
                site: function.site,
                target: Some(function.new).filter(|new| *new != NOP),
            })
            .collect();
        changes.sort_unstable_by_key(|change| change.entry);
        // Merge the sorted changes into the sorted stacks, in one pass.
        let mut functions = Vec::with_capacity(self.functions.len() + changes.len());
        let mut existing = self.functions.iter().peekable();
        for change in &changes {
            while let Some((entry, stack)) = existing.next_if(|(entry, _)| *entry < change.entry) {
                functions.push((*entry, stack.clone()));
            }
            let replacement = (patch.id, change.target.unwrap_or(NOP));
            let stack = match existing.next_if(|(entry, _)| *entry == change.entry) {
                Some((_, stack)) => {
                    let mut stack = stack.clone();
                    stack.replacements.push(replacement);
                    stack
                }
                None => Stack { site: change.site, replacements: smallvec![replacement] },
            };
            functions.push((change.entry, stack));
        }
        functions.extend(existing.cloned());
        let replaces = if patch.replace {
            self.patches.iter().filter(|other| other.enabled).map(|other| other.id).collect()
        } else {
            Vec::new()
        };
        Ok(self.planned(Edit::Enable(index, nops, replaces), Some(functions), changes))
    }

    /// The name some patch gives the function at `entry`.
    fn function_name(&self, entry: u64) -> String {
        self.patches
            .iter()
            .flat_map(|patch| patch.functions.iter())
            .find(|function| function.entry == entry)
            .map_or_else(String::new, |function| function.name.clone())
    }

    /// Refuses `patch` if it would drop or downgrade a state an enabled patch handles.
    fn check_states(&self, patch: &PatchState) -> Result<(), PlanError> {
        for installed in self.patches.iter().filter(|other| other.enabled && other.id != patch.id) {
            for old in &installed.states {
                match patch.state(old.id) {
                    None if patch.replace => {
                        return Err(PlanError::StateDropped {
                            patch: patch.name.clone(),
                            id: old.id,
                            installed_by: installed.name.clone(),
                        });
                    }
                    Some(new) if new.version < old.version => {
                        return Err(PlanError::StateDowngraded {
                            patch: patch.name.clone(),
                            id: old.id,
                            version: new.version,
                            installed_by: installed.name.clone(),
                            installed: old.version,
                        });
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    fn plan_drop_replaced(&self, name: &str) -> Result<Plan, PlanError> {
        let index = self.index(name)?;
        let patch = &self.patches[index];
        if !patch.enabled || !patch.replace {
            return Err(PlanError::NotReplacing(name.into()));
        }
        // The replaced patches' entries and the NOP entries go; the patch's
        // own and those of patches enabled after it stay, and what runs
        // does not change (the patch is on top wherever it was pushed).
        let functions = self
            .functions
            .iter()
            .filter_map(|(entry, stack)| {
                let mut stack = stack.clone();
                stack.replacements.retain(|(id, new)| !(patch.replaces.contains(id) || *id == patch.id && *new == NOP));
                (!stack.replacements.is_empty()).then_some((*entry, stack))
            })
            .collect();
        Ok(self.planned(Edit::DropReplaced(index), Some(functions), Vec::new()))
    }

    fn plan_add_object(&self, name: &str, added: Vec<Replaced>) -> Result<Plan, PlanError> {
        let index = self.index(name)?;
        let patch = &self.patches[index];
        for (position, function) in added.iter().enumerate() {
            if added[..position].iter().chain(&patch.functions).any(|earlier| earlier.entry == function.entry) {
                return Err(PlanError::DuplicateFunction(function.name.clone()));
            }
        }
        if !patch.enabled {
            return Ok(self.planned(Edit::AddObject(index, added), None, Vec::new()));
        }
        // Where enabling would have put them: above the patches enabled
        // before this one, below those enabled after.
        let sequence =
            |id: u64| self.patches.iter().find(|other| other.id == id).map_or(0, |other| other.enabled_sequence);
        let mut functions = self.functions.clone();
        let mut changes = Vec::with_capacity(added.len());
        for function in &added {
            let replacement = (patch.id, function.new);
            match stack_index(&functions, function.entry) {
                Ok(at) => {
                    let replacements = &mut functions[at].1.replacements;
                    let position = replacements
                        .iter()
                        .position(|(id, _)| sequence(*id) > patch.enabled_sequence)
                        .unwrap_or(replacements.len());
                    replacements.insert(position, replacement);
                    if position + 1 == replacements.len() {
                        changes.push(Change { entry: function.entry, site: function.site, target: Some(function.new) });
                    }
                }
                Err(at) => {
                    changes.push(Change { entry: function.entry, site: function.site, target: Some(function.new) });
                    functions.insert(
                        at,
                        (function.entry, Stack { site: function.site, replacements: smallvec![replacement] }),
                    );
                }
            }
        }
        changes.sort_unstable_by_key(|change| change.entry);
        Ok(self.planned(Edit::AddObject(index, added), Some(functions), changes))
    }

    fn plan_add_nops(&self, name: &str, entries: Vec<u64>) -> Result<Plan, PlanError> {
        let index = self.index(name)?;
        let patch = &self.patches[index];
        if !patch.enabled || !patch.replace {
            return Err(PlanError::NotReplacing(name.into()));
        }
        let mut functions = self.functions.clone();
        let mut nops = Vec::new();
        let mut changes = Vec::new();
        for entry in entries {
            let Ok(at) = stack_index(&functions, entry) else { continue };
            let stack = &mut functions[at].1;
            if stack.replacements.iter().any(|(id, _)| *id == patch.id) {
                continue;
            }
            stack.replacements.push((patch.id, NOP));
            changes.push(Change { entry, site: stack.site, target: None });
            nops.push(Replaced {
                name: self.function_name(entry),
                entry,
                site: stack.site,
                new: NOP,
                allow_inlined: false,
            });
        }
        Ok(self.planned(Edit::AddNops(index, nops), Some(functions), changes))
    }

    fn plan_remove_object(&self, name: &str, range: core::ops::Range<u64>) -> Result<Plan, PlanError> {
        let index = self.index(name)?;
        let patch = &self.patches[index];
        let mut functions = Vec::with_capacity(self.functions.len());
        let mut changes = Vec::new();
        for (entry, stack) in &self.functions {
            if !range.contains(entry) {
                functions.push((*entry, stack.clone()));
                continue;
            }
            let mut stack = stack.clone();
            let top = stack.replacements.last().copied();
            stack.replacements.retain(|(id, _)| *id != patch.id);
            // An atomic replace's NOP entry above nothing else goes too (its
            // function is going with the module).
            if stack.replacements.iter().all(|(_, new)| *new == NOP) {
                stack.replacements.clear();
            }
            let now = stack.replacements.last().copied();
            if now != top {
                changes.push(Change { entry: *entry, site: stack.site, target: now.map(|(_, new)| new) });
            }
            if !stack.replacements.is_empty() {
                functions.push((*entry, stack));
            }
        }
        Ok(self.planned(Edit::RemoveObject(index, range), Some(functions), changes))
    }

    fn plan_disable(&self, name: &str) -> Result<Plan, PlanError> {
        let index = self.index(name)?;
        let patch = &self.patches[index];
        if !patch.enabled {
            return Err(PlanError::NotEnabled(name.into()));
        }
        // Each of its functions falls back to the replacement below, or to the original.
        let mut changes = Vec::with_capacity(patch.functions.len() + patch.nops.len());
        for function in patch.functions.iter().chain(&patch.nops) {
            let replacements = self.stack(function.entry).map_or(&[][..], |stack| &stack.replacements[..]);
            match replacements {
                [below @ .., (id, _)] if *id == patch.id => changes.push(Change {
                    entry: function.entry,
                    site: function.site,
                    target: below.last().map(|(_, new)| *new),
                }),
                _ => {
                    let topmost = replacements.last().map(|(id, _)| *id);
                    let topmost = self
                        .patches
                        .iter()
                        .find(|other| Some(other.id) == topmost)
                        .map_or_else(String::new, |other| other.name.clone());
                    return Err(PlanError::NotTopmost { patch: name.into(), function: function.name.clone(), topmost });
                }
            }
        }
        changes.sort_unstable_by_key(|change| change.entry);
        // Pop the patch off each of its stacks; a stack left empty goes.
        let mut functions = Vec::with_capacity(self.functions.len());
        let mut popped = changes.iter().map(|change| change.entry).peekable();
        for (entry, stack) in &self.functions {
            if popped.next_if_eq(entry).is_none() {
                functions.push((*entry, stack.clone()));
            } else if stack.replacements.len() > 1 {
                let mut stack = stack.clone();
                stack.replacements.pop();
                functions.push((*entry, stack));
            }
        }
        Ok(self.planned(Edit::Disable(index), Some(functions), changes))
    }

    fn plan_remove(&self, name: &str) -> Result<Plan, PlanError> {
        let index = self.index(name)?;
        if self.patches[index].enabled {
            return Err(PlanError::StillEnabled(name.into()));
        }
        Ok(self.planned(Edit::Remove(index), None, Vec::new()))
    }

    fn planned(&self, edit: Edit, functions: Option<Vec<(u64, Stack)>>, changes: Vec<Change>) -> Plan {
        Plan { generation: self.generation, edit, functions, changes }
    }

    /// Makes `plan` the current state. Call once what it needs is applied.
    ///
    /// Panics if the state changed since `plan` was made (it was planned from
    /// another state, or another plan was committed in between).
    pub fn commit(&mut self, plan: Plan) {
        assert_eq!(plan.generation, self.generation, "a plan is committed to the state it was planned from");
        self.generation += 1;
        match plan.edit {
            Edit::Add(patch) => {
                self.next_id = patch.id + 1;
                self.patches.push(patch);
            }
            Edit::Enable(index, nops, replaces) => {
                let patch = &mut self.patches[index];
                patch.enabled = true;
                patch.nops = nops;
                patch.replaces = replaces;
                patch.enabled_sequence = self.next_sequence;
                self.next_sequence += 1;
            }
            Edit::Disable(index) => {
                self.patches[index].enabled = false;
                self.patches[index].nops = Vec::new();
                self.patches[index].replaces = Vec::new();
            }
            Edit::DropReplaced(index) => {
                let replaces = core::mem::take(&mut self.patches[index].replaces);
                for patch in self.patches.iter_mut().filter(|patch| replaces.contains(&patch.id)) {
                    patch.enabled = false;
                }
                self.patches[index].nops = Vec::new();
            }
            Edit::AddObject(index, added) => self.patches[index].functions.extend(added),
            Edit::AddNops(index, nops) => self.patches[index].nops.extend(nops),
            Edit::RemoveObject(index, range) => {
                let patch = &mut self.patches[index];
                patch.functions.retain(|function| !range.contains(&function.entry));
                patch.nops.retain(|function| !range.contains(&function.entry));
            }
            Edit::Remove(index) => {
                self.patches.remove(index);
            }
        }
        if let Some(functions) = plan.functions {
            self.functions = functions;
            // A NOP entry whose stack went (its module went) goes from its patch.
            let functions = &self.functions;
            for patch in self.patches.iter_mut() {
                patch.nops.retain(|nop| stack_index(functions, nop.entry).is_ok());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A function of a test patch: old function `entry` (site `entry + 8`) replaced by `new`.
    fn replaced(name: &str, entry: u64, new: u64) -> Replaced {
        Replaced { name: name.into(), entry, site: entry + 8, new, allow_inlined: false }
    }

    fn run(state: &mut State, operation: Operation) -> Result<Vec<Change>, PlanError> {
        let plan = state.plan(operation)?;
        let changes = plan.changes().to_vec();
        state.commit(plan);
        Ok(changes)
    }

    fn add(state: &mut State, name: &str, functions: &[Replaced]) {
        run(state, Operation::Add { name, functions: functions.to_vec(), replace: false, states: Vec::new() })
            .expect("adds");
    }

    /// What the function at `entry` runs: its top replacement, or `None` for the original.
    fn running(state: &State, entry: u64) -> Option<u64> {
        state.topmost(entry).map(|(_, new)| new)
    }

    fn change(entry: u64, target: Option<u64>) -> Change {
        Change { entry, site: entry + 8, target }
    }

    /// `f` at 0x100, `g` at 0x200; patch "a" replaces both, "b" only `f`.
    fn two_patches() -> State {
        let mut state = State::new();
        add(&mut state, "a", &[replaced("f", 0x100, 0xa1), replaced("g", 0x200, 0xa2)]);
        add(&mut state, "b", &[replaced("f", 0x100, 0xb1)]);
        state
    }

    #[test]
    fn stacked_patches_run_the_topmost_and_fall_back_in_order() {
        let mut state = two_patches();
        assert_eq!(
            run(&mut state, Operation::Enable("a")),
            Ok(vec![change(0x100, Some(0xa1)), change(0x200, Some(0xa2))])
        );
        assert_eq!(run(&mut state, Operation::Enable("b")), Ok(vec![change(0x100, Some(0xb1))]));
        assert_eq!(running(&state, 0x100), Some(0xb1), "the newest enabled patch wins");
        assert_eq!(running(&state, 0x200), Some(0xa2));
        let replacements: Vec<(u64, u64)> = state.stack(0x100).expect("f is replaced").replacements.to_vec();
        assert_eq!(replacements, [(1, 0xa1), (2, 0xb1)], "oldest first");

        assert_eq!(run(&mut state, Operation::Disable("b")), Ok(vec![change(0x100, Some(0xa1))]));
        assert_eq!(running(&state, 0x100), Some(0xa1), "back to the patch below");
        assert_eq!(running(&state, 0x200), Some(0xa2));

        assert_eq!(run(&mut state, Operation::Disable("a")), Ok(vec![change(0x100, None), change(0x200, None)]));
        assert_eq!((running(&state, 0x100), running(&state, 0x200)), (None, None), "back to the originals");
        assert!(state.functions().is_empty(), "no empty stack is kept");
        assert!(state.patches().iter().all(|patch| !patch.enabled));
    }

    #[test]
    fn disabling_the_patch_below_is_refused_and_the_top_keeps_running() {
        let mut state = two_patches();
        run(&mut state, Operation::Enable("a")).unwrap();
        run(&mut state, Operation::Enable("b")).unwrap();
        let before = state.clone();
        assert_eq!(
            state.plan(Operation::Disable("a")).unwrap_err(),
            PlanError::NotTopmost { patch: "a".into(), function: "f".into(), topmost: "b".into() }
        );
        assert_eq!(state, before, "the refused disable changed nothing");
        assert_eq!(running(&state, 0x100), Some(0xb1), "the top still runs");
    }

    #[test]
    fn disabling_a_patch_under_no_other_keeps_the_other_patches_running() {
        // "c" replaces only g, "b" only f: neither stacks on the other.
        let mut state = two_patches();
        add(&mut state, "c", &[replaced("g", 0x200, 0xc2)]);
        run(&mut state, Operation::Enable("b")).unwrap();
        run(&mut state, Operation::Enable("c")).unwrap();
        assert_eq!(run(&mut state, Operation::Disable("c")), Ok(vec![change(0x200, None)]));
        assert_eq!((running(&state, 0x100), running(&state, 0x200)), (Some(0xb1), None));
        // Enabled after b, below nothing: "a" may go on top of f and g, then come off again.
        run(&mut state, Operation::Enable("a")).unwrap();
        assert_eq!(running(&state, 0x100), Some(0xa1));
        run(&mut state, Operation::Disable("a")).unwrap();
        assert_eq!((running(&state, 0x100), running(&state, 0x200)), (Some(0xb1), None));
    }

    #[test]
    fn enabling_merges_new_stacks_in_entry_order() {
        let mut state = State::new();
        add(&mut state, "low", &[replaced("m", 0x300, 1)]);
        add(&mut state, "mixed", &[replaced("z", 0x500, 2), replaced("a", 0x100, 3), replaced("m", 0x300, 4)]);
        run(&mut state, Operation::Enable("low")).unwrap();
        let changes = run(&mut state, Operation::Enable("mixed")).unwrap();
        assert_eq!(
            changes,
            [change(0x100, Some(3)), change(0x300, Some(4)), change(0x500, Some(2))],
            "sorted by entry"
        );
        let entries: Vec<u64> = state.functions().iter().map(|(entry, _)| *entry).collect();
        assert_eq!(entries, [0x100, 0x300, 0x500]);
        let sites: Vec<u64> = state.functions().iter().map(|(_, stack)| stack.site).collect();
        assert_eq!(sites, [0x108, 0x308, 0x508]);
        assert_eq!(state.stack(0x300).unwrap().replacements.len(), 2);
    }

    #[test]
    fn stacks_are_found_by_entry() {
        let mut state = State::new();
        let functions: Vec<Replaced> = [0x700, 0x100, 0x500, 0x300]
            .iter()
            .map(|&entry| replaced(&format!("f{entry:x}"), entry, entry + 1))
            .collect();
        add(&mut state, "p", &functions);
        run(&mut state, Operation::Enable("p")).unwrap();
        for entry in [0x100, 0x300, 0x500, 0x700] {
            assert_eq!(state.stack(entry).map(|stack| stack.site), Some(entry + 8), "{entry:#x}");
            assert_eq!(state.topmost(entry), Some((1, entry + 1)));
        }
        for entry in [0, 0x108, 0x400, 0x800] {
            assert_eq!(state.stack(entry), None, "{entry:#x} is not replaced");
        }
        assert_eq!(stack_index(state.functions(), 0x400), Err(2), "where it would go");
        assert_eq!(stack_index(state.functions(), 0x500), Ok(2));
    }

    #[test]
    fn refused_operations_name_what_is_wrong_and_change_nothing() {
        let mut state = two_patches();
        run(&mut state, Operation::Enable("a")).unwrap();
        let before = state.clone();
        let refused = [
            (Operation::Enable("a"), PlanError::AlreadyEnabled("a".into())),
            (Operation::Disable("b"), PlanError::NotEnabled("b".into())),
            (Operation::Remove("a"), PlanError::StillEnabled("a".into())),
            (Operation::Enable("nope"), PlanError::UnknownPatch("nope".into())),
            (Operation::Disable("nope"), PlanError::UnknownPatch("nope".into())),
            (Operation::Remove("nope"), PlanError::UnknownPatch("nope".into())),
            (
                Operation::Add { name: "b", functions: Vec::new(), replace: false, states: Vec::new() },
                PlanError::DuplicatePatch("b".into()),
            ),
            (Operation::DropReplaced("a"), PlanError::NotReplacing("a".into())),
            (
                Operation::Add {
                    name: "twice",
                    functions: vec![replaced("f", 0x100, 1), replaced("f again", 0x100, 2)],
                    replace: false,
                    states: Vec::new(),
                },
                PlanError::DuplicateFunction("f again".into()),
            ),
        ];
        for (operation, error) in refused {
            let description = format!("{operation:?}");
            assert_eq!(state.plan(operation).unwrap_err(), error, "{description}");
            assert_eq!(state, before, "{description} changed nothing");
        }
        assert_eq!(
            PlanError::StillEnabled("a".into()).to_string(),
            "patch 'a' is enabled: disable it before removing it"
        );
    }

    #[test]
    fn a_plan_dropped_after_a_failed_apply_leaves_the_state_as_it_was() {
        let mut state = two_patches();
        run(&mut state, Operation::Enable("a")).unwrap();
        let before = state.clone();
        // The kernel plans, the redirect fails to apply, the plan is dropped.
        let plan = state.plan(Operation::Enable("b")).unwrap();
        assert_eq!(plan.functions().and_then(|functions| functions.first()).map(|(entry, _)| *entry), Some(0x100));
        drop(plan);
        assert_eq!(state, before);
        assert_eq!(running(&state, 0x100), Some(0xa1));
        let plan = state.plan(Operation::Disable("a")).unwrap();
        assert_eq!(plan.functions(), Some(&[][..]), "after disabling a nothing would be replaced");
        drop(plan);
        assert_eq!(state, before);
        // The same operation planned again goes through.
        run(&mut state, Operation::Enable("b")).unwrap();
        assert_eq!(running(&state, 0x100), Some(0xb1));
    }

    #[test]
    fn removing_a_disabled_patch_frees_its_name_and_ids_stay_unique() {
        let mut state = two_patches();
        let plan = state.plan(Operation::Remove("a")).unwrap();
        assert_eq!(plan.functions(), None, "remove installs nothing");
        state.commit(plan);
        assert_eq!(state.patch("a"), None);
        add(&mut state, "a", &[replaced("f", 0x100, 0xa9)]);
        let ids: Vec<u64> = state.patches().iter().map(|patch| patch.id).collect();
        assert_eq!(ids, [2, 3], "the new 'a' gets a new id, after 'b'");
        assert_eq!(state.patch("a").unwrap().function_at(0x108).map(|function| function.new), Some(0xa9), "by site");
        assert_eq!(state.patch("a").unwrap().function_at(0x100).map(|function| function.new), Some(0xa9), "by entry");
        assert_eq!(state.patch("a").unwrap().function_at(0x104), None);
    }

    #[test]
    #[should_panic(expected = "planned from")]
    fn a_plan_commits_only_to_the_state_it_was_planned_from() {
        let mut state = two_patches();
        let first = state.plan(Operation::Enable("a")).unwrap();
        let stale = state.plan(Operation::Enable("b")).unwrap();
        state.commit(first);
        state.commit(stale);
    }

    fn add_with(state: &mut State, name: &str, functions: &[Replaced], replace: bool, states: &[(u64, u64)]) {
        let states = states.iter().map(|&(id, version)| SystemState { id, version }).collect();
        run(state, Operation::Add { name, functions: functions.to_vec(), replace, states }).expect("adds");
    }

    #[test]
    fn an_atomic_replace_covers_every_replaced_function_then_drops_the_others() {
        let mut state = two_patches();
        run(&mut state, Operation::Enable("a")).unwrap();
        run(&mut state, Operation::Enable("b")).unwrap();
        // "c" replaces only g: f must return to its original code.
        add_with(&mut state, "c", &[replaced("g", 0x200, 0xc2)], true, &[]);
        let changes = run(&mut state, Operation::Enable("c")).unwrap();
        assert_eq!(changes, vec![change(0x100, None), change(0x200, Some(0xc2))], "f gets a NOP entry");
        assert_eq!(state.topmost(0x100), Some((3, NOP)), "the NOP is on top of f during the transition");
        assert_eq!(state.stack(0x100).unwrap().replacements.len(), 3, "the replaced patches stay below until the end");
        assert_eq!(state.patch("c").unwrap().nops.len(), 1);
        run(&mut state, Operation::DropReplaced("c")).unwrap();
        assert_eq!(state.stack(0x100), None, "f runs its original code, with no stack");
        assert_eq!(state.stack(0x200).unwrap().replacements.to_vec(), [(3, 0xc2)], "only the replace patch is left");
        assert!(!state.patch("a").unwrap().enabled && !state.patch("b").unwrap().enabled, "the replaced are disabled");
        assert!(state.patch("c").unwrap().nops.is_empty(), "the NOP entries are gone");
        // The replaced patches can be removed now; the replace patch disables to the originals.
        run(&mut state, Operation::Remove("a")).unwrap();
        run(&mut state, Operation::Remove("b")).unwrap();
        assert_eq!(run(&mut state, Operation::Disable("c")).unwrap(), vec![change(0x200, None)]);
        assert!(state.functions().is_empty());
    }

    #[test]
    fn a_reversed_atomic_replace_leaves_the_replaced_patches_running() {
        let mut state = two_patches();
        run(&mut state, Operation::Enable("a")).unwrap();
        let before = state.functions().to_vec();
        add_with(&mut state, "c", &[replaced("g", 0x200, 0xc2)], true, &[]);
        run(&mut state, Operation::Enable("c")).unwrap();
        // Disabled before its transition completes: the NOPs pop with it.
        run(&mut state, Operation::Disable("c")).unwrap();
        assert_eq!(state.functions(), &before[..]);
        assert!(state.patch("a").unwrap().enabled);
        assert!(state.patch("c").unwrap().nops.is_empty());
        assert_eq!(state.plan(Operation::DropReplaced("c")).unwrap_err(), PlanError::NotReplacing("c".into()));
    }

    #[test]
    fn states_may_not_be_dropped_by_a_cumulative_patch_nor_downgraded() {
        let mut state = State::new();
        add_with(&mut state, "one", &[replaced("f", 0x100, 0x11)], false, &[(7, 2)]);
        run(&mut state, Operation::Enable("one")).unwrap();
        add_with(&mut state, "drops", &[replaced("f", 0x100, 0x21)], true, &[]);
        add_with(&mut state, "downgrades", &[replaced("f", 0x100, 0x31)], false, &[(7, 1)]);
        add_with(&mut state, "stacks", &[replaced("g", 0x200, 0x41)], false, &[]);
        add_with(&mut state, "keeps", &[replaced("f", 0x100, 0x51)], true, &[(7, 2)]);
        let before = state.clone();
        assert_eq!(
            state.plan(Operation::Enable("drops")).unwrap_err(),
            PlanError::StateDropped { patch: "drops".into(), id: 7, installed_by: "one".into() }
        );
        assert_eq!(
            state.plan(Operation::Enable("downgrades")).unwrap_err(),
            PlanError::StateDowngraded {
                patch: "downgrades".into(),
                id: 7,
                version: 1,
                installed_by: "one".into(),
                installed: 2
            }
        );
        assert_eq!(state, before, "refusals change nothing");
        run(&mut state, Operation::Enable("stacks")).expect("a non-cumulative patch need not handle the state");
        run(&mut state, Operation::Enable("keeps")).expect("same version: compatible");
        assert_eq!(
            state.previous_state(7, "keeps").map(|(patch, found)| (patch.name.as_str(), found.version)),
            Some(("one", 2))
        );
        assert_eq!(
            state.previous_state(7, "one"),
            Some((state.patch("keeps").unwrap(), SystemState { id: 7, version: 2 }))
        );
        assert_eq!(state.previous_state(8, "keeps"), None);
    }

    #[test]
    fn stack_order_is_the_position_and_is_renumbered_after_a_removal() {
        let mut state = State::new();
        for name in ["p1", "p2", "p3"] {
            add_with(&mut state, name, &[], false, &[]);
        }
        assert_eq!(
            [state.stack_order("p1"), state.stack_order("p2"), state.stack_order("p3")],
            [Some(1), Some(2), Some(3)]
        );
        run(&mut state, Operation::Remove("p2")).unwrap();
        assert_eq!(
            [state.stack_order("p1"), state.stack_order("p2"), state.stack_order("p3")],
            [Some(1), None, Some(2)]
        );
    }

    #[test]
    fn module_functions_join_an_enabled_patch_on_top_and_leave_with_the_module() {
        let mut state = two_patches();
        run(&mut state, Operation::Enable("a")).unwrap();
        run(&mut state, Operation::Enable("b")).unwrap();
        // A module at 0x1000..0x2000 loads; both patches name it.
        let added = run(&mut state, Operation::AddObject { name: "a", functions: vec![replaced("m", 0x1100, 0xa9)] });
        assert_eq!(added, Ok(vec![change(0x1100, Some(0xa9))]));
        run(&mut state, Operation::AddObject { name: "b", functions: vec![replaced("m", 0x1100, 0xb9)] }).unwrap();
        assert_eq!(state.topmost(0x1100), Some((2, 0xb9)), "the later patch on top, as enabling would have done");
        assert_eq!(
            state.plan(Operation::AddObject { name: "a", functions: vec![replaced("m", 0x1100, 1)] }).unwrap_err(),
            PlanError::DuplicateFunction("m".into())
        );
        // It goes: the older patch's entry leaves from below, then the newer's.
        assert_eq!(run(&mut state, Operation::RemoveObject { name: "a", range: 0x1000..0x2000 }), Ok(vec![]));
        assert_eq!(
            run(&mut state, Operation::RemoveObject { name: "b", range: 0x1000..0x2000 }),
            Ok(vec![change(0x1100, None)])
        );
        assert_eq!(state.stack(0x1100), None);
        assert_eq!(state.patch("a").unwrap().functions.len(), 2, "the kernel functions stay");
        // A disabled patch takes the functions without stacking them.
        add_with(&mut state, "c", &[], false, &[]);
        assert_eq!(
            run(&mut state, Operation::AddObject { name: "c", functions: vec![replaced("m", 0x1100, 0xc9)] }),
            Ok(vec![])
        );
        assert_eq!(state.stack(0x1100), None);
        assert_eq!(run(&mut state, Operation::Enable("c")), Ok(vec![change(0x1100, Some(0xc9))]));
    }

    #[test]
    fn an_atomic_replace_drops_only_the_patches_enabled_before_it() {
        let mut state = two_patches();
        run(&mut state, Operation::Enable("a")).unwrap();
        add_with(&mut state, "c", &[replaced("g", 0x200, 0xc2)], true, &[]);
        run(&mut state, Operation::Enable("c")).unwrap();
        run(&mut state, Operation::DropReplaced("c")).unwrap();
        // "d" comes after, on another function.
        add_with(&mut state, "d", &[replaced("h", 0x300, 0xd3)], false, &[]);
        run(&mut state, Operation::Enable("d")).unwrap();
        // c's disable reversed: its completion drops the replaced again, which must spare d.
        run(&mut state, Operation::DropReplaced("c")).unwrap();
        assert!(state.patch("d").unwrap().enabled, "a patch enabled after the replace stays");
        assert_eq!(state.topmost(0x300), Some((4, 0xd3)));
        assert_eq!(state.topmost(0x200), Some((3, 0xc2)));
    }

    #[test]
    fn module_functions_go_where_their_patch_was_enabled_in_the_stack() {
        let mut state = State::new();
        // x added first, y second; y enabled first, x second: x is on top of f.
        add_with(&mut state, "x", &[replaced("f", 0x100, 0x11)], false, &[]);
        add_with(&mut state, "y", &[replaced("f", 0x100, 0x21)], false, &[]);
        run(&mut state, Operation::Enable("y")).unwrap();
        run(&mut state, Operation::Enable("x")).unwrap();
        assert_eq!(state.topmost(0x100), Some((1, 0x11)));
        // The module loads; the loader goes through the patches in the order they were added.
        run(&mut state, Operation::AddObject { name: "x", functions: vec![replaced("m", 0x1100, 0x19)] }).unwrap();
        let changes = run(&mut state, Operation::AddObject { name: "y", functions: vec![replaced("m", 0x1100, 0x29)] });
        assert_eq!(changes, Ok(vec![]), "y goes below x: what runs does not change");
        assert_eq!(state.stack(0x1100).unwrap().replacements.to_vec(), [(2, 0x29), (1, 0x19)], "enable order");
        run(&mut state, Operation::Disable("x")).expect("x is topmost on all of its functions");
        assert_eq!(state.topmost(0x1100), Some((2, 0x29)));
    }

    #[test]
    fn a_module_going_during_an_atomic_replace_takes_its_nop_entries_along() {
        let mut state = State::new();
        add_with(&mut state, "a", &[replaced("f", 0x100, 0xa1)], false, &[]);
        run(&mut state, Operation::Enable("a")).unwrap();
        run(&mut state, Operation::AddObject { name: "a", functions: vec![replaced("m", 0x1100, 0xa9)] }).unwrap();
        add_with(&mut state, "r", &[replaced("f", 0x100, 0xc1)], true, &[]);
        run(&mut state, Operation::Enable("r")).unwrap();
        assert_eq!(state.topmost(0x1100), Some((2, NOP)));
        // The module goes during r's transition: only a names it, r's NOP goes too.
        run(&mut state, Operation::RemoveObject { name: "a", range: 0x1000..0x2000 }).unwrap();
        assert_eq!(state.stack(0x1100), None);
        assert!(state.patch("r").unwrap().nops.is_empty(), "the NOP record went with its stack");
        run(&mut state, Operation::DropReplaced("r")).unwrap();
        assert_eq!(state.functions().len(), 1);
    }

    #[test]
    fn a_module_coming_during_an_atomic_replace_gets_its_nop_entries() {
        let mut state = State::new();
        add_with(&mut state, "a", &[replaced("f", 0x100, 0xa1)], false, &[]);
        run(&mut state, Operation::Enable("a")).unwrap();
        add_with(&mut state, "r", &[replaced("f", 0x100, 0xc1)], true, &[]);
        run(&mut state, Operation::Enable("r")).unwrap();
        // The module comes during r's transition: a patches m, r does not.
        run(&mut state, Operation::AddObject { name: "a", functions: vec![replaced("m", 0x1100, 0xa9)] }).unwrap();
        assert_eq!(state.topmost(0x1100), Some((1, 0xa9)));
        let changes = run(&mut state, Operation::AddNops { name: "r", entries: vec![0x1100, 0x100] });
        assert_eq!(changes, Ok(vec![change(0x1100, None)]), "only where r has no entry yet");
        assert_eq!(state.topmost(0x1100), Some((2, NOP)));
        run(&mut state, Operation::DropReplaced("r")).unwrap();
        assert_eq!(state.stack(0x1100), None, "the original, once the replace completed");
        assert_eq!(
            state.plan(Operation::AddNops { name: "a", entries: vec![] }).unwrap_err(),
            PlanError::NotReplacing("a".into())
        );
    }
}
