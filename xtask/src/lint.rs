//! `lint`: rustfmt and clippy (warnings are errors) on every crate: the
//! workspace, the kernel on its own target, and each patch crate.
//!
//! `cargo xtask test` runs these as its first phase, so the README's test
//! command is also the style gate; `cargo xtask lint` runs them alone.

use std::process::{ExitCode, Stdio};

use anyhow::{Context, Result};

use crate::test::{Options, Tally};
use crate::{build, command, display, packages, patch, workspace_root};

/// Where clippy's kernel and patch builds go (clippy's outputs differ from
/// rustc's, so sharing the build's target folders would rebuild both ways).
const KERNEL_TARGET_DIR: &str = "target/clippy-kernel";
const PATCH_TARGET_DIR: &str = "target/clippy-patches";

/// One check: its test name and the command that passes when it exits 0.
struct Check {
    name: String,
    command: std::process::Command,
}

/// `cargo xtask lint`: every check, a summary, failure when any fails.
pub fn main() -> Result<ExitCode> {
    let mut tally = Tally::default();
    lint_tests(&Options::default(), &mut tally)?;
    Ok(tally.summary())
}

/// The lint phase of `cargo xtask test`: each check whose name contains the filter.
pub fn lint_tests(options: &Options, tally: &mut Tally) -> Result<()> {
    let filter = options.filter.as_deref().unwrap_or_default();
    let checks: Vec<Check> = checks()?.into_iter().filter(|check| check.name.contains(filter)).collect();
    if !checks.is_empty() {
        // rustfmt and clippy are rust-toolchain.toml components; xtask installs them.
        packages::require_toolchain()?;
    }
    for mut check in checks {
        if check.name == "lint clippy kernel" {
            // The test kernel embeds the signed sample modules (kernel/build.rs).
            patch::build_all()?;
        }
        let shown = display(&check.command);
        let output = check.command.stdin(Stdio::null()).output().with_context(|| format!("could not start {shown}"))?;
        let verdict = if output.status.success() {
            Ok(())
        } else {
            println!("$ {shown}");
            print!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
            Err(format!("`{shown}` failed ({}); its output is above", output.status))
        };
        println!("test {} ... {}", check.name, if verdict.is_ok() { "ok" } else { "FAILED" });
        tally.record(&check.name, &verdict);
    }
    Ok(())
}

/// Every check, in the order they run (cheapest first).
fn checks() -> Result<Vec<Check>> {
    let mut checks = Vec::new();
    let mut format = command("cargo");
    format.args(["fmt", "--all", "--check"]);
    checks.push(Check { name: "lint fmt workspace".into(), command: format });
    for name in patch::names()?.into_iter().chain([patch::HELPER_CRATE.to_string()]) {
        let mut format = command("cargo");
        format.args(["fmt", "--check", "--manifest-path"]).arg(manifest(&name));
        checks.push(Check { name: format!("lint fmt patch {name}"), command: format });
    }
    let mut host = command("cargo");
    host.args(["clippy", "--workspace", "--exclude", "kernel", "--exclude", "boot", "--all-targets"]);
    host.args(["--", "-D", "warnings"]);
    checks.push(Check { name: "lint clippy host".into(), command: host });
    // The test kernel: it has every line of the plain kernel and the tests.
    let mut kernel = build::kernel_cargo("clippy", true, KERNEL_TARGET_DIR);
    kernel.args(["--", "-D", "warnings"]);
    checks.push(Check { name: "lint clippy kernel".into(), command: kernel });
    for name in patch::names()? {
        // Each patch crate, and through it the klp-patch helper crate it depends on.
        let mut clippy = command("cargo");
        clippy.env("RUSTC_BOOTSTRAP", "1").args(["clippy", "--release", "--lib", "--manifest-path"]);
        clippy.arg(manifest(&name)).args([
            "--target",
            "kernel/ppc64le-kernel.json",
            "-Zbuild-std=core",
            "-Zjson-target-spec",
            "--target-dir",
            PATCH_TARGET_DIR,
            "--",
            "-D",
            "warnings",
        ]);
        checks.push(Check { name: format!("lint clippy patch {name}"), command: clippy });
    }
    Ok(checks)
}

fn manifest(patch: &str) -> std::path::PathBuf {
    workspace_root().join("patches").join(patch).join("Cargo.toml")
}
