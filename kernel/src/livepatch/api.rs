//! What patch modules may call and read in the kernel: the exported symbols.
//!
//! Like Linux's EXPORT_SYMBOL, a module links only against names recorded
//! here (in the `.klp_exports` section), never against arbitrary kernel
//! internals: an undefined symbol outside this list refuses the module.
use super::shadow::{klp_shadow_alloc, klp_shadow_free, klp_shadow_free_all, klp_shadow_get, klp_shadow_get_or_alloc};
use crate::sync::Mutex;
use crate::{console, thread};
use alloc::boxed::Box;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};
use macros::{livepatchable, notrace};

/// One exported name and its address.
#[repr(C)]
pub struct KernelExport {
    pub name: &'static str,
    pub address: *const (),
}

// Safety: addresses of functions and statics, never written through.
unsafe impl Sync for KernelExport {}

/// Records `$symbol` (a function or static in scope) as exported under its own name.
macro_rules! export {
    ($symbol:ident) => {
        const _: () = {
            #[used]
            #[unsafe(link_section = ".klp_exports")]
            static EXPORT: KernelExport =
                KernelExport { name: stringify!($symbol), address: &raw const $symbol as *const () };
        };
    };
    (function $symbol:ident) => {
        const _: () = {
            #[used]
            #[unsafe(link_section = ".klp_exports")]
            static EXPORT: KernelExport = KernelExport { name: stringify!($symbol), address: $symbol as *const () };
        };
    };
}

// The bracketing symbols are Rust data (KernelExport holds a &str), only
// their addresses cross the "C" boundary.
#[allow(improper_ctypes)]
unsafe extern "C" {
    static __klp_exports_start: KernelExport;
    static __klp_exports_end: KernelExport;
    fn memcpy(destination: *mut u8, source: *const u8, length: usize) -> *mut u8;
    fn memmove(destination: *mut u8, source: *const u8, length: usize) -> *mut u8;
    fn memset(destination: *mut u8, value: i32, length: usize) -> *mut u8;
    fn memcmp(left: *const u8, right: *const u8, length: usize) -> i32;
}

/// Every exported symbol.
pub fn exports() -> &'static [KernelExport] {
    // Safety: the linker script brackets `.klp_exports`, which holds only KernelExport records.
    unsafe { crate::section::records(&raw const __klp_exports_start, &raw const __klp_exports_end) }
}

/// The address of the exported symbol `name`.
pub fn lookup(name: &str) -> Option<u64> {
    exports().iter().find(|export| export.name == name).map(|export| export.address as u64)
}

/// Prints `length` bytes at `bytes` (UTF-8 expected; invalid bytes print as '?').
#[unsafe(no_mangle)]
pub extern "C" fn klp_print(bytes: *const u8, length: usize) {
    // Safety: the module passes a buffer it owns, of that length.
    let bytes = unsafe { core::slice::from_raw_parts(bytes, length) };
    let _interrupts = crate::arch::interrupts::disable();
    let mut console = console::lock();
    for chunk in bytes.utf8_chunks() {
        console.write_bytes(chunk.valid().as_bytes());
        if !chunk.invalid().is_empty() {
            console.write_bytes(b"?");
        }
    }
}

/// Timer ticks since boot, of the boot CPU (every CPU ticks; this one has
/// since boot). Livepatchable: the unload tests replace it with module code
/// that a thread then sits in.
#[livepatchable]
#[unsafe(no_mangle)]
pub extern "C" fn klp_uptime_ticks() -> u64 {
    crate::arch::percpu::area(crate::arch::percpu::BOOT_CPU)
        .statistics
        .ticks
        .load(core::sync::atomic::Ordering::Relaxed)
}

/// The calling thread's number.
#[unsafe(no_mangle)]
pub extern "C" fn klp_thread_id() -> u64 {
    thread::current_id()
}

/// The TOC pointer a module function last reported (tests read it).
pub static REPORTED_TOC: AtomicU64 = AtomicU64::new(0);

/// Lets a replacement report the TOC pointer it runs with.
#[notrace]
#[unsafe(no_mangle)]
pub extern "C" fn klp_report_toc(toc: u64) {
    REPORTED_TOC.store(toc, Ordering::SeqCst);
}

/// The kernel-owned copies `klp_intern_text` has handed out, one per distinct text.
static INTERNED: Mutex<Vec<&'static [u8]>> = Mutex::new(Vec::new());

