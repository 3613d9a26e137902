//! What the debugger reads: one fixed-layout anchor with the kernel's live tables (see gdb/kernel.py).
//!
//! gdb finds `klp_debug_anchor` by name and reads it as plain memory, so the
//! script depends on this layout only (`version` changes when it changes),
//! not on how Rust lays out the kernel's own collections.
use crate::arch::livepatch::LivepatchFrame;
use crate::thread::{LIVEPATCH_STACK_OFFSET, ThreadInfo, ThreadState};
use boot::THREAD_SIZE;
use core::cell::UnsafeCell;
use core::mem::{offset_of, size_of};
use macros::notrace;

pub const MAX_THREADS: usize = 64;
pub const MAX_PATCHES: usize = 16;
pub const MAX_FUNCTIONS: usize = 16;
/// Objects per patch the debugger sees.
pub const MAX_OBJECTS: usize = 4;
pub const MAX_MODULES: usize = 8;
pub const MAX_SECTIONS: usize = 48;
/// Bytes of the transition's status text (NUL-terminated; cut if longer).
pub const TRANSITION_TEXT: usize = 1024;

/// A patch as the debugger sees it.
#[repr(C)]
pub struct DebugPatch {
    pub name: [u8; 32],
    /// 0 free slot, 1 disabled, 2 enabled.
    pub state: u64,
    pub count: u64,
    /// (old global entry, new global entry).
    pub functions: [[u64; 2]; MAX_FUNCTIONS],
    /// Its 1-based position in the patch list (`klp list`'s stack_order).
    pub stack_order: u64,
    /// 1 for an atomic replace.
    pub replace: u64,
    pub object_count: u64,
    /// The objects' names (`vmlinux` or a module).
    pub objects: [[u8; 32]; MAX_OBJECTS],
    /// Bit n: object n is patched now.
    pub patched: u64,
}

/// What the debugger shows of a patch besides its functions.
pub struct PatchDetails<'a> {
    pub replace: bool,
    /// (object name, patched now), the first `MAX_OBJECTS`.
    pub objects: &'a [(&'a str, bool)],
}

/// A loaded module: where each of its sections went, for add-symbol-file.
#[repr(C)]
pub struct DebugModule {
    pub name: [u8; 32],
    pub address: u64,
    pub size: u64,
    pub toc: u64,
    pub section_count: u64,
    /// (name, address) per section.
    pub sections: [([u8; 32], u64); MAX_SECTIONS],
}

/// The anchor.
#[repr(C)]
pub struct DebugAnchor {
    pub magic: [u8; 8],
    pub version: u64,
    pub thread_size: u64,
    pub livepatch_stack_offset: u64,
    pub livepatch_frame_size: u64,
    pub thread_info_livepatch_sp: u64,
    pub thread_info_thread_id: u64,
    pub thread_info_saved_stack_pointer: u64,
    pub thread_info_state: u64,
    /// Where thread_info holds the address and the length of the thread's name.
    pub thread_info_name_address: u64,
    pub thread_info_name_length: u64,
    /// Where thread_info holds the CPU the thread runs on (or ran on last).
    pub thread_info_cpu: u64,
    /// Bumped on every module load and unload, so the script knows to reload symbols.
    pub module_generation: u64,
    /// The ftrace site table: address, entries, bytes per entry (function,
    /// site word address, name pointer, name length).
    pub sites: u64,
    pub site_count: u64,
    pub site_entry_size: u64,
    pub threads: [u64; MAX_THREADS],
    pub patches: [DebugPatch; MAX_PATCHES],
    pub modules: [DebugModule; MAX_MODULES],
    /// How many `ThreadState`s there are, and the name of each (NUL-padded),
    /// indexed by its value.
    pub state_count: u64,
    pub state_names: [[u8; 16]; ThreadState::NAMES.len()],
    /// Where thread_info holds the thread's livepatch transition state
    /// (0 none, 1 unpatched, 2 patched).
    pub thread_info_patch_state: u64,
    /// The livepatch transition in progress and the threads that blocked its
    /// last round, as `klp status` prints them; empty outside a transition.
    pub transition: [u8; TRANSITION_TEXT],
}

