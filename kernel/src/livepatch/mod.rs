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
//!
//! Enabling and disabling go through a transition (`transition`, the
//! consistency model): the patch's functions are marked in the redirect
//! table, each thread switches when its stack holds none of the code being
//! changed, and once every thread has, the transition completes (for a
//! disable, only then is the patch popped off its functions' stacks). One
//! transition at a time; enabling the patch in transition the other way
//! reverses it.
mod allowed;
pub mod api;
mod builtin;
pub mod callbacks;
pub mod direct;
pub mod notes;
mod redirect;
pub mod shadow;
pub mod transition;

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
pub use callbacks::{Callback, Callbacks};
use core::fmt;
use portable::livepatch::{NOP, Operation, PatchState, Replaced, State};
pub use portable::livepatch::{PlanError, SystemState};
#[cfg_attr(not(feature = "ktest"), allow(unused_imports))]
pub use transition::{Blocked, Blocker};
use transition::{PATCHED, UNPATCHED};

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

/// The functions of one object: the kernel (`None`) or a loadable module,
/// which may load before or after the patch is added (its functions are
/// resolved and patched when it loads: `module_coming`), with the object's
/// callbacks.
#[derive(Clone, Default)]
pub struct Object {
    pub module: Option<String>,
    pub functions: Vec<Function>,
    pub callbacks: Callbacks,
}

/// A named set of replacements, enabled and disabled as a whole.
#[derive(Clone, Default)]
pub struct Patch {
    pub name: String,
    pub objects: Vec<Object>,
    /// Atomic replace (a cumulative patch): enabling it takes over from every
    /// enabled patch; functions it does not replace return to their originals.
    pub replace: bool,
    /// The system states it handles (`klp_get_state`).
    pub states: Vec<SystemState>,
    /// Its kernel targets need an ftrace site but not `#[livepatchable]`
    /// (a module's `abi-checked` line: the tool that made the patch compared
    /// the compiled ABI of both builds, which the marker otherwise vouches for).
    pub abi_checked: bool,
}

/// The name of the kernel as an object (Linux's "vmlinux"), in callbacks and `klp list`.
pub const KERNEL_OBJECT: &str = "vmlinux";

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
    /// A module object's module is not loaded (from `module::resolve_function`).
    UnknownObject(String),
    /// A pre-patch callback of `object` returned `code`: nothing was changed.
    PrePatch { patch: String, object: String, code: i32 },
    /// Text patching or ftrace registration failed; nothing was changed.
    Ftrace(FtraceError),
    /// `enable`/`disable`: another patch's transition is still in progress
    /// (after waiting `transition_wait(TRANSITION_WAIT_MILLISECONDS)`); `blocked` says why.
    TransitionInProgress { patch: String, blocked: Vec<Blocked> },
    /// `enable`/`disable` of the patch in transition, in the direction it already goes.
    AlreadyInTransition { patch: String, enabling: bool },
    /// `force`/`status` with no transition in progress (or of another patch).
    NoTransition(String),
    /// `remove` of a patch whose transition was forced: a thread may still run its code.
    Forced(String),
    /// `force`: every thread was switched, but completing failed (the text
    /// patching of the final table); the transition stays, retried.
    ForceIncomplete(String),
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
            LivepatchError::PrePatch { patch, object, code } => write!(
                formatter,
                "patch '{patch}': the pre-patch callback of object '{object}' failed ({code}); nothing was changed"
            ),
            LivepatchError::Ftrace(error) => write!(formatter, "{error}"),
            LivepatchError::TransitionInProgress { patch, blocked } => {
                write!(formatter, "patch '{patch}' is still in transition")?;
                match blocked.first() {
                    Some(first) => write!(
                        formatter,
                        ", blocked by {first}{}",
                        if blocked.len() > 1 {
                            alloc::format!(" and {} more", blocked.len() - 1)
                        } else {
                            String::new()
                        }
                    ),
                    None => Ok(()),
                }
            }
            LivepatchError::AlreadyInTransition { patch, enabling } => {
                write!(formatter, "patch '{patch}' is already being {}", if *enabling { "enabled" } else { "disabled" })
            }
            LivepatchError::NoTransition(patch) => write!(formatter, "patch '{patch}' is not in transition"),
            LivepatchError::Forced(patch) => write!(
                formatter,
                "patch '{patch}' was forced: a thread may still run its code, so it stays (and its module with it)"
            ),
            LivepatchError::ForceIncomplete(patch) => write!(
                formatter,
                "patch '{patch}': every thread was switched, but completing the transition failed; it is retried"
            ),
        }
    }
}

impl From<PlanError> for LivepatchError {
    fn from(error: PlanError) -> LivepatchError {
        LivepatchError::Plan(error)
    }
}

/// The transition in progress.
pub struct Transition {
    /// The patch in transition.
    pub patch: String,
    pub id: u64,
    /// Timebase at its start.
    pub started: u64,
    /// Rounds of checks so far.
    pub attempts: u64,
    /// The threads that blocked the last round.
    pub blocked: Vec<Blocked>,
    /// Timebase of the last fake signal (the start, before the first).
    pub signalled: u64,
}

/// The livepatch core's state, under one lock.
struct Core {
    /// The patches and the replacement stacks (`portable::livepatch`):
    /// changed only by committing a plan whose redirect is in place.
    state: State,
    transition: Option<Transition>,
    /// The patches whose transition `force` completed: their modules are
    /// never unloaded (a thread may still run their code, as in Linux).
    forced: Vec<String>,
    /// The patches added with `abi_checked` (for `klp list`).
    abi_checked: Vec<String>,
    /// Whether the thread that retries a stalled transition runs.
    worker: bool,
    /// Per patch, in the order they were added: its objects, their
    /// callbacks and whether their module is loaded (`callbacks`).
    objects: Vec<callbacks::PatchObjects>,
}

