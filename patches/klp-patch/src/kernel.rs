//! The kernel services a patch module may call: `#[no_mangle]` kernel exports.
//!
//! One declaration and one safe wrapper per function or static the kernel
//! exports (`export!` in kernel/src/livepatch/api.rs): a host test
//! (xtask/src/export_wrappers.rs) fails when the two lists differ. The
//! kernel also exports `memcpy`, `memmove`, `memset` and `memcmp`, which the
//! compiler calls by itself; they have no wrapper. The loader resolves these
//! names against the kernel's export list. The wrappers are
//! `#[inline(always)]`, so they are compiled into the module's own object and
//! leave only the kernel's symbols undefined.

use core::ffi::c_void;

/// Fills a new shadow variable (zeroed before) at `shadow_data` for `object`
/// from `constructor_data`; a non-zero result refuses the allocation. It
/// runs under the kernel's shadow lock: it must not call the shadow API.
pub type ShadowConstructor =
    extern "C" fn(object: *mut c_void, shadow_data: *mut c_void, constructor_data: *mut c_void) -> i32;

/// Releases what the shadow variable at `shadow_data` of `object` holds,
/// just before the kernel frees it (under the shadow lock, like the constructor).
pub type ShadowDestructor = extern "C" fn(object: *mut c_void, shadow_data: *mut c_void);

unsafe extern "C" {
    /// Prints `length` bytes at `bytes` to the console.
    pub fn klp_print(bytes: *const u8, length: usize);
    /// Timer ticks since boot.
    pub fn klp_uptime_ticks() -> u64;
    /// The id of the calling thread.
    pub fn klp_thread_id() -> u64;
    /// Records the r2 (TOC pointer) a replacement saw; the kernel's tests check it.
    pub fn klp_report_toc(toc: u64);
    /// A kernel-owned copy of `length` bytes at `bytes`, never freed (equal texts share one).
    pub fn klp_intern_text(bytes: *const u8, length: usize) -> *const u8;
    /// A safe point for a long-running loop: during a livepatch transition
    /// the calling thread switches here if nothing the patch changes is on its stack.
    pub fn klp_safe_point();
    /// System state `id` of patch `patch` (`length` bytes), or null.
    pub fn klp_get_state(patch: *const u8, length: usize, id: u64) -> *const KlpState;
    /// System state `id` of the newest enabled patch other than `patch`, or null.
    pub fn klp_get_prev_state(patch: *const u8, length: usize, id: u64) -> *const KlpState;
    /// The data of the shadow variable `id` of `object`, or null.
    pub fn klp_shadow_get(object: *mut c_void, id: u64) -> *mut c_void;
    /// A new shadow variable of `size` bytes (null if the pair has one, or the constructor refused).
    pub fn klp_shadow_alloc(
        object: *mut c_void,
        id: u64,
        size: usize,
        constructor: Option<ShadowConstructor>,
        constructor_data: *mut c_void,
    ) -> *mut c_void;
    /// The shadow variable `id` of `object`, allocated as `klp_shadow_alloc` does if it has none.
    pub fn klp_shadow_get_or_alloc(
        object: *mut c_void,
        id: u64,
        size: usize,
        constructor: Option<ShadowConstructor>,
        constructor_data: *mut c_void,
    ) -> *mut c_void;
    /// Frees the shadow variable `id` of `object` (after the destructor), if any.
    pub fn klp_shadow_free(object: *mut c_void, id: u64, destructor: Option<ShadowDestructor>);
    /// Frees every shadow variable with this `id`.
    pub fn klp_shadow_free_all(id: u64, destructor: Option<ShadowDestructor>);
    /// A kernel static a module may read.
    pub static klp_kernel_version: u64;
    /// Prints one line and keeps it in the kernel's module log (`klp log`).
    pub fn klp_log(bytes: *const u8, length: usize);
    /// Adds a shell command run by `handler`: 0, or -1 (bad name), -2 (taken).
    pub fn klp_shell_register(
        name: *const u8,
        name_length: usize,
        help: *const u8,
        help_length: usize,
        handler: CommandHandler,
    ) -> i32;
    /// Removes a module shell command, waiting for its calls in progress: 0, or -1 (unknown).
    pub fn klp_shell_unregister(name: *const u8, name_length: usize) -> i32;
    /// Appends bytes to a command's output (the `output` its handler got).
    pub fn klp_shell_write(output: *mut CommandOutput, bytes: *const u8, length: usize);
    /// Starts a kernel thread running `entry(argument)`: its id, or 0.
    pub fn klp_thread_spawn(name: *const u8, name_length: usize, entry: extern "C" fn(u64), argument: u64) -> u64;
    /// Waits for a thread `klp_thread_spawn` started to end: 0, or -1 (unknown).
    pub fn klp_thread_join(id: u64) -> i32;
    /// Sleeps up to `milliseconds`; 1 if woken early (`klp_wake_interruptible`, a transition's fake signal).
    pub fn klp_sleep_interruptible(milliseconds: u64) -> u32;
    /// Wakes a thread asleep in `klp_sleep_interruptible`: 1 if it did.
    pub fn klp_wake_interruptible(id: u64) -> u32;
}

