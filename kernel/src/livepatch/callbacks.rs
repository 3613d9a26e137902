//! Per-object callbacks (pre/post patch, pre/post unpatch), the objects of each patch, and its system states' data.
//!
//! Linux's `struct klp_callbacks`, run in Linux's order:
//!
//! | when | callbacks |
//! |---|---|
//! | enable starts | pre_patch of every loaded object (an error: `post_unpatch` of those whose pre_patch ran, nothing changed) |
//! | enable completes | post_patch of every loaded object |
//! | disable starts | pre_unpatch of every loaded object |
//! | disable completes | post_unpatch of every object whose pre_patch ran |
//! | a module loads, patch enabled | pre_patch (an error refuses the module), patch it, post_patch unless the patch is in transition |
//! | a module goes, patch enabled | pre_unpatch unless the patch is in transition, unpatch, post_unpatch |
//! | an atomic replace completes | none, for the patches it replaced |
//!
//! Callbacks run with the livepatch lock held and preemption off (as
//! Linux's run under `klp_mutex`): they must not sleep, nor enable, disable
//! or load anything; they may allocate, print, and use shadow variables and
//! `klp_get_state`.
use super::{KERNEL_OBJECT, Object, SystemState};
use crate::sync::Mutex;
use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

/// A callback: the object's name (`vmlinux` for the kernel) as UTF-8 bytes.
/// A pre-patch callback's nonzero return refuses the operation; the others'
/// returns are ignored. `extern "C"`: patch modules pass theirs too.
pub type Callback = extern "C" fn(object: *const u8, length: usize) -> i32;

/// The callbacks of one object (Linux's `struct klp_callbacks`).
#[derive(Clone, Copy, Default)]
pub struct Callbacks {
    pub pre_patch: Option<Callback>,
    pub post_patch: Option<Callback>,
    pub pre_unpatch: Option<Callback>,
    pub post_unpatch: Option<Callback>,
}

/// One object of an added patch.
pub(super) struct ObjectEntry {
    /// The module, `None` for the kernel.
    pub module: Option<String>,
    /// As the patch named them: resolved again each time the module loads.
    pub functions: Vec<super::Function>,
    pub callbacks: Callbacks,
    /// The kernel, or a module that is loaded now (its functions are in the patch).
    pub loaded: bool,
    /// Its pre-patch callback ran (or it has none) and the matching
    /// post-unpatch has not yet (Linux's `post_unpatch_enabled`).
    pub pre_patched: bool,
    /// The global entries of its functions while loaded (what `RemoveObject` takes out).
    pub entries: Vec<u64>,
}

impl ObjectEntry {
    pub fn new(object: Object, loaded: bool, entries: Vec<u64>) -> ObjectEntry {
        ObjectEntry {
            module: object.module,
            functions: object.functions,
            callbacks: object.callbacks,
            loaded,
            pre_patched: false,
            entries,
        }
    }

    /// The object's name as callbacks and `klp list` give it.
    pub fn name(&self) -> &str {
        self.module.as_deref().unwrap_or(KERNEL_OBJECT)
    }

    /// The range of its functions' entries (for `RemoveObject`).
    pub fn range(&self) -> core::ops::Range<u64> {
        let low = self.entries.iter().copied().min().unwrap_or(0);
        let high = self.entries.iter().copied().max().map_or(0, |high| high + 1);
        low..high
    }

    fn call(&self, callback: Option<Callback>) -> i32 {
        let name = self.name();
        callback.map_or(0, |callback| callback(name.as_ptr(), name.len()))
    }

    /// Runs the pre-patch callback; on success the post-unpatch one is due later.
    pub fn pre_patch(&mut self) -> Result<(), i32> {
        match self.call(self.callbacks.pre_patch) {
            0 => {
                self.pre_patched = true;
                Ok(())
            }
            code => Err(code),
        }
    }

    pub fn post_patch(&self) {
        self.call(self.callbacks.post_patch);
    }

    pub fn pre_unpatch(&self) {
        self.call(self.callbacks.pre_unpatch);
    }

    /// Runs the post-unpatch callback if the pre-patch one ran.
    pub fn post_unpatch(&mut self) {
        if core::mem::take(&mut self.pre_patched) {
            self.call(self.callbacks.post_unpatch);
        }
    }
}

/// The objects of one added patch.
pub(super) struct PatchObjects {
    pub patch: String,
    pub objects: Vec<ObjectEntry>,
}

