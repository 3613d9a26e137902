//! The in-kernel test runner: runs each `#[ktest]` case in its own thread and reports like libtest.
//!
//! Boot arguments select what runs: `ktest.filter=TEXT` (cases whose name
//! contains TEXT), `ktest.after=NAME` (only the selected cases after NAME, in a
//! fresh boot after NAME hung or crashed), `ktest.deadline=SECONDS` (each case's
//! watchdog), `ktest.only=NAME` (exactly one case, alone in this boot),
//! `ktest.suite=livepatch` (only the livepatch suite: [`LIVEPATCH_SUITE`];
//! xtask runs it once more on its slow paths, `livepatch.direct=off
//! livepatch.transition_wait=0`),
//! `bench` (the benchmarks instead of the tests), `shell` (the shell). Isolated cases are listed
//! as `ktest: isolated NAME` for xtask to boot one by one. Cases whose name contains
//! [`SELFTEST`] fail or hang on purpose and run only in a boot with the word
//! `ktest.selftest` (xtask's runner self-test), never in the suite.
use crate::{println, thread};
use core::sync::atomic::{AtomicPtr, Ordering};

mod isolation;
mod watchdog;

pub use watchdog::DEFAULT_SECONDS as DEFAULT_DEADLINE_SECONDS;
pub use watchdog::check as watchdog_check;

/// The livepatch suite (`ktest.suite=livepatch`): every case that enables a
/// live patch, loads a patch module or walks a patched call, by module.
/// `cargo xtask test` runs it a second time with direct calls off and no
/// wait for transitions, so that each of them passes on both paths a
/// patched call can take and with every transition left to the worker.
pub const LIVEPATCH_SUITE: &[&str] = &[
    "kernel::tests::livepatch::",
    "kernel::tests::livepatchable::",
    "kernel::tests::inlined::",
    "kernel::tests::consistency::",
    "kernel::tests::selftests::",
    "kernel::tests::shadow::",
    "kernel::tests::coexistence::",
    "kernel::tests::modules::",
    "kernel::tests::target_modules::",
    "kernel::tests::unload::",
    "kernel::tests::reliable_stack::",
    "kernel::tests::registers::",
    "kernel::tests::debugger::",
    "kernel::tests::direct::",
    "kernel::tests::stack::",
    "kernel::tests::quiescence::",
    "kernel::tests::smp_stress::patching",
];

/// The word in the names of the runner's own self-test cases (tests/runner.rs).
pub const SELFTEST: &str = "runner_selftest";

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
    unsafe { crate::section::records(&raw const __ktests_start, &raw const __ktests_end) }
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
    if arguments.split_whitespace().any(|word| word == "bench-smp") {
        crate::tests::bench_smp::run_all();
        println!("bench: done");
        return;
    }
    if arguments.split_whitespace().any(|word| word == "bench") {
        crate::tests::bench::run_all();
        println!("bench: done");
        return;
    }
    let deadline =
        argument(arguments, "ktest.deadline").and_then(|text| text.parse().ok()).unwrap_or(watchdog::DEFAULT_SECONDS);
    if let Some(name) = argument(arguments, "ktest.only") {
        match all().iter().find(|test| test.name == name) {
            Some(test) => {
                run_one(test, deadline);
            }
            None => println!("ktest: no test named {name}"),
        }
        println!("ktest: finished");
        return;
    }
    let filter = argument(arguments, "ktest.filter").unwrap_or("");
    let after = argument(arguments, "ktest.after");
    let selftest = arguments.split_whitespace().any(|word| word == "ktest.selftest");
    let skip_isolated = arguments.split_whitespace().any(|word| word == "ktest.skip_isolated");
    let several_cpus = crate::arch::percpu::online_cpus().len() > 1;
    let suite: &[&str] = match argument(arguments, "ktest.suite") {
        Some("livepatch") => LIVEPATCH_SUITE,
        Some(other) => {
            println!("ktest: no suite named {other}");
            &[]
        }
        None => &[""],
    };
    let in_suite = move |test: &&KernelTest| suite.iter().any(|prefix| test.name.starts_with(prefix));
    let runnable = move |test: &&KernelTest| in_suite(test) && (several_cpus || !needs_several_cpus(test.name));
    let left_out = select(all(), filter, after, selftest).filter(in_suite).filter(|test| !runnable(test)).count();
    if left_out != 0 {
        println!("ktest: {left_out} cases need more than one CPU online: left out");
    }
    let selected = select(all(), filter, after, selftest).filter(runnable);
    let (mut passed, mut failed) = (0, 0);
    println!("ktest: running {} tests", selected.clone().filter(|test| !test.isolated).count());
    for test in selected {
        if test.isolated {
            if !skip_isolated {
                println!("ktest: isolated {}", test.name);
            }
        } else if run_one(test, deadline) {
            passed += 1;
        } else {
            failed += 1;
        }
    }
    println!("ktest: suite result: {passed} passed; {failed} failed");
    println!("ktest: finished");
}

