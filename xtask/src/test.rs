//! `test`: host tests, then the in-kernel tests, then the console scenarios, with one total.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::ktest::Report;
use crate::qemu::{self, Firmware, Guard, Machine};
use crate::scenario::Scenario;
use crate::{build, command, workspace_root};

#[derive(clap::Args, Default)]
pub struct Options {
    /// Run only the tests whose names contain FILTER (host, kernel and scenario tests).
    pub filter: Option<String>,
    /// Firmware for the kernel boots (a scenario may choose its own).
    #[arg(long, value_enum, default_value_t)]
    pub firmware: Firmware,
    /// Seconds one boot may take before QEMU is killed.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
}

/// Boots that may run at once (the machines have two cores).
const PARALLEL_BOOTS: usize = 2;

/// One part of the run; it adds its results to the tally.
pub type Phase = fn(&Options, &mut Tally) -> Result<()>;

/// Passed and failed counts, with the names of the failures.
#[derive(Default)]
pub struct Tally {
    passed: usize,
    failed: Vec<String>,
}

impl Tally {
    /// Prints the failures and the totals; the exit code says whether all passed.
    pub fn summary(&self) -> ExitCode {
        if !self.failed.is_empty() {
            println!("failures:");
            self.failed.iter().for_each(|failure| println!("    {failure}"));
        }
        println!("{} passed, {} failed", self.passed, self.failed.len());
        if self.failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
    }

    pub fn record(&mut self, name: &str, verdict: &Result<(), String>) {
        match verdict {
            Ok(()) => self.passed += 1,
            Err(reason) => self.failed.push(format!("{name}: {reason}")),
        }
    }
}

pub fn main(options: &Options) -> Result<ExitCode> {
    let mut tally = Tally::default();
    let mut times = Vec::new();
    let phases: [(&str, Phase); 7] = [
        ("lint", crate::lint::lint_tests),
        ("host tests", host_tests),
        ("stack budget", crate::stack::budget_test),
        ("kernel tests", kernel_tests),
        ("scenarios", scenarios),
        ("debugger", crate::gdb_test::debugger_tests),
        ("end to end", crate::end_to_end::end_to_end_tests),
    ];
    for (phase, run) in phases {
        println!("\n=== {phase} ===");
        let start = Instant::now();
        if let Err(error) = run(options, &mut tally) {
            println!("{phase} could not run: {error:#}");
            tally.failed.push(format!("{phase}: {error:#}"));
        }
        times.push(format!("{phase} {:.1} s", start.elapsed().as_secs_f64()));
    }
    println!("\ntime: {}", times.join(", "));
    Ok(tally.summary())
}

/// `cargo test` on the host crates, echoing its output and adding up libtest's summaries.
fn host_tests(options: &Options, tally: &mut Tally) -> Result<()> {
    let mut cargo = command("cargo");
    cargo.args(["test", "--no-fail-fast", "--workspace", "--exclude", "kernel", "--exclude", "boot"]);
    cargo.args(&options.filter).stdout(Stdio::piped());
    let mut guard = Guard::spawn(&mut cargo)?;
    let (mut passed, mut failed) = (0, 0);
    for line in BufReader::new(guard.child().stdout.take().expect("piped")).lines() {
        let line = line?;
        println!("{line}");
        if let Some((ok, bad)) = libtest_summary(&line) {
            passed += ok;
            failed += bad;
        }
    }
    let status = guard.child().wait()?;
    tally.passed += passed;
    tally.failed.extend((0..failed).map(|_| "host test (see its output above)".to_string()));
    if !status.success() && failed == 0 {
        bail!("cargo test failed ({status}) with no failed test: see its output");
    }
    Ok(())
}

/// The counts of a line `test result: ok. N passed; M failed; ...`.
fn libtest_summary(line: &str) -> Option<(usize, usize)> {
    let counts = line.trim().strip_prefix("test result: ")?;
    let count = |label: &str| {
        counts
            .split(';')
            .find_map(|part| part.trim().trim_start_matches(|c: char| !c.is_ascii_digit()).strip_suffix(label))
    };
    Some((count(" passed")?.trim().parse().ok()?, count(" failed")?.trim().parse().ok()?))
}

