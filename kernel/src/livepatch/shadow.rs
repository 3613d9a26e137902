//! Shadow variables: data a patch attaches to an existing kernel object, keyed by (object address, id), as Linux's `klp_shadow_*`.
//!
//! A fix that needs a new field in a structure the kernel already has
//! allocated cannot change its layout; it attaches a shadow variable to
//! each object instead (Documentation/livepatch/shadow-vars.rst). A
//! variable is `size` zeroed bytes, aligned for any scalar
//! ([`SHADOW_ALIGNMENT`]), that a constructor may fill; it stays until
//! [`klp_shadow_free`] or [`klp_shadow_free_all`], whatever becomes of the
//! patch module that allocated it, so a later patch can take it over.
//!
//! The table is a `BTreeMap` ordered by (id, object): a lookup, an insertion
//! and a removal cost O(log n), and `free_all(id)` visits only that id's k
//! variables (a range), O(k log n). Linux's hash table reads without the
//! lock under RCU; here every operation takes one lock, which is simpler
//! and keeps a variable from being freed while a lookup copies its address.
//!
//! Concurrency: every operation holds [`SHADOWS`], a `sync::Mutex`, for
//! its whole work. What can happen meanwhile:
//! - another CPU calling the API waits for the lock (conferring its CPU to
//!   the holder); a variable is looked up, built and inserted, or removed
//!   and destroyed, in one critical section, so no CPU sees it half done;
//! - a preemption cannot: the lock disables it, so no thread of this CPU
//!   runs while the holder is suspended, and none can spin on a holder that
//!   does not run;
//! - an interrupt on the holder's CPU runs its handler and returns; handlers
//!   do not use this API (Linux allows it with `spin_lock_irqsave`; here
//!   `sync::Mutex`'s wait notes quiescent states, which an interrupt handler,
//!   or code reading a `Published` value, must not), so none waits for the
//!   lock its own CPU holds. Interrupts therefore stay enabled: the timer
//!   is not held off while a constructor runs;
//! - the module that passed a constructor or destructor cannot be unloaded
//!   while it runs: the caller is inside the module's code (its stack shows
//!   it), which keeps the module busy.
//!
//! The constructor and the destructor run under the lock (which is what
//! makes `get_or_alloc` build one variable under contention), so they must
//! not call the shadow API themselves (a deadlock, as in Linux), sleep or
//! wait for other CPUs. The heap's lock is taken inside this one, never the
//! other way round.
use crate::sync::Mutex;
use alloc::alloc::{Layout, alloc_zeroed, dealloc};
use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::ffi::c_void;

/// The alignment of every shadow variable's data: enough for any scalar (u128, f64, pointers).
pub const SHADOW_ALIGNMENT: usize = 16;

/// Fills a new variable (zeroed before) at `shadow_data` for `object` from
/// `constructor_data`; a non-zero result refuses the allocation.
pub type ShadowConstructor =
    extern "C" fn(object: *mut c_void, shadow_data: *mut c_void, constructor_data: *mut c_void) -> i32;

/// Releases what the variable at `shadow_data` of `object` holds, just before its memory is freed.
pub type ShadowDestructor = extern "C" fn(object: *mut c_void, shadow_data: *mut c_void);

/// One variable's data, allocated with its layout.
struct Shadow {
    data: *mut u8,
    layout: Layout,
}

// Safety: the data is plain bytes owned by the table; whoever holds its
// address synchronises its own accesses (as with Linux's shadow data).
unsafe impl Send for Shadow {}

/// Every shadow variable, by (id, object address).
static SHADOWS: Mutex<BTreeMap<(u64, usize), Shadow>> = Mutex::new(BTreeMap::new());

/// Runs `body` on the table with the lock held (see the file's comment).
fn with_table<R>(body: impl FnOnce(&mut BTreeMap<(u64, usize), Shadow>) -> R) -> R {
    let mut table = SHADOWS.lock();
    body(&mut table)
}

/// The data of the variable `id` of `object`, or null if it has none.
#[unsafe(no_mangle)]
pub extern "C" fn klp_shadow_get(object: *mut c_void, id: u64) -> *mut c_void {
    with_table(|table| table.get(&(id, object as usize)).map_or(core::ptr::null_mut(), |shadow| shadow.data.cast()))
}

/// Allocates the variable `id` of `object`: `size` zeroed bytes, then
/// `constructor(object, data, constructor_data)` if given. Returns its
/// data, or null (with a message) if the pair already has one, the
/// memory is short or the constructor refused (nothing is kept then).
#[unsafe(no_mangle)]
pub extern "C" fn klp_shadow_alloc(
    object: *mut c_void,
    id: u64,
    size: usize,
    constructor: Option<ShadowConstructor>,
    constructor_data: *mut c_void,
) -> *mut c_void {
    get_or_alloc(object, id, size, constructor, constructor_data, Existing::Refuse)
}