/// Lock order: `REGISTRY`, then `transition`'s `SWITCH`, then the scheduler
/// lock (`thread::set_patch_states`, `with_switched_out`,
/// `wake_interruptible`, `spawn`); `REGISTRY` before `module`'s `MODULES`.
/// Nothing takes `REGISTRY` while holding one of the others.
static REGISTRY: Mutex<Core> = Mutex::new(Core {
    state: State::new(),
    transition: None,
    forced: Vec::new(),
    abi_checked: Vec::new(),
    worker: false,
    objects: Vec::new(),
});

/// How long `enable` and `disable` wait for their transition (and for
/// another patch's transition before they start) before they return,
/// unless the boot argument `livepatch.transition_wait` says otherwise.
pub const TRANSITION_WAIT_MILLISECONDS: u64 = 100;
/// The most `livepatch.transition_wait` may ask for.
pub const TRANSITION_WAIT_LIMIT_MILLISECONDS: u64 = 60_000;
/// `livepatch.transition_wait=MILLISECONDS`, or `u64::MAX` when not given.
static TRANSITION_WAIT_OVERRIDE: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(u64::MAX);

/// How long a call that starts or needs a transition waits for it before
/// returning it pending: `default` (`TRANSITION_WAIT_MILLISECONDS` for
/// `enable` and `disable`, `module::UNLOAD_WAIT_MILLISECONDS` for `unload`),
/// or what the boot argument `livepatch.transition_wait` set for them all.
/// With 0, each makes one attempt and leaves the rest to the worker: the
/// path every call takes on a machine too slow or too busy to finish the
/// transition at once (`cargo xtask test` runs the livepatch suite so).
pub fn transition_wait(default: u64) -> u64 {
    match TRANSITION_WAIT_OVERRIDE.load(core::sync::atomic::Ordering::Relaxed) {
        u64::MAX => default,
        milliseconds => milliseconds,
    }
}

/// Reads the boot arguments `livepatch.direct=off` (see `direct::configure`)
/// and `livepatch.transition_wait=MILLISECONDS` (see `transition_wait`;
/// at most `TRANSITION_WAIT_LIMIT_MILLISECONDS`), before any patch exists:
/// written once here, read without a lock from then on.
pub fn configure(arguments: &str) {
    direct::configure(arguments);
    // The last one given counts, as on Linux's command line.
    let Some(value) =
        arguments.split_whitespace().filter_map(|word| word.strip_prefix("livepatch.transition_wait=")).next_back()
    else {
        return;
    };
    match value.parse::<u64>() {
        Ok(milliseconds) if milliseconds <= TRANSITION_WAIT_LIMIT_MILLISECONDS => {
            TRANSITION_WAIT_OVERRIDE.store(milliseconds, core::sync::atomic::Ordering::Relaxed);
            // Said from the setting: `cargo xtask test` requires this line
            // in every boot of the run that sets it.
            crate::println!("klp: transitions wait {milliseconds} ms (livepatch.transition_wait={milliseconds})");
        }
        _ => crate::println!(
            "klp: livepatch.transition_wait={value} ignored: not a number of milliseconds up to \
             {TRANSITION_WAIT_LIMIT_MILLISECONDS}; the waits keep their defaults"
        ),
    }
}
/// The name of the worker thread that finishes a transition left pending.
pub const WORKER_NAME: &str = "klp-transition";
/// How often the worker retries a stalled transition.
pub const RETRY_MILLISECONDS: u64 = 10;
/// How long a transition stalls before the worker sends its blockers the
/// fake signal (`signal`), and again after as long each time (Linux: 15 s).
pub const SIGNAL_MILLISECONDS: u64 = 1000;

/// Where a transition stands when `enable` or `disable` returns.
#[derive(Debug)]
pub enum Progress {
    /// Every thread switched: the patch's state is final.
    Complete,
    /// Still in progress (a worker retries every `RETRY_MILLISECONDS`): the
    /// threads that block it, and why.
    Pending(Vec<Blocked>),
}

/// Tells the debugger (gdb) what patch `name` now does, and every patch's
/// stack_order (without allocating: it runs on every enable and disable).
fn announce(core: &Core, name: &str) {
    let patch = core.state.patch(name);
    let pairs: Vec<(u64, u64)> = patch
        .map(|patch| patch.functions.iter().map(|function| (function.entry, function.new)).collect())
        .unwrap_or_default();
    let enabled = patch.is_some_and(|patch| patch.enabled);
    let mut objects = [("", false); crate::debug::MAX_OBJECTS];
    let mut count = 0;
    if let Some(entry) = core.objects.iter().find(|objects| objects.patch == name) {
        for (slot, object) in objects.iter_mut().zip(&entry.objects) {
            *slot = (object.name(), object.loaded && enabled);
            count += 1;
        }
    }
    let details =
        crate::debug::PatchDetails { replace: patch.is_some_and(|patch| patch.replace), objects: &objects[..count] };
    crate::debug::patch_changed(name, patch.map(|patch| patch.enabled), &pairs, &details, core.state.patches());
}

/// Patch `name`'s objects and whether each is patched now (loaded, the patch enabled).
fn objects_summary(core: &Core, name: &str) -> Vec<(String, bool)> {
    let enabled = core.state.patch(name).is_some_and(|patch| patch.enabled);
    core.objects
        .iter()
        .find(|objects| objects.patch == name)
        .map(|objects| {
            objects.objects.iter().map(|object| (String::from(object.name()), object.loaded && enabled)).collect()
        })
        .unwrap_or_default()
}

/// The objects of patch `name`.
fn objects_of<'a>(objects: &'a mut [callbacks::PatchObjects], name: &str) -> Option<&'a mut callbacks::PatchObjects> {
    objects.iter_mut().find(|entry| entry.patch == name)
}