/// Prints `line` and keeps it in the kernel's module log (`klp log`; Linux's pr_info).
#[inline(always)]
pub fn log(line: &[u8]) {
    // Safety: the kernel copies `line.len()` bytes from a valid slice.
    unsafe { klp_log(line.as_ptr(), line.len()) }
}

/// The kernel's side of a shell command's output (opaque to a module).
#[repr(C)]
pub struct CommandOutput {
    _private: [u8; 0],
}

/// A module shell command: its arguments (UTF-8) and where its output goes.
pub type CommandHandler = extern "C" fn(arguments: *const u8, length: usize, output: *mut CommandOutput);

/// Adds the shell command `name` (one word) with a help line, run by
/// `handler`; false if the name is taken or not one word. Register in the
/// module's init, unregister in its exit.
#[inline(always)]
pub fn shell_register(name: &str, help: &str, handler: CommandHandler) -> bool {
    // Safety: valid buffers of those lengths; the kernel copies them.
    unsafe { klp_shell_register(name.as_ptr(), name.len(), help.as_ptr(), help.len(), handler) == 0 }
}

/// Removes the module's shell command `name` once no call of it runs; false if there was none.
#[inline(always)]
pub fn shell_unregister(name: &str) -> bool {
    // Safety: a valid buffer of that length; the kernel copies it.
    unsafe { klp_shell_unregister(name.as_ptr(), name.len()) == 0 }
}

/// Writes `text` to the output of the command whose handler got `output`.
#[inline(always)]
pub fn shell_write(output: *mut CommandOutput, text: &[u8]) {
    // Safety: `output` is the handler's own, alive during its call; the kernel copies `text`.
    unsafe { klp_shell_write(output, text.as_ptr(), text.len()) }
}

/// Starts a kernel thread named `name` running `entry(argument)`; its id,
/// or None. Join it (`thread_join`) before the module's exit returns.
#[inline(always)]
pub fn thread_spawn(name: &str, entry: extern "C" fn(u64), argument: u64) -> Option<u64> {
    // Safety: a valid buffer; `entry` is a function of this module, which stays loaded until joined.
    let id = unsafe { klp_thread_spawn(name.as_ptr(), name.len(), entry, argument) };
    (id != 0).then_some(id)
}

/// Waits for thread `id` (from `thread_spawn`) to end; false if it is not one.
#[inline(always)]
pub fn thread_join(id: u64) -> bool {
    // Safety: a plain integer; the kernel checks it.
    unsafe { klp_thread_join(id) == 0 }
}

/// Sleeps up to `milliseconds`; true if woken early.
#[inline(always)]
pub fn sleep_interruptible(milliseconds: u64) -> bool {
    // Safety: a plain integer.
    unsafe { klp_sleep_interruptible(milliseconds) != 0 }
}