/// The data of the variable `id` of `object`, allocated as
/// [`klp_shadow_alloc`] does if the pair has none yet. Under contention,
/// one caller allocates and constructs it, the others get that one.
#[unsafe(no_mangle)]
pub extern "C" fn klp_shadow_get_or_alloc(
    object: *mut c_void,
    id: u64,
    size: usize,
    constructor: Option<ShadowConstructor>,
    constructor_data: *mut c_void,
) -> *mut c_void {
    get_or_alloc(object, id, size, constructor, constructor_data, Existing::Return)
}

/// What allocating a pair that already has a variable does.
#[derive(Clone, Copy, PartialEq)]
enum Existing {
    /// Warns and returns null (`klp_shadow_alloc`).
    Refuse,
    /// Returns the existing variable (`klp_shadow_get_or_alloc`).
    Return,
}

/// `klp_shadow_alloc` and `klp_shadow_get_or_alloc`. Unlike Linux, which
/// allocates before taking its lock and looks again, the lookup, the
/// allocation and the constructor all happen in one critical section.
fn get_or_alloc(
    object: *mut c_void,
    id: u64,
    size: usize,
    constructor: Option<ShadowConstructor>,
    constructor_data: *mut c_void,
    existing: Existing,
) -> *mut c_void {
    let key = (id, object as usize);
    let Ok(layout) = Layout::from_size_align(size.max(1), SHADOW_ALIGNMENT) else {
        crate::println!("klp: shadow variable <{object:p}, {id:#x}>: {size} bytes is too large");
        return core::ptr::null_mut();
    };
    with_table(|table| {
        if let Some(shadow) = table.get(&key) {
            if existing == Existing::Refuse {
                crate::println!("klp: duplicate shadow variable <{object:p}, {id:#x}>");
                return core::ptr::null_mut();
            }
            return shadow.data.cast();
        }
        // Safety: the layout's size is at least one byte.
        let data = unsafe { alloc_zeroed(layout) };
        if data.is_null() {
            crate::println!("klp: no memory for the shadow variable <{object:p}, {id:#x}> ({size} bytes)");
            return core::ptr::null_mut();
        }
        if let Some(constructor) = constructor {
            // `data` is `size` writable zeroed bytes, given to nobody else yet.
            let error = constructor(object, data.cast(), constructor_data);
            if error != 0 {
                crate::println!("klp: failed to construct shadow variable <{object:p}, {id:#x}> ({error})");
                // Safety: allocated just above with this layout, given to nobody but the constructor.
                unsafe { dealloc(data, layout) };
                return core::ptr::null_mut();
            }
        }
        table.insert(key, Shadow { data, layout });
        data.cast()
    })
}

/// Removes the variable `id` of `object`, if any: calls `destructor(object,
/// data)` if given, then frees the data.
#[unsafe(no_mangle)]
pub extern "C" fn klp_shadow_free(object: *mut c_void, id: u64, destructor: Option<ShadowDestructor>) {
    with_table(|table| {
        if let Some(shadow) = table.remove(&(id, object as usize)) {
            release(object, shadow, destructor);
        }
        forget_empty_nodes(table);
    });
}

/// Removes every variable with this `id`, whatever its object, as
/// [`klp_shadow_free`] removes one.
#[unsafe(no_mangle)]
pub extern "C" fn klp_shadow_free_all(id: u64, destructor: Option<ShadowDestructor>) {
    with_table(|table| {
        // The keys of `id`: (id, 0) ..= (id, usize::MAX), ordered by object.
        let keys: Vec<(u64, usize)> = table.range((id, 0)..=(id, usize::MAX)).map(|(key, _)| *key).collect();
        for key in keys {
            if let Some(shadow) = table.remove(&key) {
                release(key.1 as *mut c_void, shadow, destructor);
            }
        }
        forget_empty_nodes(table);
    });
}

/// Gives an emptied table's last node back to the heap, so that freeing
/// every variable brings the heap back to where it was before the first.
fn forget_empty_nodes(table: &mut BTreeMap<(u64, usize), Shadow>) {
    if table.is_empty() {
        *table = BTreeMap::new();
    }
}

/// Calls `destructor` on a variable taken out of the table, then frees its data.
fn release(object: *mut c_void, shadow: Shadow, destructor: Option<ShadowDestructor>) {
    if let Some(destructor) = destructor {
        destructor(object, shadow.data.cast());
    }
    // Safety: allocated by `get_or_alloc` with this layout, no longer in the table.
    unsafe { dealloc(shadow.data, shadow.layout) };
}

/// How many shadow variables exist (the tests compare it before and after).
pub fn count() -> usize {
    with_table(|table| table.len())
}