/// The code a transition of patch `id` changes, from the stacks where it is
/// topmost: each function's original code, the patch's replacement and the
/// one below it.
fn changed_code(functions: &[(u64, Stack)], id: u64) -> Vec<transition::Code> {
    let modules = crate::module::memory_ranges();
    // The originals come in entry order (the stacks are sorted by entry);
    // the replacements, (address, original entry), are looked up once each
    // (a patch may use one replacement for many functions).
    let mut code = Vec::with_capacity(2 * functions.len());
    let mut replacements: Vec<(u64, u64)> = Vec::new();
    for (entry, stack) in functions {
        if let [below @ .., (top, new)] = stack.replacements.as_slice()
            && *top == id
        {
            code.push(transition::code_at(*entry, *entry, &modules));
            if *new != NOP {
                replacements.push((*new, *entry));
            }
            if let Some((_, previous)) = below.last() {
                replacements.push((*previous, *entry));
            }
        }
    }
    replacements.sort_unstable_by_key(|(address, _)| *address);
    replacements.dedup_by_key(|(address, _)| *address);
    code.extend(replacements.iter().map(|(address, entry)| transition::code_at(*entry, *address, &modules)));
    code
}

/// Starts the transition of `name` to `target`, or reverses the one in
/// progress, waiting up to `transition_wait(TRANSITION_WAIT_MILLISECONDS)`
/// for another patch's transition to complete first.
fn start(name: &str, target: u64) -> Result<(), LivepatchError> {
    let started = crate::arch::registers::timebase();
    let deadline = started + crate::time::milliseconds_to_timebase(transition_wait(TRANSITION_WAIT_MILLISECONDS));
    loop {
        {
            let mut core = REGISTRY.lock();
            match &core.transition {
                Some(transition) if transition.patch == name => {
                    if transition::target() == target {
                        return Err(LivepatchError::AlreadyInTransition {
                            patch: String::from(name),
                            enabling: target == PATCHED,
                        });
                    }
                    transition::reverse();
                    try_complete(&mut core);
                    return Ok(());
                }
                // Another patch's: one more round first (with a wait of 0
                // too, so the refusal names blockers checked just now).
                Some(_) => {
                    try_complete(&mut core);
                    if let Some(transition) = &core.transition
                        && crate::arch::registers::timebase() >= deadline
                    {
                        return Err(LivepatchError::TransitionInProgress {
                            patch: transition.patch.clone(),
                            blocked: transition.blocked.clone(),
                        });
                    }
                }
                None => return begin(&mut core, name, target),
            }
            if core.transition.is_none() {
                continue;
            }
        }
        pause_between_rounds(started);
    }
}

/// Starts the transition of `name` to `target` (none in progress): checks
/// the operation, marks every thread, publishes the marked table, and tries
/// once to complete it.
fn begin(core: &mut Core, name: &str, target: u64) -> Result<(), LivepatchError> {
    let plan = core.state.plan(if target == PATCHED { Operation::Enable(name) } else { Operation::Disable(name) })?;
    let patch = core.state.patch(name).expect("planned above");
    let id = patch.id;
    // The callbacks before anything changes: a failing pre-patch one
    // refuses the enable (having run the post-unpatch ones of the objects
    // whose pre-patch ran).
    if let Some(objects) = objects_of(&mut core.objects, name) {
        if target == PATCHED {
            objects.pre_patch_all()?;
        } else {
            objects.loaded().for_each(|object| object.pre_unpatch());
        }
    }
    // Enabling installs the stacks with the patch on top (committed at
    // once: the patch is enabled, in transition); disabling keeps the
    // stacks as they are until it completes.
    let functions =
        if target == PATCHED { plan.functions().expect("enable changes the stacks") } else { core.state.functions() };
    let code = changed_code(functions, id);
    transition::begin(target);
    // A disable keeps the sites as they are: only the table changes.
    let installed =
        if target == PATCHED { redirect::apply(functions, Some(id)) } else { redirect::publish(functions, Some(id)) };
    if let Err(error) = installed {
        transition::end();
        // Cancelled (Linux's `klp_cancel_transition`): the objects whose
        // pre-patch callback ran get their post-unpatch one.
        if target == PATCHED
            && let Some(objects) = objects_of(&mut core.objects, name)
        {
            objects.loaded().for_each(callbacks::ObjectEntry::post_unpatch);
        }
        return Err(ftrace_error(core.state.patch(name), error));
    }
    // The marked table and every site are in place: threads may switch.
    transition::open(target, code);
    if target == PATCHED {
        core.state.commit(plan);
        callbacks::sync_enabled(&core.state);
    }
    core.transition = Some(Transition {
        patch: String::from(name),
        id,
        started: crate::arch::registers::timebase(),
        attempts: 0,
        blocked: Vec::new(),
        signalled: crate::arch::registers::timebase(),
    });
    announce(core, name);
    #[cfg(feature = "ktest")]
    if IMMEDIATE.load(core::sync::atomic::Ordering::Relaxed) {
        transition::force();
    }
    try_complete(core);
    Ok(())
}

/// The test-only immediate model: every thread switches at the start of a
/// transition, wherever it is (the model before the consistency model; the
/// tests show what it gets wrong).
#[cfg(feature = "ktest")]
pub static IMMEDIATE: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// One round: tries to switch every thread; completes the transition if
/// none is left.
fn try_complete(core: &mut Core) {
    let Some(transition) = core.transition.as_mut() else { return };
    transition.attempts += 1;
    transition.blocked = transition::switch_threads();
    if transition.blocked.is_empty() {
        complete(core);
    } else {
        let mut text = alloc::format!(
            "patch '{}' in transition to {}: {} threads block it\n",
            transition.patch,
            if transition::target() == PATCHED { "patched" } else { "unpatched" },
            transition.blocked.len()
        );
        for blocked in &transition.blocked {
            text.push_str(&alloc::format!("  {blocked}\n"));
        }
        crate::debug::transition_changed(&text);
    }
}