/// The test kernel: boots running every selected case (a fresh boot goes on
/// after a case that hung or crashed its boot), one boot per isolated case,
/// then the runner's self-test.
fn kernel_tests(options: &Options, tally: &mut Tally) -> Result<()> {
    let image = build::main(&build::Options { test: true })?;
    let symbolizer = crate::symbolize::Symbolizer::new(&image);
    let filter = options.filter.as_deref().unwrap_or_default();
    let mut print = |line: &str| {
        println!("{line}");
        if let Some(annotation) = symbolizer.as_ref().and_then(|symbolizer| symbolizer.annotation(line)) {
            println!("{annotation}");
        }
    };
    let cases = run_cases(&image, filter, "", qemu::DEFAULT_CPUS, options, &mut print);
    tally.passed += cases.passed.len();
    cases.failed.iter().for_each(|(name, reason)| tally.failed.push(format!("{name}: {reason}")));
    // The suite again on one CPU, where the scheduler, the grace periods and
    // text patching take their one-CPU paths; the kernel leaves out the
    // cases that need another CPU (`ktest::NEED_SEVERAL_CPUS`), and the
    // isolated cases run once, above.
    println!("=== kernel tests on one CPU ===");
    let one = run_cases(&image, filter, "ktest.skip_isolated", 1, options, &mut print);
    tally.passed += one.passed.len();
    one.failed.iter().for_each(|(name, reason)| tally.failed.push(format!("{name} (one CPU): {reason}")));
    // The livepatch suite once more on its slow paths (`SLOW_PATHS`):
    // direct calls off, so every patched call takes the generic path
    // (ftrace_caller, the handler, livepatch_handler), which the runs above
    // use only during transitions and for traced functions; and no wait for
    // transitions, so whatever does not complete at once is left pending to
    // the worker, as on a machine too busy to finish it within the wait.
    // Each of its boots must say both: without those lines this run would
    // silently repeat the first.
    println!("=== livepatch suite on its slow paths ({SLOW_PATHS}) ===");
    let mut said = [0; SLOW_PATHS_LINES.len()];
    let slow = run_cases(
        &image,
        filter,
        &format!("{SLOW_PATHS} ktest.suite=livepatch"),
        qemu::DEFAULT_CPUS,
        options,
        &mut |line| {
            for (count, expected) in said.iter_mut().zip(SLOW_PATHS_LINES) {
                *count += usize::from(line.contains(expected));
            }
            print(line);
        },
    );
    tally.passed += slow.passed.len();
    slow.failed.iter().for_each(|(name, reason)| tally.failed.push(format!("{name} (slow paths): {reason}")));
    for (count, expected) in said.iter().zip(SLOW_PATHS_LINES) {
        if *count != slow.boots {
            tally.failed.push(format!(
                "livepatch suite on its slow paths: {count} of its {} boots said `{expected}`",
                slow.boots
            ));
        }
    }
    for (name, verdict) in parallel(&cases.isolated, |name| isolated(&image, name, "", options)) {
        tally.record(&name, &verdict);
    }
    // The suite's isolated cases too (each alone in a boot), on the slow paths.
    for (name, verdict) in parallel(&slow.isolated, |name| isolated(&image, name, SLOW_PATHS, options)) {
        tally.record(&format!("{name} (slow paths)"), &verdict);
    }
    if options.filter.as_ref().is_none_or(|filter| crate::function_notes::CHECK.contains(filter.as_str())) {
        let verdict = crate::function_notes::check_test_kernel(&image);
        print_block(
            "host reading of the test kernel's DWARF",
            &[],
            &format!("test {}", crate::function_notes::CHECK),
            &verdict,
        );
        tally.record(crate::function_notes::CHECK, &verdict);
    }
    if options.filter.as_ref().is_none_or(|filter| RUNNER_SELFTEST.contains(filter.as_str())) {
        let mut output = Vec::new();
        let verdict = runner_selftest(&image, options, &mut output);
        print_block("runner self-test boots", &output, &format!("test {RUNNER_SELFTEST}"), &verdict);
        tally.record(RUNNER_SELFTEST, &verdict);
    }
    Ok(())
}

/// The boot arguments of the livepatch suite's second run: direct calls off
/// (docs/livepatch.md, "Two paths") and transitions left to the worker
/// (docs/livepatch.md, "Waiting for a transition").
const SLOW_PATHS: &str = "livepatch.direct=off livepatch.transition_wait=0";
/// What the kernel prints when booted with `SLOW_PATHS`, one line per argument.
const SLOW_PATHS_LINES: [&str; 2] =
    ["klp: direct calls off (livepatch.direct=off)", "klp: transitions wait 0 ms (livepatch.transition_wait=0)"];

/// What the boots of the test kernel reported, every selected case counted once.
#[derive(Default)]
struct Cases {
    passed: Vec<String>,
    failed: Vec<(String, String)>,
    isolated: Vec<String>,
    boots: usize,
}

