//! The in-kernel test runner: runs each `#[ktest]` case in its own thread and reports like libtest.
//!
//! Boot arguments select what runs: `ktest.filter=TEXT` (cases whose name
//! contains TEXT), `ktest.only=NAME` (exactly one case, alone in this boot),
//! `bench` (the benchmarks instead of the tests), `shell` (the shell). Isolated cases are listed
//! as `ktest: isolated NAME` for xtask to boot one by one.
use crate::{println, thread};
use core::sync::atomic::{AtomicPtr, Ordering};

/// One registered test case (placed in `.ktests` by `#[ktest]`).
#[repr(C)]
pub struct KernelTest {
    pub name: &'static str,
    pub function: fn(),
    /// Runs alone in its own boot.
    pub isolated: bool,
    /// Passes only if the kernel panics (runs on the boot thread, isolated).
    pub should_panic: bool,
}

// Rust data (KernelTest holds a &str): only the addresses cross the "C" boundary.
#[allow(improper_ctypes)]
unsafe extern "C" {
    static __ktests_start: KernelTest;
    static __ktests_end: KernelTest;
}

/// Every registered case.
pub fn all() -> &'static [KernelTest] {
    // Safety: the linker script brackets `.ktests`, which holds only KernelTest records.
    unsafe {
        let start = &raw const __ktests_start;
        let end = &raw const __ktests_end;
        core::slice::from_raw_parts(start, end.offset_from(start) as usize)
    }
}

/// The case running on the boot thread, for the panic handler.
static RUNNING_ON_BOOT_THREAD: AtomicPtr<KernelTest> = AtomicPtr::new(core::ptr::null_mut());

fn argument<'a>(arguments: &'a str, key: &str) -> Option<&'a str> {
    arguments.split_whitespace().find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
}

/// Runs what the boot arguments ask for, then returns (the kernel powers off).
pub fn run(arguments: &str) {
    if arguments.split_whitespace().any(|word| word == "shell") {
        // The test kernel's shell, for exploring it (e.g. under `cargo xtask gdb --test`).
        crate::shell::run(arguments);
        return;
    }
    if arguments.split_whitespace().any(|word| word == "bench") {
        crate::tests::bench::run_all();
        println!("bench: done");
        return;
    }
    if let Some(name) = argument(arguments, "ktest.only") {
        match all().iter().find(|test| test.name == name) {
            Some(test) => {
                run_one(test);
            }
            None => println!("ktest: no test named {name}"),
        }
        println!("ktest: finished");
        return;
    }
    let filter = argument(arguments, "ktest.filter").unwrap_or("");
    let selected = all().iter().filter(|test| test.name.contains(filter));
    let (mut passed, mut failed) = (0, 0);
    println!("ktest: running {} tests", selected.clone().filter(|test| !test.isolated).count());
    for test in selected {
        if test.isolated {
            println!("ktest: isolated {}", test.name);
        } else if run_one(test) {
            passed += 1;
        } else {
            failed += 1;
        }
    }
    println!("ktest: suite result: {passed} passed; {failed} failed");
    println!("ktest: finished");
}

/// Runs one case: in its own thread, or on this thread for should_panic cases.
fn run_one(test: &'static KernelTest) -> bool {
    crate::print!("test {} ... ", test.name);
    if test.should_panic {
        RUNNING_ON_BOOT_THREAD.store(test as *const KernelTest as *mut KernelTest, Ordering::SeqCst);
        (test.function)();
        RUNNING_ON_BOOT_THREAD.store(core::ptr::null_mut(), Ordering::SeqCst);
        println!("FAILED");
        println!("ktest: {} did not panic", test.name);
        return false;
    }
    let function = test.function;
    let status = match thread::spawn(test.name, function) {
        Some(handle) => handle.join(),
        None => thread::ExitStatus::Killed("no memory for the test thread"),
    };
    match status {
        thread::ExitStatus::Returned => {
            println!("ok");
            true
        }
        thread::ExitStatus::Killed(reason) => {
            println!("FAILED");
            println!("ktest: {} ended: {reason}", test.name);
            false
        }
    }
}

/// Announces that the running case will print `line` as a whole console line
/// before its result: xtask fails the case if it never does. The line travels
/// hex-encoded, so the announcement cannot itself be taken for the line.
pub fn expect_line(line: &str) {
    use core::fmt::Write;
    let mut announcement = alloc::string::String::from("\nktest: expect line ");
    for byte in line.bytes() {
        let _ = write!(announcement, "{byte:02x}");
    }
    println!("{announcement}");
}

/// Called by the panic handler. A panic in a test thread fails that case only
/// (the thread is killed; the suite goes on); a panic expected by a
/// should_panic case on the boot thread passes it.
pub fn on_panic() {
    let expected = RUNNING_ON_BOOT_THREAD.load(Ordering::SeqCst);
    if !expected.is_null() {
        // Safety: points at a KernelTest in `.ktests`.
        let test = unsafe { &*expected };
        println!("ok");
        println!("ktest: expected panic in {}", test.name);
        return;
    }
    if thread::current_id() != 0 {
        crate::panic::end_panic();
        thread::exit(thread::ExitStatus::Killed("panic"));
    }
}