/// Ends the transition in progress, every thread being in the target state:
/// publishes the table without marks (for a disable, with the patch popped
/// off its functions' stacks), whose grace period passes before `apply`
/// returns, then clears the threads' states.
fn complete(core: &mut Core) {
    let Some(transition) = core.transition.take() else { return };
    let name = transition.patch.as_str();
    let replace = core.state.patch(name).is_some_and(|patch| patch.replace);
    let result = if transition::target() == PATCHED && replace {
        // An atomic replace: the patches it replaced leave the stacks (their
        // callbacks do not run) and its NOP entries go.
        match core.state.plan(Operation::DropReplaced(name)) {
            Ok(plan) => {
                let replaced: Vec<String> = core
                    .state
                    .patch(name)
                    .map(|patch| {
                        core.state
                            .patches()
                            .iter()
                            .filter(|other| patch.replaces.contains(&other.id))
                            .map(|other| other.name.clone())
                            .collect()
                    })
                    .unwrap_or_default();
                let applied = redirect::apply(plan.functions().expect("dropping changes the stacks"), None);
                if applied.is_ok() {
                    core.state.commit(plan);
                    for objects in core.objects.iter_mut().filter(|objects| replaced.contains(&objects.patch)) {
                        objects.objects.iter_mut().for_each(|object| object.pre_patched = false);
                    }
                    for replaced in &replaced {
                        announce(core, replaced);
                    }
                }
                applied
            }
            Err(error) => panic!("the atomic replace in transition is enabled: {error}"),
        }
    } else if transition::target() == PATCHED {
        // The same functions: only the table loses its marks.
        redirect::publish(core.state.functions(), None)
    } else {
        match core.state.plan(Operation::Disable(name)) {
            Ok(plan) => {
                let applied = redirect::apply(plan.functions().expect("disable changes the stacks"), None);
                if applied.is_ok() {
                    core.state.commit(plan);
                }
                applied
            }
            Err(error) => panic!("the patch in transition can be disabled: {error}"),
        }
    };
    if let Err(error) = result {
        // Only text patching can fail here (no memory for a table): the
        // marked table stays, and the next round tries again.
        crate::println!("klp: completing the transition of '{name}' failed ({error}); retrying");
        core.transition = Some(transition);
        return;
    }
    let enabled = transition::target() == PATCHED;
    transition::end();
    if let Some(objects) = objects_of(&mut core.objects, name) {
        if enabled {
            objects.loaded().for_each(|object| object.post_patch());
        } else {
            objects.loaded().for_each(callbacks::ObjectEntry::post_unpatch);
        }
    }
    // After the post-patch callbacks: an atomic replace's may still find
    // the replaced patches' states (`klp_get_prev_state`), as in Linux.
    callbacks::sync_enabled(&core.state);
    crate::debug::transition_changed("");
    announce(core, name);
}

/// Between two rounds of checks, where the threads that block a transition
/// must run to reach their safe points: every CPU running a blocker gets a
/// reschedule IPI (under QEMU's round-robin TCG an IPI is what hands that
/// vCPU its turn at once; its blocker then switches itself within
/// microseconds and kicks this CPU back, `transition::switch_current`); then,
/// for the first millisecond since `started`, this thread yields and confers
/// and looks again at once; after that, it sleeps a millisecond per round.
fn pause_between_rounds(started: u64) {
    let running: portable::cpuset::CpuSet = REGISTRY
        .lock()
        .transition
        .iter()
        .flat_map(|transition| transition.blocked.iter())
        .filter_map(|blocked| match blocked.blocker {
            Blocker::Running { cpu } => Some(cpu),
            _ => None,
        })
        .fold(portable::cpuset::CpuSet::EMPTY, |cpus, cpu| cpus.with(cpu));
    // Listed as a waiter before the kicks: a blocker that switches at once
    // kicks back.
    let me = 1u64 << crate::arch::percpu::smp_processor_id();
    transition::WAITERS.fetch_or(me, core::sync::atomic::Ordering::SeqCst);
    for cpu in running.iter() {
        crate::arch::smp::send_reschedule(cpu);
    }
    if crate::arch::registers::timebase() - started < crate::time::milliseconds_to_timebase(1) {
        crate::thread::yield_now();
        crate::arch::smp::confer();
    } else {
        crate::thread::sleep_milliseconds(1);
    }
    transition::WAITERS.fetch_and(!me, core::sync::atomic::Ordering::SeqCst);
}

/// Waits up to `milliseconds` for the transition in progress to complete,
/// checking the threads between pauses (`pause_between_rounds`); starts the
/// worker that keeps retrying if it does not.
pub fn wait_for_transition(milliseconds: u64) -> Progress {
    let started = crate::arch::registers::timebase();
    let deadline = started + crate::time::milliseconds_to_timebase(milliseconds);
    loop {
        {
            let mut core = REGISTRY.lock();
            if core.transition.is_some() {
                try_complete(&mut core);
            }
            match &core.transition {
                None => return Progress::Complete,
                Some(transition) if crate::arch::registers::timebase() >= deadline => {
                    let blocked = transition.blocked.clone();
                    if !core.worker {
                        core.worker = true;
                        if crate::thread::spawn(WORKER_NAME, retry_transition).is_none() {
                            core.worker = false;
                        }
                    }
                    return Progress::Pending(blocked);
                }
                Some(_) => {}
            }
        }
        pause_between_rounds(started);
    }
}

