//! Makes sure the host tools exist: QEMU and gdb from Debian, the pinned toolchain's components and targets from rustup.

use std::env;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::{command, output_checked, run_checked, workspace_root};

/// The Debian packages that provide qemu-system-ppc64 and gdb-multiarch.
const PACKAGES: [&str; 2] = ["qemu-system-ppc", "gdb-multiarch"];

/// The full path of `program` if it is an executable file on PATH.
pub fn find_program(program: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path).map(|directory| directory.join(program)).find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    path.metadata().is_ok_and(|metadata| metadata.is_file() && metadata.permissions().mode() & 0o111 != 0)
}

/// Ensures `program` (qemu-system-ppc64 or gdb-multiarch) is on PATH, installing
/// the packages with apt-get when running as root on Debian.
pub fn require(program: &str) -> Result<()> {
    if find_program(program).is_some() {
        return Ok(());
    }
    let root = output_checked(command("id").arg("-u")).is_ok_and(|id| id == "0");
    if !root || !Path::new("/etc/debian_version").exists() {
        bail!(
            "{program} is missing; install it with:\n    sudo apt-get install -y --no-install-recommends {}",
            PACKAGES.join(" ")
        );
    }
    eprintln!("{program} is missing; installing {}", PACKAGES.join(" "));
    run_checked(command("apt-get").arg("update"))?;
    run_checked(
        command("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "--no-install-recommends"])
            .args(PACKAGES),
    )?;
    if find_program(program).is_none() {
        bail!("{program} is still not on PATH after installing {}", PACKAGES.join(" "));
    }
    Ok(())
}

/// The active toolchain's sysroot (the one rust-toolchain.toml selects).
pub fn sysroot() -> Result<PathBuf> {
    Ok(PathBuf::from(output_checked(command("rustc").args(["--print", "sysroot"]))?))
}

/// What rust-toolchain.toml pins: the channel and the components and targets it lists.
#[derive(Debug, PartialEq)]
pub struct PinnedToolchain {
    pub channel: String,
    pub components: Vec<String>,
    pub targets: Vec<String>,
}

impl PinnedToolchain {
    /// Reads the `[toolchain]` table of a rust-toolchain.toml.
    pub fn parse(text: &str) -> Result<PinnedToolchain> {
        let table: toml::Table = text.parse().context("rust-toolchain.toml is not valid TOML")?;
        let toolchain = table
            .get("toolchain")
            .and_then(|value| value.as_table())
            .context("rust-toolchain.toml has no [toolchain]")?;
        let strings = |key: &str| -> Result<Vec<String>> {
            match toolchain.get(key) {
                None => Ok(Vec::new()),
                Some(value) => value
                    .as_array()
                    .with_context(|| format!("rust-toolchain.toml: `{key}` is not a list"))?
                    .iter()
                    .map(|item| {
                        item.as_str()
                            .map(str::to_string)
                            .with_context(|| format!("rust-toolchain.toml: `{key}` holds a non-string"))
                    })
                    .collect(),
            }
        };
        let channel =
            toolchain.get("channel").and_then(|value| value.as_str()).context("rust-toolchain.toml has no channel")?;
        Ok(PinnedToolchain {
            channel: channel.to_string(),
            components: strings("components")?,
            targets: strings("targets")?,
        })
    }

    /// The pinned toolchain of this workspace.
    pub fn of_workspace() -> Result<PinnedToolchain> {
        let path = workspace_root().join("rust-toolchain.toml");
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        PinnedToolchain::parse(&text)
    }
}

/// The entries of `wanted` missing from `installed`, as rustup lists them:
/// host-specific components carry the host triple (`llvm-tools-x86_64-unknown-linux-gnu`),
/// others do not (`rust-src`).
pub fn missing<'a>(wanted: &'a [String], installed: &str, host: &str) -> Vec<&'a str> {
    let installed: Vec<&str> = installed.lines().map(|line| line.split_whitespace().next().unwrap_or("")).collect();
    wanted
        .iter()
        .map(String::as_str)
        .filter(|name| !installed.iter().any(|have| have == name || *have == format!("{name}-{host}")))
        .collect()
}