/// Returns the address of a copy of the `length` bytes at `bytes` in kernel
/// memory that is never freed; equal texts share one copy. A replacement
/// returns such a copy instead of a reference into its own module, whose
/// memory goes away with the module (docs/modules.md: "What a replacement
/// may return"). Meant for constant texts: each distinct text stays for the
/// kernel's lifetime.
#[unsafe(no_mangle)]
pub extern "C" fn klp_intern_text(bytes: *const u8, length: usize) -> *const u8 {
    // Safety: the module passes a buffer it owns, of that length.
    let text = unsafe { core::slice::from_raw_parts(bytes, length) };
    let mut interned = INTERNED.lock();
    if let Some(copy) = interned.iter().find(|copy| **copy == text) {
        return copy.as_ptr();
    }
    let copy: &'static [u8] = Box::leak(Box::from(text));
    interned.push(copy);
    copy.as_ptr()
}

/// A safe point for a long-running loop (in the kernel or in a module):
/// during a livepatch transition, the calling thread switches here if
/// nothing the patch changes is on its stack (`livepatch::safe_point`).
#[unsafe(no_mangle)]
pub extern "C" fn klp_safe_point() {
    crate::livepatch::safe_point();
}

/// State `id` of patch `patch` (its name, `length` bytes), or null (Linux's
/// `klp_get_state`): valid while the patch exists; its `data` word is the
/// patch's to use.
#[unsafe(no_mangle)]
pub extern "C" fn klp_get_state(patch: *const u8, length: usize, id: u64) -> *const super::callbacks::KlpState {
    // Safety: the module passes a buffer it owns, of that length.
    unsafe { text(patch, length) }
        .and_then(|patch| super::callbacks::get_state(patch, id))
        .map_or(core::ptr::null(), |state| state as *const _)
}

/// State `id` as the newest enabled patch other than `patch` has it, or
/// null (Linux's `klp_get_prev_state`): what a patch taking a state over
/// starts from, in its pre-patch and post-patch callbacks.
#[unsafe(no_mangle)]
pub extern "C" fn klp_get_prev_state(patch: *const u8, length: usize, id: u64) -> *const super::callbacks::KlpState {
    // Safety: the module passes a buffer it owns, of that length.
    unsafe { text(patch, length) }
        .and_then(|patch| super::callbacks::get_previous_state(patch, id))
        .map_or(core::ptr::null(), |state| state as *const _)
}

/// A kernel static modules may read.
#[unsafe(no_mangle)]
pub static klp_kernel_version: u64 = 1;

/// A ten-argument kernel function that the sample patch `ten` replaces.
#[livepatchable]
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub fn klp_demo_ten(a: u64, b: u64, c: u64, d: u64, e: u64, f: u64, g: u64, h: u64, i: u64, j: u64) -> u64 {
    core::hint::black_box(a + b + c + d + e + f + g + h + i + j)
}

/// `length` bytes at `bytes` as text, or None if they are not UTF-8.
///
/// # Safety
///
/// `bytes` points to `length` readable bytes that stay unchanged during the call.
unsafe fn text<'a>(bytes: *const u8, length: usize) -> Option<&'a str> {
    // Safety: the caller's promise.
    core::str::from_utf8(unsafe { core::slice::from_raw_parts(bytes, length) }).ok()
}

/// Adds the shell command `name` (`help` its one-line help), run by
/// `handler`, to the shell (`module::commands`). 0 on success; -1 for a
/// name that is not one printable word, -2 if the shell or a module has it already.
#[unsafe(no_mangle)]
pub extern "C" fn klp_shell_register(
    name: *const u8,
    name_length: usize,
    help: *const u8,
    help_length: usize,
    handler: crate::module::commands::Handler,
) -> i32 {
    use crate::module::commands::{CommandError, register};
    // Safety: the module passes buffers it owns, of those lengths.
    let (Some(name), Some(help)) = (unsafe { text(name, name_length) }, unsafe { text(help, help_length) }) else {
        return -1;
    };
    match register(name, help, handler, crate::shell::is_builtin(name)) {
        Ok(()) => 0,
        Err(CommandError::Exists) => -2,
        Err(_) => -1,
    }
}