/// The worker: retries the transition in progress every `RETRY_MILLISECONDS`
/// until none is left, and sends its blockers the fake signal every
/// `SIGNAL_MILLISECONDS` it stalls.
fn retry_transition() {
    loop {
        crate::thread::sleep_milliseconds(RETRY_MILLISECONDS);
        let mut core = REGISTRY.lock();
        try_complete(&mut core);
        let Some(transition) = core.transition.as_mut() else {
            core.worker = false;
            return;
        };
        let now = crate::arch::registers::timebase();
        if now - transition.signalled >= crate::time::milliseconds_to_timebase(SIGNAL_MILLISECONDS) {
            transition.signalled = now;
            wake_blockers(&transition.blocked);
        }
    }
}

/// Wakes every thread in `blocked` that sleeps in `thread::sleep_interruptible`,
/// whatever blocks it (see `signal`); returns how many.
fn wake_blockers(blocked: &[Blocked]) -> usize {
    blocked.iter().filter(|blocked| crate::thread::wake_interruptible(blocked.thread)).count()
}

/// The fake signal (Linux's `klp_send_signals`): wakes the threads that
/// block the transition in progress while asleep in
/// `thread::sleep_interruptible`, so that they can leave the function it
/// changes and switch; returns how many it woke. Whatever blocks them: a
/// changed function on the stack, or a stack that cannot be walked
/// reliably, which a thread asleep can have too (a tick taken as it went to
/// sleep switched it away below an exception frame), as Linux wakes every
/// task not yet switched. The worker sends it
/// by itself every `SIGNAL_MILLISECONDS` a transition stalls.
pub fn signal() -> usize {
    let mut core = REGISTRY.lock();
    try_complete(&mut core);
    let Some(transition) = core.transition.as_mut() else { return 0 };
    transition.signalled = crate::arch::registers::timebase();
    wake_blockers(&transition.blocked)
}

/// The calling thread's safe point: during a transition, a thread not yet
/// switched checks its own stack and switches if nothing the patch changes
/// is on it. Yield, sleep, join and the idle loop call it; a long-running
/// loop calls it (`klp_safe_point`) to let a transition past it. Inlined:
/// outside a transition it is one load and a branch on every yield.
#[macros::notrace]
#[inline(always)]
pub fn safe_point() {
    let target = transition::target();
    if target != transition::UNDEFINED {
        switch_at_safe_point(target);
    }
}

/// `safe_point` during a transition.
#[macros::notrace]
#[inline(never)]
fn switch_at_safe_point(target: u64) {
    // Safety: the calling thread's own thread_info.
    if unsafe { (*crate::thread::current_thread_info()).patch_state } == target {
        return;
    }
    if transition::switch_current().is_ok()
        && transition::WAITERS.load(core::sync::atomic::Ordering::SeqCst)
            & (1 << crate::arch::percpu::smp_processor_id())
            != 0
    {
        // Switched, and the thread waiting for the transition is on this
        // CPU: let it look now rather than after this thread's time slice
        // (a waiter on another CPU was kicked by `switch_current`).
        crate::thread::yield_now();
    }
}

/// Completes the transition of `name` at once, switching every thread
/// without checking its stack (Linux's `klp force`): threads may still run
/// the old code. The patch's module can never be unloaded afterwards.
pub fn force(name: &str) -> Result<(), LivepatchError> {
    let mut core = REGISTRY.lock();
    match &core.transition {
        Some(transition) if transition.patch == name => {}
        _ => return Err(LivepatchError::NoTransition(String::from(name))),
    }
    transition::force();
    // An atomic replace forced to completion also leaves the patches it
    // replaces with threads that may still run them (Linux's
    // `klp_force_transition` marks them forced too).
    let mut forced: Vec<String> = alloc::vec![String::from(name)];
    if transition::target() == PATCHED
        && let Some(patch) = core.state.patch(name)
    {
        forced.extend(
            core.state
                .patches()
                .iter()
                .filter(|other| patch.replaces.contains(&other.id))
                .map(|other| other.name.clone()),
        );
    }
    for name in forced {
        if !core.forced.contains(&name) {
            core.forced.push(name);
        }
    }
    complete(&mut core);
    if core.transition.is_some() {
        return Err(LivepatchError::ForceIncomplete(String::from(name)));
    }
    Ok(())
}

/// Lets the module of a patch forced by the test isolation be unloaded
/// again (tests only: a test that left a transition stuck is reported, and
/// the next tests must not inherit its module).
#[cfg(feature = "ktest")]
pub fn forget_forced(name: &str) {
    REGISTRY.lock().forced.retain(|forced| forced != name);
}

/// Whether any patch is enabled (ftrace cannot be turned off then).
pub fn any_enabled() -> bool {
    REGISTRY.lock().state.patches().iter().any(|patch| patch.enabled)
}

/// Switches direct calls on or off (`direct::set_enabled`), under the
/// livepatch lock so no transition starts or ends meanwhile.
fn set_direct_calls(on: bool) -> Result<(), trace::FtraceError> {
    let _core = REGISTRY.lock();
    let before = direct::enabled();
    direct::store_enabled(on);
    let result = redirect::reconcile_direct();
    if result.is_err() {
        direct::store_enabled(before);
    }
    result
}

/// The name of the livepatch core's ftrace ops.
pub const LIVEPATCH_OPS_NAME: &str = "livepatch";

/// Whether patch `name` is in transition now.
pub fn in_transition(name: &str) -> bool {
    REGISTRY.lock().transition.as_ref().is_some_and(|transition| transition.patch == name)
}

/// Whether patch `name` was ever forced (its module stays loaded for good).
pub fn was_forced(name: &str) -> bool {
    REGISTRY.lock().forced.iter().any(|forced| forced == name)
}