/// The cases that place threads or calls on another CPU: a boot with one
/// CPU online leaves them out (xtask runs the suite with two CPUs, then
/// again with one).
const NEED_SEVERAL_CPUS: &[&str] = &[
    "kernel::tests::smp::",
    "kernel::tests::smp_stress::",
    "kernel::tests::scheduling::",
    "kernel::tests::quiescence::",
    "kernel::tests::trace_rings::",
    "kernel::tests::runner::runner_selftest_a_secondary_cpu_panics",
];

/// Whether the case named `name` needs more than one CPU online.
fn needs_several_cpus(name: &str) -> bool {
    NEED_SEVERAL_CPUS.iter().any(|prefix| name.starts_with(prefix))
}

/// The cases whose name contains `filter` (only the self-tests when
/// `selftest`, never them otherwise), and only those after the case named
/// `after`, if any.
fn select<'a>(
    tests: &'static [KernelTest],
    filter: &'a str,
    after: Option<&'a str>,
    selftest: bool,
) -> impl Iterator<Item = &'static KernelTest> + Clone + 'a {
    let start = after.and_then(|name| tests.iter().position(|test| test.name == name)).map_or(0, |index| index + 1);
    tests[start..].iter().filter(move |test| test.name.contains(filter) && test.name.contains(SELFTEST) == selftest)
}

/// Runs one case: on this thread for should_panic cases, otherwise in its
/// own thread under the watchdog; then removes whatever it left registered
/// (failing it if it passed anyway), and prints its result.
fn run_one(test: &'static KernelTest, deadline: u64) -> bool {
    crate::print!("test {} ... ", test.name);
    if test.should_panic {
        RUNNING_ON_BOOT_THREAD.store(test as *const KernelTest as *mut KernelTest, Ordering::SeqCst);
        (test.function)();
        RUNNING_ON_BOOT_THREAD.store(core::ptr::null_mut(), Ordering::SeqCst);
        println!("FAILED");
        println!("ktest: {} did not panic", test.name);
        return false;
    }
    let before = isolation::snapshot();
    watchdog::arm(test, deadline);
    let status = match thread::spawn_on(crate::arch::percpu::BOOT_CPU, test.name, test.function) {
        Some(handle) => handle.join(),
        None => thread::ExitStatus::Killed("no memory for the test thread"),
    };
    watchdog::disarm();
    let undone = isolation::restore(&before);
    let verdict = match status {
        thread::ExitStatus::Returned if undone.is_empty() => Ok(()),
        thread::ExitStatus::Returned => Err("it passed but left registrations behind"),
        thread::ExitStatus::Killed(reason) => Err(reason),
    };
    match verdict {
        Ok(()) => println!("ok"),
        Err(reason) => {
            println!("FAILED");
            println!("ktest: {} ended: {reason}", test.name);
        }
    }
    for line in &undone {
        println!("ktest: {} left {line}", test.name);
    }
    verdict.is_ok()
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
/// should_panic case on the boot thread passes it. Only for a panic on the
/// boot CPU, where the threads run: the panic handler stops the machine after
/// a panic on any other CPU.
pub fn on_panic() {
    let expected = RUNNING_ON_BOOT_THREAD.load(Ordering::SeqCst);
    if !expected.is_null() {
        // Safety: points at a KernelTest in `.ktests`.
        let test = unsafe { &*expected };
        println!("ok");
        println!("ktest: expected panic in {}", test.name);
        return;
    }
    // The boot thread runs the suite; an idle thread (a panic in a tick or
    // the idle loop) must never die: either stops the machine instead.
    if thread::current_id() != 0 && !thread::current_is_idle() {
        crate::panic::end_panic();
        crate::console::end_report();
        thread::exit(thread::ExitStatus::Killed("panic"));
    }
}