/// Boots the test kernel with `ktest.filter=FILTER` and `extra` arguments;
/// when a boot ends early (a case hung past its deadline, crashed the
/// kernel, or the boot timed out), the case it was running fails and a fresh
/// boot runs the cases after it. Every console line goes to `on_line`.
fn run_cases(
    image: &Path,
    filter: &str,
    extra: &str,
    cpus: u32,
    options: &Options,
    on_line: &mut dyn FnMut(&str),
) -> Cases {
    let mut cases = Cases::default();
    let mut after: Option<String> = None;
    loop {
        let mut append = format!("ktest.filter={filter} {extra}");
        if let Some(name) = &after {
            append.push_str(&format!(" ktest.after={name}"));
        }
        let machine =
            Machine { append, cpus, ..Machine::new(image.to_path_buf(), options.firmware).with(&["-serial", "stdio"]) };
        let mut report = Report::default();
        let outcome = machine.command().and_then(|mut qemu| {
            qemu::boot(&mut qemu, None, Duration::from_secs(options.timeout), |line| {
                on_line(line);
                report.line(line);
            })
        });
        cases.boots += 1;
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(error) => {
                cases.failed.push(("kernel test boot".into(), format!("{error:#}")));
                return cases;
            }
        };
        cases.passed.append(&mut report.passed);
        cases.failed.extend(report.failed.iter().map(|name| (name.clone(), report.reason(name).to_string())));
        for (name, reason) in &report.reasons {
            on_line(&format!("test {name} FAILED after its ok: {reason}"));
        }
        cases.isolated.append(&mut report.isolated);
        let Some(reason) = report.boot_failure(&outcome) else {
            if let Some(name) = report.running.take() {
                cases.failed.push((name, "printed no result".to_string()));
            }
            return cases;
        };
        on_line(&format!("kernel test boot FAILED: {reason}"));
        if report.finished {
            // Every case ran (a case's panic, say, failed only that case): a
            // failed boot counts once, unless a failed case already counts for it.
            if report.failed.is_empty() {
                cases.failed.push(("kernel test boot".into(), reason));
            }
            return cases;
        }
        if let Some(name) = report.running.take() {
            on_line(&format!("test {name} ... FAILED (the boot failed: {reason})"));
            let panic = report.panic_message(&name).map(|message| format!(" ({message})")).unwrap_or_default();
            cases.failed.push((name, format!("the boot failed while it ran: {reason}{panic}")));
        }
        match report.continue_after(after.as_deref()) {
            Some(name) => {
                on_line(&format!("kernel tests: a fresh boot runs the cases after {name}"));
                after = Some(name);
            }
            None => {
                cases.failed.push(("kernel test boot".into(), reason));
                return cases;
            }
        }
    }
}

/// Name of the runner's self-test, and the word that selects its kernel cases.
const RUNNER_SELFTEST: &str = "runner_selftest";

/// Boots the kernel's deliberately failing and hanging cases (tests/runner.rs)
/// with a 2 s deadline: the case that fails with registrations in place and
/// the one that hangs must fail by name, the cases after each must pass (the
/// first finds nothing left registered, the second runs in a fresh boot), the
/// case whose secondary CPU panics must end its boot with that one report
/// (no panic of the boot CPU's thread after it), and every case must be counted.
fn runner_selftest(image: &Path, options: &Options, output: &mut Vec<String>) -> Result<(), String> {
    let extra = "ktest.selftest ktest.deadline=2";
    let cases = run_cases(image, RUNNER_SELFTEST, extra, qemu::DEFAULT_CPUS, options, &mut |line| {
        output.push(line.to_string())
    });
    let short = |name: &String| name.rsplit("::").next().unwrap_or(name).to_string();
    let mut passed: Vec<String> = cases.passed.iter().map(short).collect();
    let mut failed: Vec<String> = cases.failed.iter().map(|(name, _)| short(name)).collect();
    passed.sort();
    failed.sort();
    let expected_passed = ["runner_selftest_finds_nothing_left_registered", "runner_selftest_runs_after_the_hang"];
    let expected_failed = [
        "runner_selftest_a_secondary_cpu_panics",
        "runner_selftest_fails_leaving_registrations",
        "runner_selftest_hangs",
    ];
    if passed != expected_passed || failed != expected_failed || cases.boots != 3 {
        return Err(format!(
            "passed {passed:?}, failed {failed:?} in {} boots; expected passed {expected_passed:?}, failed {expected_failed:?} in 3 boots",
            cases.boots
        ));
    }
    let expected_lines = [
        "ktest: watchdog: kernel::tests::runner::runner_selftest_hangs still running after its 2 s deadline",
        "left live patch runner-selftest (remove: done)",
        "left ftrace ops runner-selftest-left-behind (unregister: done)",
        "kernel: panic on CPU 1 in an IPI handler: the machine stops",
    ];
    if let Some(missing) = expected_lines.iter().find(|expected| !output.iter().any(|line| line.contains(*expected))) {
        return Err(format!("no line `{missing}`"));
    }
    // The secondary CPU's panic is the only panic of its boot. Counted in
    // the kernel's own words, not in the runner's reports that quote them.
    let panics = output.iter().filter(|line| line.contains("kernel panicked at")).count();
    match panics {
        2 => Ok(()),
        _ => Err(format!("{panics} lines `kernel panicked at`; expected 2 (the failing case's, the secondary CPU's)")),
    }
}