/// `ThreadState::NAMES`, NUL-padded to 16 bytes each.
const fn state_names() -> [[u8; 16]; ThreadState::NAMES.len()] {
    let mut names = [[0u8; 16]; ThreadState::NAMES.len()];
    let mut state = 0;
    while state < names.len() {
        let name = ThreadState::NAMES[state].as_bytes();
        let mut byte = 0;
        while byte < name.len() {
            names[state][byte] = name[byte];
            byte += 1;
        }
        state += 1;
    }
    names
}

struct Anchor(UnsafeCell<DebugAnchor>);
// Safety: written only under `ANCHOR_LOCK` (`with_anchor`), from any CPU;
// read by gdb, which stops every CPU first.
unsafe impl Sync for Anchor {}

/// Serialises the anchor's writers, on every CPU. Taken with interrupts off
/// (a thread is removed under the scheduler's lock), and it takes no other lock.
static ANCHOR_LOCK: spin::Mutex<()> = spin::Mutex::new(());

const EMPTY_PATCH: DebugPatch = DebugPatch {
    name: [0; 32],
    state: 0,
    count: 0,
    functions: [[0; 2]; MAX_FUNCTIONS],
    stack_order: 0,
    replace: 0,
    object_count: 0,
    objects: [[0; 32]; MAX_OBJECTS],
    patched: 0,
};
const EMPTY_MODULE: DebugModule = DebugModule {
    name: [0; 32],
    address: 0,
    size: 0,
    toc: 0,
    section_count: 0,
    sections: [([0; 32], 0); MAX_SECTIONS],
};

#[unsafe(no_mangle)]
#[used]
static klp_debug_anchor: Anchor = Anchor(UnsafeCell::new(DebugAnchor {
    magic: *b"KLPDEBUG",
    version: 6,
    thread_size: THREAD_SIZE as u64,
    livepatch_stack_offset: LIVEPATCH_STACK_OFFSET as u64,
    livepatch_frame_size: size_of::<LivepatchFrame>() as u64,
    thread_info_livepatch_sp: offset_of!(ThreadInfo, livepatch_sp) as u64,
    thread_info_thread_id: offset_of!(ThreadInfo, thread_id) as u64,
    thread_info_saved_stack_pointer: offset_of!(ThreadInfo, saved_stack_pointer) as u64,
    thread_info_state: offset_of!(ThreadInfo, state) as u64,
    thread_info_name_address: offset_of!(ThreadInfo, name_address) as u64,
    thread_info_name_length: offset_of!(ThreadInfo, name_length) as u64,
    thread_info_cpu: offset_of!(ThreadInfo, cpu) as u64,
    module_generation: 0,
    sites: 0,
    site_count: 0,
    site_entry_size: 0,
    threads: [0; MAX_THREADS],
    patches: [EMPTY_PATCH; MAX_PATCHES],
    modules: [EMPTY_MODULE; MAX_MODULES],
    state_count: ThreadState::NAMES.len() as u64,
    state_names: state_names(),
    thread_info_patch_state: offset_of!(ThreadInfo, patch_state) as u64,
    transition: [0; TRANSITION_TEXT],
}));

/// Bytes per slot of the direct-call trampoline pool: gdb/kernel.py finds
/// a trampoline's start from it (the pool's bounds and the template's window
/// table, `livepatch_trampolines`, `livepatch_trampolines_end` and
/// `livepatch_trampoline_windows`, are symbols of their own).
#[unsafe(no_mangle)]
#[used]
static klp_debug_trampoline_slot_size: u64 = crate::arch::trampoline::SLOT_SIZE as u64;

/// Runs `change` on the anchor, interrupts off, under `ANCHOR_LOCK`.
#[notrace]
fn with_anchor<R>(change: impl FnOnce(&mut DebugAnchor) -> R) -> R {
    let _interrupts = crate::arch::interrupts::disable();
    let _lock = crate::sync::acquire(&ANCHOR_LOCK);
    // Safety: see `Anchor`: the lock is held.
    change(unsafe { &mut *klp_debug_anchor.0.get() })
}

fn copy_name(target: &mut [u8; 32], name: &str) {
    let length = name.len().min(31);
    *target = [0; 32];
    target[..length].copy_from_slice(&name.as_bytes()[..length]);
}

/// Records where the ftrace site table is (once, at boot).
pub fn sites_known(table: u64, count: u64, entry_size: u64) {
    with_anchor(|anchor| {
        anchor.sites = table;
        anchor.site_count = count;
        anchor.site_entry_size = entry_size;
    })
}

