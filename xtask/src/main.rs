//! The project's task runner: `cargo xtask build|run|test|lint|bench|gdb|console|objdump|patch|trace`.

mod bench;
mod build;
mod build_id;
mod console;
// Used by its tests only until `cargo xtask patch from-diff` exists.
mod diff_dwarf;
mod dwarf;
mod end_to_end;
#[cfg(test)]
mod export_wrappers;
#[cfg(test)]
mod fixture_object;
mod from_diff;
mod from_diff_test;
mod function_notes;
mod gdb;
mod gdb_test;
#[cfg(test)]
mod hcall_contract;
mod image;
mod imports;
mod klp_module;
mod ktest;
mod lint;
mod objdump;
mod object_diff;
mod packages;
mod patch;
mod patch_channel;
mod patch_object;
mod qemu;
mod run;
mod scenario;
mod shell_docs;
mod signing;
mod stack;
mod symbolize;
mod symbols;
mod test;
mod trace;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

/// Builds, boots, tests, benchmarks and debugs the kernel under QEMU pseries.
#[derive(Parser)]
#[command(name = "xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Builds the kernel into target/kernel/kernel.elf and fills its symbol table.
    Build(build::Options),
    /// Builds the kernel and boots it in QEMU, its console on this terminal (or pipe).
    Run(run::Options),
    /// Runs the host tests, the in-kernel tests and the console scenarios.
    Test(test::Options),
    /// Checks formatting (rustfmt) and lints (clippy, warnings are errors) on every crate.
    Lint,
    /// Boots the test kernel with a deterministic clock and prints its benchmarks.
    Bench(bench::Options),
    /// Boots the kernel paused in QEMU with gdb-multiarch attached, or attaches it to the kernel of `run`.
    Gdb(gdb::Options),
    /// Attaches this terminal to the console of the kernel that `cargo xtask gdb` booted.
    Console,
    /// Disassembles the kernel, or one of its functions.
    Objdump(objdump::Options),
    /// Builds and signs live patch modules (patches/NAME); loads and unloads them in a running kernel.
    Patch(patch::Options),
    /// Records a function_graph trace of shell commands; draws a flame graph and a Perfetto trace.
    Trace(trace::Options),
}

/// Runs the task. A failure is a user error (a missing tool, a failed build,
/// a refused patch): it prints as one line of causes, whatever RUST_BACKTRACE
/// says; backtraces are for bugs, which panic.
fn main() -> ExitCode {
    match task(Cli::parse().task) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("{}", user_error(&error));
            ExitCode::FAILURE
        }
    }
}

/// A failed task as the user sees it: one line, the error and its causes.
fn user_error(error: &anyhow::Error) -> String {
    format!("error: {error:#}")
}

fn task(task: Task) -> Result<ExitCode> {
    match task {
        Task::Build(options) => build::main(&options).map(|_| ExitCode::SUCCESS),
        Task::Run(options) => run::main(&options),
        Task::Test(options) => test::main(&options),
        Task::Lint => lint::main(),
        Task::Bench(options) => bench::main(&options),
        Task::Gdb(options) => gdb::main(&options),
        Task::Console => console::main(),
        Task::Objdump(options) => objdump::main(&options),
        Task::Patch(options) => patch::main(&options),
        Task::Trace(options) => trace::main(&options),
    }
}

/// The workspace root, where every command runs.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives inside the workspace").to_path_buf()
}

/// A command that runs in the workspace root.
pub fn command(program: impl AsRef<OsStr>) -> Command {
    let mut command = Command::new(program);
    command.current_dir(workspace_root());
    command
}

/// The command line as a shell would take it, with the variables it sets.
pub fn display(command: &Command) -> String {
    let variables = command
        .get_envs()
        .filter_map(|(key, value)| Some(format!("{}={}", key.to_string_lossy(), quote(&value?.to_string_lossy()))));
    let words =
        std::iter::once(command.get_program()).chain(command.get_args()).map(|word| quote(&word.to_string_lossy()));
    variables.chain(words).collect::<Vec<_>>().join(" ")
}

/// Quotes `word` for a POSIX shell when it needs it.
pub fn quote(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./:=,+@%".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Prints the command that is about to run (on stderr, so that stdout stays data).
pub fn announce(command: &Command) {
    eprintln!("$ {}", display(command));
}

/// Prints and runs `command`, failing unless it exits successfully.
pub fn run_checked(command: &mut Command) -> Result<()> {
    announce(command);
    let status = command.status().with_context(|| format!("could not start {}", display(command)))?;
    if !status.success() {
        bail!("{} failed with {status}", display(command));
    }
    Ok(())
}

/// Prints and runs `command`, returning its trimmed standard output.
pub fn output_checked(command: &mut Command) -> Result<String> {
    announce(command);
    let output = command.output().with_context(|| format!("could not start {}", display(command)))?;
    if !output.status.success() {
        bail!("{} failed with {}: {}", display(command), output.status, String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(String::from_utf8(output.stdout)?.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_error_is_one_line_with_its_causes_and_no_backtrace() {
        // A backtrace is captured when RUST_BACKTRACE asks for one; the
        // user's line never shows it, nor anyhow's multi-line "Caused by:".
        let error = Err::<(), _>(anyhow::anyhow!("no patch \"x\""))
            .context("building patch x")
            .context("cargo xtask patch build")
            .unwrap_err();
        assert_eq!(user_error(&error), "error: cargo xtask patch build: building patch x: no patch \"x\"");
    }

    #[test]
    fn quotes_only_what_the_shell_would_split() {
        assert_eq!(quote("target/kernel/kernel.elf"), "target/kernel/kernel.elf");
        assert_eq!(quote("ktest.filter=a b"), "'ktest.filter=a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote(""), "''");
    }

    #[test]
    fn displays_variables_before_the_program() {
        let mut command = Command::new("cargo");
        command.env("RUSTC_BOOTSTRAP", "1").args(["build", "--release"]);
        assert_eq!(display(&command), "RUSTC_BOOTSTRAP=1 cargo build --release");
    }
}