/// Removes the module shell command `name`, waiting for the calls of it in
/// progress to return. 0 on success, -1 if no module command has that name.
#[unsafe(no_mangle)]
pub extern "C" fn klp_shell_unregister(name: *const u8, name_length: usize) -> i32 {
    // Safety: the module passes a buffer it owns, of that length.
    match unsafe { text(name, name_length) }.map(crate::module::commands::unregister) {
        Some(Ok(())) => 0,
        _ => -1,
    }
}

/// Appends `length` bytes at `bytes` to a module command's output (the
/// `output` its handler was given, valid during that call only).
#[unsafe(no_mangle)]
pub extern "C" fn klp_shell_write(output: *mut crate::module::commands::Output, bytes: *const u8, length: usize) {
    // Safety: the handler passes the output it was given (alive for its
    // call) and a buffer it owns, of that length.
    unsafe { (*output).text.extend_from_slice(core::slice::from_raw_parts(bytes, length)) };
}

/// Logs `length` bytes at `bytes` as one line: printed on the console and
/// kept for `klp log` (`module::log`); invalid UTF-8 is shown as '?'.
#[unsafe(no_mangle)]
pub extern "C" fn klp_log(bytes: *const u8, length: usize) {
    // Safety: the module passes a buffer it owns, of that length.
    let bytes = unsafe { core::slice::from_raw_parts(bytes, length) };
    crate::module::log::log(&alloc::string::String::from_utf8_lossy(bytes));
}

/// The threads modules started, until joined.
static MODULE_THREADS: Mutex<Vec<thread::JoinHandle>> = Mutex::new(Vec::new());

/// Starts a kernel thread named `name` running `entry(argument)`. Returns
/// its id (for `klp_thread_join`, `klp_wake_interruptible`), or 0 if there
/// was no memory for it. A module must join every thread it started before
/// its exit returns: the thread runs the module's code.
#[unsafe(no_mangle)]
pub extern "C" fn klp_thread_spawn(
    name: *const u8,
    name_length: usize,
    entry: extern "C" fn(u64),
    argument: u64,
) -> u64 {
    // Safety: the module passes a buffer it owns, of that length.
    let name = unsafe { text(name, name_length) }.unwrap_or("module-thread");
    match thread::spawn(name, move || entry(argument)) {
        Some(handle) => {
            let id = handle.id;
            MODULE_THREADS.lock().push(handle);
            id
        }
        None => 0,
    }
}

/// Waits for the module thread `id` to end. 0 once it has; -1 if `id` is
/// not a thread `klp_thread_spawn` started (or it was joined already).
#[unsafe(no_mangle)]
pub extern "C" fn klp_thread_join(id: u64) -> i32 {
    let handle = {
        let mut threads = MODULE_THREADS.lock();
        let Some(position) = threads.iter().position(|handle| handle.id == id) else { return -1 };
        threads.remove(position)
    };
    handle.join();
    0
}

/// Sleeps up to `milliseconds`; 1 if `klp_wake_interruptible` (or a
/// livepatch transition's fake signal) woke it early, 0 if the time passed.
/// A livepatch safe point, like every sleep.
#[unsafe(no_mangle)]
pub extern "C" fn klp_sleep_interruptible(milliseconds: u64) -> u32 {
    u32::from(thread::sleep_interruptible(milliseconds))
}

/// Wakes thread `id` if it sleeps in `klp_sleep_interruptible`: 1 if it did.
#[unsafe(no_mangle)]
pub extern "C" fn klp_wake_interruptible(id: u64) -> u32 {
    u32::from(thread::wake_interruptible(id))
}

export!(function klp_print);
export!(function klp_uptime_ticks);
export!(function klp_thread_id);
export!(function klp_report_toc);
export!(function klp_intern_text);
export!(function klp_demo_ten);
export!(function klp_safe_point);
export!(function klp_get_state);
export!(function klp_get_prev_state);
export!(function klp_shadow_get);
export!(function klp_shadow_alloc);
export!(function klp_shadow_get_or_alloc);
export!(function klp_shadow_free);
export!(function klp_shadow_free_all);
export!(klp_kernel_version);
export!(function klp_log);
export!(function klp_shell_register);
export!(function klp_shell_unregister);
export!(function klp_shell_write);
export!(function klp_thread_spawn);
export!(function klp_thread_join);
export!(function klp_sleep_interruptible);
export!(function klp_wake_interruptible);
export!(function memcpy);
export!(function memmove);
export!(function memset);
export!(function memcmp);