/// A thread (its thread_info at `base`) exists.
pub fn thread_created(base: u64) {
    with_anchor(|anchor| {
        if let Some(slot) = anchor.threads.iter_mut().find(|slot| **slot == 0) {
            *slot = base;
        }
    })
}

/// The thread whose thread_info was at `base` is gone.
pub fn thread_removed(base: u64) {
    with_anchor(|anchor| {
        if let Some(slot) = anchor.threads.iter_mut().find(|slot| **slot == base) {
            *slot = 0;
        }
    })
}

/// Records a patch's state (`None` removes it), its (old, new) functions
/// and details, and every patch's stack_order (`order`: the names in the
/// patch list's order).
pub fn patch_changed(
    name: &str,
    state: Option<bool>,
    functions: &[(u64, u64)],
    details: &PatchDetails,
    order: &[portable::livepatch::PatchState],
) {
    with_anchor(|anchor| {
        change_patch(&mut anchor.patches, name, state, functions, details);
        for patch in anchor.patches.iter_mut().filter(|patch| patch.state != 0) {
            patch.stack_order = order
                .iter()
                .position(|listed| {
                    let mut stored = [0u8; 32];
                    copy_name(&mut stored, &listed.name);
                    stored == patch.name
                })
                .map_or(0, |index| index as u64 + 1);
        }
    })
}

fn change_patch(
    patches: &mut [DebugPatch; MAX_PATCHES],
    name: &str,
    state: Option<bool>,
    functions: &[(u64, u64)],
    details: &PatchDetails,
) {
    let mut stored = [0u8; 32];
    copy_name(&mut stored, name);
    let existing = patches.iter().position(|patch| patch.state != 0 && patch.name == stored);
    let index = match (existing, state) {
        (Some(index), _) => index,
        (None, Some(_)) => match patches.iter().position(|patch| patch.state == 0) {
            Some(free) => free,
            None => return,
        },
        (None, None) => return,
    };
    let patch = &mut patches[index];
    match state {
        None => *patch = EMPTY_PATCH,
        Some(enabled) => {
            copy_name(&mut patch.name, name);
            patch.state = if enabled { 2 } else { 1 };
            patch.count = functions.len().min(MAX_FUNCTIONS) as u64;
            for (slot, (old, new)) in patch.functions.iter_mut().zip(functions) {
                *slot = [*old, *new];
            }
            patch.replace = u64::from(details.replace);
            patch.object_count = details.objects.len().min(MAX_OBJECTS) as u64;
            patch.patched = 0;
            for (index, (slot, (object, patched))) in patch.objects.iter_mut().zip(details.objects).enumerate() {
                copy_name(slot, object);
                patch.patched |= u64::from(*patched) << index;
            }
        }
    }
}

/// Records the transition's status text (empty: none in progress).
pub fn transition_changed(text: &str) {
    with_anchor(|anchor| {
        let length = text.len().min(TRANSITION_TEXT - 1);
        anchor.transition = [0; TRANSITION_TEXT];
        anchor.transition[..length].copy_from_slice(&text.as_bytes()[..length]);
    })
}

/// Records a loaded module and its sections.
pub fn module_loaded(name: &str, address: u64, size: u64, toc: u64, sections: &[(&str, u64)]) {
    with_anchor(|anchor| {
        anchor.module_generation += 1;
        let Some(module) = anchor.modules.iter_mut().find(|module| module.address == 0) else { return };
        copy_name(&mut module.name, name);
        module.address = address;
        module.size = size;
        module.toc = toc;
        module.section_count = sections.len().min(MAX_SECTIONS) as u64;
        for (slot, (section, section_address)) in module.sections.iter_mut().zip(sections) {
            copy_name(&mut slot.0, section);
            slot.1 = *section_address;
        }
    })
}

/// Forgets a module that was at `address`.
pub fn module_unloaded(address: u64) {
    with_anchor(|anchor| {
        anchor.module_generation += 1;
        if let Some(module) = anchor.modules.iter_mut().find(|module| module.address == address) {
            *module = EMPTY_MODULE;
        }
    })
}

/// Called after every change to the anchor's module table (a module about to
/// be enabled, one withdrawn or unloaded); gdb/kernel.py breaks here, at the
/// local entry, to add or remove the module's symbols.
#[notrace]
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn klp_debug_module_event() {
    core::hint::black_box(());
}