/// Wakes thread `id` if it sleeps in `sleep_interruptible`; true if it did.
#[inline(always)]
pub fn wake_interruptible(id: u64) -> bool {
    // Safety: a plain integer; the kernel checks it.
    unsafe { klp_wake_interruptible(id) != 0 }
}

/// A system state as the kernel keeps it (Linux's `struct klp_state`): the
/// patch's callbacks keep what they changed in `data`.
#[repr(C)]
pub struct KlpState {
    pub id: u64,
    pub version: u64,
    pub data: core::sync::atomic::AtomicU64,
}

/// System state `id` of patch `patch` (Linux's `klp_get_state`), while the patch exists.
#[inline(always)]
pub fn get_state(patch: &str, id: u64) -> Option<&'static KlpState> {
    // Safety: the kernel reads `patch.len()` bytes; what it returns lives as long as the patch.
    unsafe { klp_get_state(patch.as_ptr(), patch.len(), id).as_ref() }
}

/// System state `id` as the newest enabled patch other than `patch` has it
/// (Linux's `klp_get_prev_state`): what a cumulative patch takes over.
#[inline(always)]
pub fn get_prev_state(patch: &str, id: u64) -> Option<&'static KlpState> {
    // Safety: as `get_state`.
    unsafe { klp_get_prev_state(patch.as_ptr(), patch.len(), id).as_ref() }
}

// Rust-ABI kernel functions (`#[no_mangle] pub fn`, no `extern "C"`).
unsafe extern "Rust" {
    /// The kernel's ten-argument demonstration function (`#[livepatchable]`;
    /// the samples `ten` and `bulk` replace it): the sum of its arguments.
    #[allow(clippy::too_many_arguments)]
    pub fn klp_demo_ten(a: u64, b: u64, c: u64, d: u64, e: u64, f: u64, g: u64, h: u64, i: u64, j: u64) -> u64;
}

/// `text` copied into kernel memory that outlives this module. What a
/// replacement returns must not point into the module: its memory is freed
/// when it is unloaded, while the caller may still hold the result.
#[inline(always)]
pub fn intern(text: &str) -> &'static str {
    // Safety: the kernel returns a copy of exactly these `text.len()` bytes
    // (so valid UTF-8), which it never frees or changes.
    unsafe {
        core::str::from_utf8_unchecked(core::slice::from_raw_parts(
            klp_intern_text(text.as_ptr(), text.len()),
            text.len(),
        ))
    }
}

/// Prints `text` to the console.
#[inline(always)]
pub fn print(text: &[u8]) {
    // Safety: the kernel reads `text.len()` bytes from a valid slice and keeps no reference.
    unsafe { klp_print(text.as_ptr(), text.len()) }
}

/// Timer ticks since boot.
#[inline(always)]
pub fn uptime_ticks() -> u64 {
    // Safety: a plain query without arguments.
    unsafe { klp_uptime_ticks() }
}

/// The id of the calling thread.
#[inline(always)]
pub fn thread_id() -> u64 {
    // Safety: a plain query without arguments.
    unsafe { klp_thread_id() }
}

/// Lets a livepatch transition switch the calling thread (call it from
/// long-running loops; see docs/livepatch.md, "The consistency model").
#[inline(always)]
pub fn safe_point() {
    // Safety: a plain call without arguments.
    unsafe { klp_safe_point() }
}

/// Tells the kernel which TOC pointer the replacement ran with.
#[inline(always)]
pub fn report_toc(toc: u64) {
    // Safety: the kernel only records the value.
    unsafe { klp_report_toc(toc) }
}