/// The transition in progress: the patch, whether it enables it, how long
/// it has run (timebase ticks), the rounds so far, and the threads that
/// blocked the last one.
pub struct TransitionStatus {
    pub patch: String,
    pub enabling: bool,
    pub elapsed: u64,
    pub attempts: u64,
    pub blocked: Vec<Blocked>,
}

/// The transition in progress, after one more round of checks.
pub fn status() -> Option<TransitionStatus> {
    let mut core = REGISTRY.lock();
    try_complete(&mut core);
    let transition = core.transition.as_ref()?;
    Some(TransitionStatus {
        patch: transition.patch.clone(),
        enabling: transition::target() == PATCHED,
        elapsed: crate::arch::registers::timebase() - transition.started,
        attempts: transition.attempts,
        blocked: transition.blocked.clone(),
    })
}

/// Adds a patch (disabled), after resolving every function it names in the
/// kernel and in the modules that are loaded (a module object whose module
/// is not loaded waits for it: `module_coming`): an unknown, ambiguous,
/// notrace or (unless the patch is `abi_checked`, for kernel targets) not
/// `#[livepatchable]` target, one with inlined copies
/// (unless the function allows them), or a function named twice, refuses
/// the whole patch here, before anything could run. Names are unique.
pub fn add(patch: Patch) -> Result<(), LivepatchError> {
    let mut core = REGISTRY.lock();
    let mut functions: Vec<Replaced> = Vec::new();
    let mut entries = Vec::with_capacity(patch.objects.len());
    for object in &patch.objects {
        let resolved = match resolve_object(object, patch.abi_checked) {
            Ok(resolved) => Some(resolved),
            // A module that is not loaded: its object waits for it.
            Err(LivepatchError::UnknownObject(module)) if object.module.as_ref() == Some(&module) => None,
            Err(error) => return Err(error),
        };
        entries.push(resolved.as_ref().map(|resolved| resolved.iter().map(|function| function.entry).collect()));
        if let Some(resolved) = resolved {
            if functions.is_empty() {
                functions = resolved;
            } else {
                functions.extend(resolved);
            }
        }
    }
    let name = patch.name;
    let plan = core.state.plan(Operation::Add {
        name: &name,
        functions,
        replace: patch.replace,
        states: patch.states.clone(),
    })?;
    core.state.commit(plan);
    if patch.abi_checked {
        core.abi_checked.push(name.clone());
    }
    callbacks::add_states(&name, &patch.states);
    let objects = patch
        .objects
        .into_iter()
        .zip(entries)
        .map(|(object, entries)| {
            let loaded = entries.is_some();
            callbacks::ObjectEntry::new(object, loaded, entries.unwrap_or_default())
        })
        .collect();
    core.objects.push(callbacks::PatchObjects { patch: name.clone(), objects });
    announce(&core, &name);
    Ok(())
}

/// Resolves the functions of `object` (the kernel's, or a loaded module's;
/// `UnknownObject` when its module is not loaded, also for an object with
/// callbacks only); `abi_checked` waives `#[livepatchable]` for the kernel's.
fn resolve_object(object: &Object, abi_checked: bool) -> Result<Vec<Replaced>, LivepatchError> {
    if let Some(module) = &object.module
        && !crate::module::is_target(module)
    {
        return Err(LivepatchError::UnknownObject(module.clone()));
    }
    object
        .functions
        .iter()
        .map(|function| {
            let (entry, site) = match &object.module {
                None => resolve(function, abi_checked)?,
                Some(module) => crate::module::resolve_function(module, &function.old_name, function.old_position)?,
            };
            Ok(Replaced {
                name: function.old_name.clone(),
                entry,
                site,
                new: function.new_address,
                allow_inlined: function.allow_inlined,
            })
        })
        .collect()
}

/// Removes a disabled patch; never one that was forced (a thread may still
/// run its code: its replacements, and its module, stay).
pub fn remove(name: &str) -> Result<(), LivepatchError> {
    let mut core = REGISTRY.lock();
    // Under the same lock as the commit: a force completing meanwhile is seen.
    if core.forced.iter().any(|forced| forced == name) {
        return Err(LivepatchError::Forced(String::from(name)));
    }
    let plan = core.state.plan(Operation::Remove(name))?;
    core.state.commit(plan);
    core.objects.retain(|objects| objects.patch != name);
    core.abi_checked.retain(|checked| checked != name);
    callbacks::remove_states(name);
    announce(&core, name);
    Ok(())
}