/// Ensures the toolchain rust-toolchain.toml pins has every component and
/// target it lists, installing the missing ones with rustup and saying so.
///
/// `rustup toolchain install` alone is not enough: under `cargo xtask`,
/// rustup's cargo proxy sets RUSTUP_TOOLCHAIN for its children, so rustup run
/// from here installs the toolchain by name and never reads the file's
/// components and targets. Every rustup call below names the toolchain and
/// the components itself. Checked once per xtask process.
pub fn require_toolchain() -> Result<()> {
    static CHECKED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    if CHECKED.get().is_some() {
        return Ok(());
    }
    let pinned = PinnedToolchain::of_workspace()?;
    let channel = pinned.channel.as_str();
    let host = output_checked(command("rustc").arg("-vV"))?
        .lines()
        .find_map(|line| line.strip_prefix("host: ").map(str::to_string))
        .context("rustc -vV printed no host")?;
    let quiet = |arguments: &[&str]| -> Result<String> {
        let output = command("rustup").args(arguments).output().context("could not start rustup (is it on PATH?)")?;
        if !output.status.success() {
            bail!("rustup {} failed: {}", arguments.join(" "), String::from_utf8_lossy(&output.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    };
    let components = quiet(&["component", "list", "--toolchain", channel, "--installed"])?;
    let targets = quiet(&["target", "list", "--toolchain", channel, "--installed"])?;
    let missing_components = missing(&pinned.components, &components, &host);
    let missing_targets = missing(&pinned.targets, &targets, &host);
    if !missing_components.is_empty() {
        eprintln!(
            "toolchain {channel} lacks {} (listed in rust-toolchain.toml); installing",
            missing_components.join(", ")
        );
        run_checked(command("rustup").args(["component", "add", "--toolchain", channel]).args(&missing_components))?;
    }
    if !missing_targets.is_empty() {
        eprintln!(
            "toolchain {channel} lacks the target {} (listed in rust-toolchain.toml); installing",
            missing_targets.join(", ")
        );
        run_checked(command("rustup").args(["target", "add", "--toolchain", channel]).args(&missing_targets))?;
    }
    if !sysroot()?.join("lib/rustlib/src/rust/library").exists() {
        bail!(
            "rust-src is still missing from {}; install it with:\n    rustup component add --toolchain {channel} rust-src",
            sysroot()?.display()
        );
    }
    let _ = CHECKED.set(());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_pinned_toolchain() {
        let text = "[toolchain]\nchannel = \"1.95.0\"\ntargets = [\"powerpc64le-unknown-linux-gnu\"]\ncomponents = [\"rust-src\", \"llvm-tools\"]\nprofile = \"minimal\"\n";
        let pinned = PinnedToolchain::parse(text).unwrap();
        assert_eq!(pinned.channel, "1.95.0");
        assert_eq!(pinned.components, ["rust-src", "llvm-tools"]);
        assert_eq!(pinned.targets, ["powerpc64le-unknown-linux-gnu"]);
    }

    #[test]
    fn the_workspace_file_parses() {
        let pinned = PinnedToolchain::of_workspace().unwrap();
        assert!(pinned.components.iter().any(|component| component == "rust-src"));
    }

    #[test]
    fn finds_what_rustup_does_not_list() {
        let host = "x86_64-unknown-linux-gnu";
        let wanted = ["rust-src".to_string(), "llvm-tools".to_string(), "clippy".to_string()];
        let installed =
            "cargo-x86_64-unknown-linux-gnu\nclippy-x86_64-unknown-linux-gnu\nrustc-x86_64-unknown-linux-gnu\n";
        assert_eq!(missing(&wanted, installed, host), ["rust-src", "llvm-tools"]);
        let installed = "rust-src\nllvm-tools-x86_64-unknown-linux-gnu\nclippy-x86_64-unknown-linux-gnu\n";
        assert!(missing(&wanted, installed, host).is_empty());
        let targets = ["powerpc64le-unknown-linux-gnu".to_string()];
        assert_eq!(missing(&targets, "x86_64-unknown-linux-gnu\n", host), ["powerpc64le-unknown-linux-gnu"]);
    }
}
