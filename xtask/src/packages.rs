//! Makes sure the host tools exist: QEMU and gdb from Debian, rust-src from rustup.

use std::env;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use crate::{command, output_checked, run_checked};

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

/// Ensures the toolchain has rust-src, which -Zbuild-std needs. When the pinned
/// toolchain is already installed, cargo does not add the components that
/// rust-toolchain.toml lists; `rustup toolchain install` does.
pub fn require_rust_source() -> Result<()> {
    let library = sysroot()?.join("lib/rustlib/src/rust/library");
    if library.exists() {
        return Ok(());
    }
    eprintln!("{} is missing; installing the toolchain's components", library.display());
    run_checked(command("rustup").args(["toolchain", "install"]))?;
    if !sysroot()?.join("lib/rustlib/src/rust/library").exists() {
        bail!("rust-src is still missing after `rustup toolchain install`; try `rustup component add rust-src`");
    }
    Ok(())
}