/// The (global entry, ftrace site) of the function `function` names,
/// checked to be patchable: it exists, has an ftrace site, is marked
/// `#[livepatchable]` (see `allowed`; not required when `abi_checked`) and
/// no caller holds an inlined copy of it, unless `function.allow_inlined`
/// (see `notes`).
pub fn resolve(function: &Function, abi_checked: bool) -> Result<(u64, u64), LivepatchError> {
    let name = &function.old_name;
    let found = match is_elf_name(name) {
        true => by_elf_name(name, function.old_position)?,
        false => trace::site_table().named_entry(name, function.old_position).map(|site| (site.function, site.address)),
    };
    match found {
        Ok((entry, _)) if !abi_checked && !is_livepatchable(entry) => {
            Err(LivepatchError::NotLivepatchable(name.clone()))
        }
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

/// Whether `name` is a Rust symbol as the ELF symbol table writes it (v0
/// mangling, `_R...`) rather than a readable name (`kernel::a::b`): a
/// `replace` line names a function so when its readable name has spaces (a
/// trait method, `<T as Trait>::method`), which a description cannot hold.
fn is_elf_name(name: &str) -> bool {
    name.starts_with("_R") && name.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'$')
}

/// The (global entry, site) of the function whose ELF name is `name`, the
/// `position`th of that name (from 1; none: the only one), through the
/// kernel's klp table. An unknown name is `UnknownFunction`, a function
/// without a site `NotTraceable`; an ambiguous name or a bad position comes
/// back as the `NameError` the readable names give.
fn by_elf_name(name: &str, position: Option<usize>) -> Result<Result<(u64, u64), NameError>, LivepatchError> {
    use portable::symbols::KlpLookupError;
    let table = symbols::klp_table().ok_or_else(|| LivepatchError::UnknownFunction(String::from(name)))?;
    let entry = match table.klp_address(name, position.unwrap_or(0)) {
        Ok(entry) => entry,
        Err(KlpLookupError::Missing) => return Err(LivepatchError::UnknownFunction(String::from(name))),
        Err(KlpLookupError::Ambiguous { count }) => return Ok(Err(NameError::Ambiguous { count })),
        Err(KlpLookupError::BadPosition { count }) => return Ok(Err(NameError::BadPosition { count })),
    };
    let sites = trace::site_table();
    match sites.index_of(entry).map(|index| &sites.sites()[index]) {
        Some(site) if site.function == entry => Ok(Ok((entry, site.address))),
        _ => Err(LivepatchError::NotTraceable(String::from(name))),
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

/// Enables a patch: starts its transition (the calling thread switches at
/// once unless the patch's code is on its own stack) and waits up to
/// `transition_wait(TRANSITION_WAIT_MILLISECONDS)` for it to complete. Enabling a patch that
/// is being disabled reverses that transition.
pub fn enable(name: &str) -> Result<Progress, LivepatchError> {
    start(name, PATCHED)?;
    Ok(wait_for_transition(transition_wait(TRANSITION_WAIT_MILLISECONDS)))
}

/// Disables a patch (it must be the topmost on each of its functions):
/// starts its transition and waits as `enable` does; the patch leaves its
/// functions' stacks when the transition completes. Disabling a patch that
/// is being enabled reverses that transition.
pub fn disable(name: &str) -> Result<Progress, LivepatchError> {
    start(name, UNPATCHED)?;
    Ok(wait_for_transition(transition_wait(TRANSITION_WAIT_MILLISECONDS)))
}

/// One patch in `klp list`.
pub struct PatchSummary {
    pub name: String,
    pub enabled: bool,
    /// `Some(true)` while being enabled, `Some(false)` while being disabled.
    pub transition: Option<bool>,
    /// Its transition was forced: its module stays loaded.
    pub forced: bool,
    /// An atomic replace.
    pub replace: bool,
    /// Its 1-based position in the patch list (Linux's `stack_order`).
    pub stack_order: usize,
    /// Per object (`vmlinux` or a module): its name, and whether it is
    /// patched now (loaded, and the patch enabled).
    pub objects: Vec<(String, bool)>,
    /// Its system states, (id, version).
    pub states: Vec<(u64, u64)>,
    /// Added `abi_checked`: its kernel targets need not be `#[livepatchable]`.
    pub abi_checked: bool,
    pub functions: Vec<FunctionSummary>,
}

impl PatchSummary {
    /// "stack_order N, replace yes|no; objects: vmlinux (patched), ...; states ID vVERSION, ...",
    /// then " [abi-checked]" for a patch added `abi_checked`
    /// (`klp list`'s second line per patch, and the patch channel's replies).
    pub fn details(&self) -> String {
        let objects: Vec<String> = self
            .objects
            .iter()
            .map(|(object, patched)| alloc::format!("{object} ({})", if *patched { "patched" } else { "not patched" }))
            .collect();
        let states: Vec<String> = self.states.iter().map(|(id, version)| alloc::format!("{id} v{version}")).collect();
        alloc::format!(
            "stack_order {}, replace {}; objects: {}{}{}",
            self.stack_order,
            if self.replace { "yes" } else { "no" },
            objects.join(", "),
            if states.is_empty() { String::new() } else { alloc::format!("; states {}", states.join(", ")) },
            if self.abi_checked { " [abi-checked]" } else { "" }
        )
    }
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
    let core = REGISTRY.lock();
    let registry = &core.state;
    registry
        .patches()
        .iter()
        .enumerate()
        .map(|(index, patch)| PatchSummary {
            name: patch.name.clone(),
            enabled: patch.enabled,
            replace: patch.replace,
            stack_order: index + 1,
            objects: objects_summary(&core, &patch.name),
            states: patch.states.iter().map(|state| (state.id, state.version)).collect(),
            transition: core
                .transition
                .as_ref()
                .filter(|transition| transition.id == patch.id)
                .map(|_| transition::target() == PATCHED),
            forced: core.forced.contains(&patch.name),
            abi_checked: core.abi_checked.contains(&patch.name),
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

/// Loadable target module `name` is coming (Linux's `klp_module_coming`):
/// called by the module loader once the module is linked and its ftrace
/// sites are registered (`module::resolve_function` finds its functions),
/// before its init function runs. Each patch naming the module as an
/// object, in the order they were added, resolves its functions there; an
/// enabled one runs the object's pre-patch callback, patches them at once
/// (the module's code has not run yet: no transition is needed, though
/// during a transition of that patch its functions follow each thread's
/// state like the rest of the patch) and runs the post-patch callback
/// unless the patch is in transition. An error (a function the module
/// lacks, a failing pre-patch callback) takes the module off every patch
/// it was put on here and refuses the module's load. Takes the livepatch
/// lock, then the module loader's (`resolve_function`): call it holding
/// neither.
pub fn module_coming(name: &str) -> Result<(), LivepatchError> {
    let mut core = REGISTRY.lock();
    let core = &mut *core;
    let in_transition = core.transition.as_ref().map(|transition| (transition.patch.clone(), transition.id));
    let mut result = Ok(());
    for index in 0..core.objects.len() {
        let patch = core.objects[index].patch.clone();
        let Some(object) = core.objects[index]
            .objects
            .iter()
            .position(|object| !object.loaded && object.module.as_deref() == Some(name))
        else {
            continue;
        };
        let entry = &mut core.objects[index].objects[object];
        // A module's object: `abi_checked` concerns kernel targets only.
        let object =
            Object { module: entry.module.clone(), functions: entry.functions.clone(), callbacks: entry.callbacks };
        let functions = match resolve_object(&object, false) {
            Ok(functions) => functions,
            Err(error) => {
                result = Err(error);
                break;
            }
        };
        let transitioning = in_transition.as_ref().is_some_and(|(name, _)| *name == patch);
        // Enabled, or in transition either way (being disabled, it is still
        // enabled until the transition completes): patched, as Linux patches
        // the objects of every patch on its list, the one in transition too.
        let active = core.state.patch(&patch).is_some_and(|state| state.enabled);
        if active && let Err(code) = entry.pre_patch() {
            result = Err(LivepatchError::PrePatch { patch: patch.clone(), object: String::from(name), code });
            break;
        }
        entry.entries = functions.iter().map(|function| function.entry).collect();
        let plan = match core.state.plan(Operation::AddObject { name: &patch, functions }) {
            Ok(plan) => plan,
            Err(error) => {
                entry.post_unpatch();
                result = Err(error.into());
                break;
            }
        };
        if let Some(functions) = plan.functions()
            && let Err(error) = redirect::apply(functions, in_transition.as_ref().map(|(_, id)| *id))
        {
            entry.post_unpatch();
            result = Err(ftrace_error(core.state.patch(&patch), error));
            break;
        }
        // The patch in transition: its new functions' code joins what the
        // threads' stacks are checked against (a thread not yet switched may
        // enter the module's original and sleep there).
        if transitioning && let (Some(functions), Some((_, id))) = (plan.functions(), in_transition.as_ref()) {
            transition::add_code(changed_code(functions, *id));
        }
        core.state.commit(plan);
        entry.loaded = true;
        if active && !transitioning {
            entry.post_patch();
        }
        announce(core, &patch);
    }
    if result.is_ok() {
        result = add_replace_nops(core, name);
    }
    if result.is_err() {
        leave_module(core, name);
    }
    result
}

/// During an atomic replace's enable transition, module `name` (just
/// added to the patches it replaces) gets the replace patch's NOP entry on
/// each of its functions the replace patch does not replace itself, as
/// Linux adds NOP objects for module objects (`klp_add_object_nops`): a
/// switched thread runs the original there, as for the kernel's functions.
fn add_replace_nops(core: &mut Core, name: &str) -> Result<(), LivepatchError> {
    let Some(transition) = core.transition.as_ref() else { return Ok(()) };
    let (patch, id) = (transition.patch.clone(), transition.id);
    if transition::target() != PATCHED || !core.state.patch(&patch).is_some_and(|state| state.replace) {
        return Ok(());
    }
    let entries: Vec<u64> = core
        .objects
        .iter()
        .flat_map(|objects| objects.objects.iter())
        .filter(|object| object.loaded && object.module.as_deref() == Some(name))
        .flat_map(|object| object.entries.iter().copied())
        .collect();
    if entries.is_empty() {
        return Ok(());
    }
    let plan = core.state.plan(Operation::AddNops { name: &patch, entries })?;
    if let Some(functions) = plan.functions() {
        redirect::apply(functions, Some(id)).map_err(|error| ftrace_error(core.state.patch(&patch), error))?;
        transition::add_code(changed_code(functions, id));
    }
    core.state.commit(plan);
    announce(core, &patch);
    Ok(())
}

/// Loadable target module `name` is going (Linux's `klp_module_going`):
/// called by the module loader after its exit function has run and before
/// its sites are released. Each patch applied to it, in the order they were
/// added, runs the object's pre-unpatch callback (unless the patch is in
/// transition), takes its functions off, and runs the post-unpatch callback.
/// Call it holding neither the livepatch lock nor the module loader's.
pub fn module_going(name: &str) {
    let mut core = REGISTRY.lock();
    leave_module(&mut core, name);
}

/// Takes module `name` off every patch that has it loaded, with the
/// callbacks (also when its load is being refused, as Linux's
/// `klp_cleanup_module_patches_limited`).
fn leave_module(core: &mut Core, name: &str) {
    let in_transition = core.transition.as_ref().map(|transition| (transition.patch.clone(), transition.id));
    for index in 0..core.objects.len() {
        let patch = core.objects[index].patch.clone();
        let Some(object) = core.objects[index]
            .objects
            .iter()
            .position(|object| object.loaded && object.module.as_deref() == Some(name))
        else {
            continue;
        };
        let entry = &mut core.objects[index].objects[object];
        let transitioning = in_transition.as_ref().is_some_and(|(name, _)| *name == patch);
        let enabled = core.state.patch(&patch).is_some_and(|state| state.enabled);
        if enabled && !transitioning {
            entry.pre_unpatch();
        }
        let plan = core
            .state
            .plan(Operation::RemoveObject { name: &patch, range: entry.range() })
            .expect("the patch of a loaded object exists");
        if let Some(functions) = plan.functions()
            && let Err(error) = redirect::apply(functions, in_transition.as_ref().map(|(_, id)| *id))
        {
            // Only a table allocation, or a site word changed behind
            // ftrace's back (`direct::leave` checks each word it changes),
            // can fail here, and nothing in the kernel causes either; the
            // module's memory stays reachable from the old table, so it
            // must not be freed.
            panic!("klp: taking module '{name}' off patch '{patch}' failed: {error}");
        }
        core.state.commit(plan);
        entry.loaded = false;
        entry.entries = Vec::new();
        entry.post_unpatch();
        announce(core, &patch);
    }
}