/// One boot running only `name`; prints its output and result as one block.
fn isolated(image: &Path, name: &str, extra: &str, options: &Options) -> (String, Result<(), String>) {
    let machine = Machine {
        append: format!("ktest.only={name} {extra}"),
        cpus: qemu::DEFAULT_CPUS,
        ..Machine::new(image.to_path_buf(), options.firmware).with(&["-serial", "stdio"])
    };
    let mut report = Report::default();
    let mut output = Vec::new();
    let verdict = machine
        .command()
        .and_then(|mut qemu| {
            qemu::boot(&mut qemu, None, Duration::from_secs(options.timeout), |line| {
                output.push(line.to_string());
                report.line(line);
            })
        })
        .map_err(|error| format!("{error:#}"))
        .and_then(|outcome| report.isolated_verdict(name, &outcome));
    let label = if extra.is_empty() { String::new() } else { format!(", {extra}") };
    print_block(
        &format!("isolated boot of {name}{label}"),
        &output,
        &format!("test {name} (isolated{label})"),
        &verdict,
    );
    (name.to_string(), verdict)
}

/// The console scenarios, run against the normal kernel.
fn scenarios(options: &Options, tally: &mut Tally) -> Result<()> {
    let directory = workspace_root().join("tests/scenarios");
    let mut paths: Vec<PathBuf> = match std::fs::read_dir(&directory) {
        Ok(entries) => entries.filter_map(|entry| Some(entry.ok()?.path())).collect(),
        Err(_) => Vec::new(),
    };
    paths.retain(|path| path.extension().is_some_and(|extension| extension == "scenario"));
    paths.sort();
    let scenarios = paths.iter().map(|path| Scenario::load(path)).collect::<Result<Vec<_>>>()?;
    let scenarios: Vec<Scenario> = scenarios
        .into_iter()
        .filter(|scenario| {
            options.filter.as_ref().is_none_or(|filter| format!("scenario::{}", scenario.name).contains(filter))
        })
        .collect();
    if scenarios.is_empty() {
        println!("no scenario in {}", directory.display());
        return Ok(());
    }
    let image = build::main(&build::Options { test: false })?;
    let timeout = Duration::from_secs(options.timeout);
    for (name, verdict) in parallel(&scenarios, |scenario| {
        let name = format!("scenario::{}", scenario.name);
        let (output, verdict) = match scenario.run(&image, options.firmware, timeout) {
            Ok((output, verdict)) => (output.lines().map(String::from).collect(), verdict),
            Err(error) => (Vec::new(), Err(format!("{error:#}"))),
        };
        print_block(&format!("console of {name}"), &output, &format!("test {name}"), &verdict);
        (name, verdict)
    }) {
        tally.record(&name, &verdict);
    }
    Ok(())
}

/// Prints a boot's console output, indented, then its `test NAME ... ok|FAILED` line.
fn print_block(title: &str, output: &[String], test: &str, verdict: &Result<(), String>) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "--- {title} ---");
    output.iter().for_each(|line| drop(writeln!(stdout, "    {line}")));
    let _ = match verdict {
        Ok(()) => writeln!(stdout, "{test} ... ok"),
        Err(reason) => writeln!(stdout, "{test} ... FAILED: {reason}"),
    };
}

/// Runs `work` on every item, [`PARALLEL_BOOTS`] at a time; results in the items' order.
fn parallel<T: Sync, R: Send>(items: &[T], work: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let results = Mutex::new(Vec::new());
    thread::scope(|scope| {
        for _ in 0..PARALLEL_BOOTS.min(items.len()) {
            scope.spawn(|| {
                let mut index = next.fetch_add(1, Ordering::Relaxed);
                while let Some(item) = items.get(index) {
                    let result = work(item);
                    results.lock().expect("a worker panicked").push((index, result));
                    index = next.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    let mut results = results.into_inner().expect("a worker panicked");
    results.sort_by_key(|(index, _)| *index);
    results.into_iter().map(|(_, result)| result).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libtest_summaries() {
        let line = "test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s";
        assert_eq!(libtest_summary(line), Some((12, 0)));
        let line = "test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.20s";
        assert_eq!(libtest_summary(line), Some((3, 2)));
        assert_eq!(libtest_summary("test foo ... ok"), None);
        assert_eq!(libtest_summary("running 3 tests"), None);
    }

    #[test]
    fn parallel_keeps_the_order_of_items() {
        let items: Vec<u64> = (0..7).collect();
        let results = parallel(&items, |item| {
            thread::sleep(Duration::from_millis(10 * (7 - item)));
            item * 2
        });
        assert_eq!(results, [0, 2, 4, 6, 8, 10, 12]);
    }
}