impl PatchObjects {
    /// Every loaded object, in the patch's order.
    pub fn loaded(&mut self) -> impl Iterator<Item = &mut ObjectEntry> {
        self.objects.iter_mut().filter(|object| object.loaded)
    }

    /// Runs every loaded object's pre-patch callback; on the first failure,
    /// the post-unpatch callbacks of those that ran, and the error.
    pub fn pre_patch_all(&mut self) -> Result<(), super::LivepatchError> {
        let mut failed = None;
        for object in self.objects.iter_mut().filter(|object| object.loaded) {
            if let Err(code) = object.pre_patch() {
                failed = Some((String::from(object.name()), code));
                break;
            }
        }
        match failed {
            None => Ok(()),
            Some((object, code)) => {
                self.loaded().for_each(ObjectEntry::post_unpatch);
                Err(super::LivepatchError::PrePatch { patch: self.patch.clone(), object, code })
            }
        }
    }
}

/// A system state with the data its patch keeps there (Linux's `struct
/// klp_state`): a patch's callbacks store what they changed in `data` and a
/// later patch taking the state over reads it (`klp_get_prev_state`).
#[repr(C)]
pub struct KlpState {
    pub id: u64,
    pub version: u64,
    pub data: AtomicU64,
}

/// An added patch's states, and whether it is enabled (mirrored from the
/// core's state at each commit, for `get_previous_state`).
struct PatchStates {
    patch: String,
    enabled: bool,
    states: Box<[KlpState]>,
}

/// Each added patch's states, in the order they were added, apart from the
/// livepatch lock: callbacks (which run under it) look them up. Boxed: the
/// addresses handed out stay valid until the patch is removed. Lock order:
/// the livepatch lock, then this one. A `crate::sync::Mutex`, whose waiter
/// confers and reports quiescent states: not for interrupt handlers, like
/// the shadow variables' lock (a replacement reached from one must not call
/// `klp_get_state`).
static STATES: Mutex<Vec<PatchStates>> = Mutex::new(Vec::new());

/// Records the states of patch `patch` when it is added.
pub(super) fn add_states(patch: &str, states: &[SystemState]) {
    let states: Box<[KlpState]> =
        states.iter().map(|state| KlpState { id: state.id, version: state.version, data: AtomicU64::new(0) }).collect();
    STATES.lock().push(PatchStates { patch: String::from(patch), enabled: false, states });
}

/// Forgets the states of a removed patch.
pub(super) fn remove_states(patch: &str) {
    STATES.lock().retain(|entry| entry.patch != patch);
}

/// Mirrors which patches are enabled after a commit.
pub(super) fn sync_enabled(state: &portable::livepatch::State) {
    let mut states = STATES.lock();
    for entry in states.iter_mut() {
        entry.enabled = state.patch(&entry.patch).is_some_and(|patch| patch.enabled);
    }
}

fn find(entries: &[PatchStates], patch: &str, id: u64) -> Option<&'static KlpState> {
    let entry = entries.iter().find(|entry| entry.patch == patch)?;
    let state = entry.states.iter().find(|state| state.id == id)?;
    // Safety: boxed, freed only by `remove_states` when the patch is removed;
    // a caller uses it while its patch exists (its own callbacks, its code).
    Some(unsafe { &*(state as *const KlpState) })
}

/// State `id` of patch `patch` (Linux's `klp_get_state`).
pub fn get_state(patch: &str, id: u64) -> Option<&'static KlpState> {
    find(&STATES.lock(), patch, id)
}

/// State `id` as the newest enabled patch added before `patch` has it
/// (Linux's `klp_get_prev_state`, `patch` being the one in transition):
/// what a patch taking the state over starts from. Meant for `patch`'s
/// callbacks, as Linux's: the state belongs to another patch, freed when
/// that one is removed.
pub fn get_previous_state(patch: &str, id: u64) -> Option<&'static KlpState> {
    let entries = STATES.lock();
    let before = entries.iter().position(|entry| entry.patch == patch)?;
    let owner = entries[..before]
        .iter()
        .rev()
        .find(|entry| entry.enabled && entry.states.iter().any(|state| state.id == id))?;
    find(&entries, &owner.patch, id)
}

/// Reads a state's data.
pub fn data(state: &KlpState) -> u64 {
    state.data.load(Ordering::Acquire)
}

/// Sets a state's data.
pub fn set_data(state: &KlpState, value: u64) {
    state.data.store(value, Ordering::Release)
}