/// Calls the kernel's `klp_demo_ten`. Like every call of a patched function,
/// it runs the newest enabled replacement: from inside a replacement of
/// `klp_demo_ten`, this calls that replacement again, not the original.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn demo_ten(a: u64, b: u64, c: u64, d: u64, e: u64, f: u64, g: u64, h: u64, i: u64, j: u64) -> u64 {
    // Safety: plain integers in, an integer out; the kernel keeps nothing.
    unsafe { klp_demo_ten(a, b, c, d, e, f, g, h, i, j) }
}

/// The kernel's `klp_kernel_version` static.
#[inline(always)]
pub fn kernel_version() -> u64 {
    // Safety: the kernel never writes this static after boot.
    unsafe { klp_kernel_version }
}

/// The TOC pointer (r2) of the running code: the module's own TOC inside a
/// replacement, which computed it from r12 in its global entry.
#[cfg(target_arch = "powerpc64")]
#[inline(always)]
pub fn toc() -> u64 {
    let toc: u64;
    // Safety: copies r2 into a register; no memory, no side effects.
    unsafe { core::arch::asm!("mr {}, 2", out(reg) toc, options(nomem, nostack, preserves_flags)) };
    toc
}

/// The data of the shadow variable `id` attached to `object`, or null if it
/// has none (docs/livepatch.md, "Shadow variables").
#[inline(always)]
#[allow(clippy::not_unsafe_ptr_arg_deref)] // keys and data handed to safe functions, never dereferenced here
pub fn shadow_get(object: *mut c_void, id: u64) -> *mut c_void {
    // Safety: the kernel only looks the pair up; the pointers are keys, never dereferenced.
    unsafe { klp_shadow_get(object, id) }
}

/// Attaches a new shadow variable `id` of `size` zeroed bytes (aligned for
/// any scalar) to `object`, filled by `constructor` if given; null if the
/// pair already has one (the kernel warns), memory is short or the
/// constructor returned non-zero (nothing is kept then). The variable
/// outlives this module until it is freed.
#[inline(always)]
#[allow(clippy::not_unsafe_ptr_arg_deref)] // keys and data handed to safe functions, never dereferenced here
pub fn shadow_alloc(
    object: *mut c_void,
    id: u64,
    size: usize,
    constructor: Option<ShadowConstructor>,
    constructor_data: *mut c_void,
) -> *mut c_void {
    // Safety: the kernel passes `constructor_data` to `constructor`, a safe function, unread.
    unsafe { klp_shadow_alloc(object, id, size, constructor, constructor_data) }
}

/// The shadow variable `id` of `object`, allocated as [`shadow_alloc`] does
/// if it has none; under contention one caller builds it, all get that one.
#[inline(always)]
#[allow(clippy::not_unsafe_ptr_arg_deref)] // keys and data handed to safe functions, never dereferenced here
pub fn shadow_get_or_alloc(
    object: *mut c_void,
    id: u64,
    size: usize,
    constructor: Option<ShadowConstructor>,
    constructor_data: *mut c_void,
) -> *mut c_void {
    // Safety: as for `shadow_alloc`.
    unsafe { klp_shadow_get_or_alloc(object, id, size, constructor, constructor_data) }
}

/// Frees the shadow variable `id` of `object`, if any, after calling
/// `destructor` on it. Nothing may use its data afterwards.
#[inline(always)]
#[allow(clippy::not_unsafe_ptr_arg_deref)] // keys and data handed to safe functions, never dereferenced here
pub fn shadow_free(object: *mut c_void, id: u64, destructor: Option<ShadowDestructor>) {
    // Safety: the kernel frees only memory it allocated; `destructor` is a safe function.
    unsafe { klp_shadow_free(object, id, destructor) }
}

/// Frees every shadow variable with this `id`, as [`shadow_free`] does one.
#[inline(always)]
#[allow(clippy::not_unsafe_ptr_arg_deref)] // keys and data handed to safe functions, never dereferenced here
pub fn shadow_free_all(id: u64, destructor: Option<ShadowDestructor>) {
    // Safety: as for `shadow_free`.
    unsafe { klp_shadow_free_all(id, destructor) }
}
