//! `build`: compiles the kernel for its custom target and fills its symbol table, function notes and build id.

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result};

use crate::symbols::{self, Filled};
use crate::{build_id, command, function_notes, packages, patch, run_checked, signing, workspace_root};

#[derive(clap::Args)]
pub struct Options {
    /// Build the test kernel (feature ktest) into target/kernel/kernel-test.elf.
    #[arg(long)]
    pub test: bool,
}

/// The kernel crate's own compiler flags (`cargo rustc` passes them to that
/// crate alone, so boot, portable, core and alloc stay untraced); `patch
/// from-diff` compiles the kernel with these too, plus the large code model.
/// - `-Zpatchable-function-entry=2`: ftrace entry sites (two nops after each
///   function's local entry).
/// - `-Zmerge-functions=disabled`: identical functions stay distinct, so that
///   patching one never silently patches its twins (the livepatch hazard
///   GCC's -flive-patching guards against).
/// - `-enable-global-merge=false`: every static keeps a symbol of its own.
///   LLVM would otherwise merge a crate's statics into anonymous blocks
///   (`.L_MergedGlobals`), and a generated patch could not name the running
///   kernel's instance of a static (docs/modules.md, "From a diff").
pub const KERNEL_FLAGS: [&str; 3] =
    ["-Zpatchable-function-entry=2", "-Zmerge-functions=disabled", "-Cllvm-args=-enable-global-merge=false"];

/// Where cargo leaves the linked kernel (its own target dir, so that host builds never wait on it).
const TARGET_DIR: &str = "target/kernel";
const LINKED: &str = "target/kernel/ppc64le-kernel/release/kernel";

/// The kernel image that QEMU boots.
pub fn image(test: bool) -> PathBuf {
    workspace_root().join(TARGET_DIR).join(if test { "kernel-test.elf" } else { "kernel.elf" })
}

/// `cargo SUBCOMMAND` for the kernel crate on its own target (rebuilding core
/// and alloc) into `target_directory`; with `test`, the ktest feature and the
/// sample modules' folder, which kernel/build.rs embeds. Shared by the build
/// and by clippy, so that both see the same code.
pub fn kernel_cargo(subcommand: &str, test: bool, target_directory: &str) -> Command {
    let mut cargo = command("cargo");
    cargo.env("KLP_PATCH_PUBLIC_KEY", signing::public_key_path());
    cargo.env("RUSTC_BOOTSTRAP", "1").args([
        subcommand,
        "--release",
        "-p",
        "kernel",
        "--bin",
        "kernel",
        "--target",
        "kernel/ppc64le-kernel.json",
        "-Zbuild-std=core,alloc,compiler_builtins",
        "-Zbuild-std-features=compiler-builtins-mem",
        "-Zjson-target-spec",
        "--target-dir",
        target_directory,
    ]);
    if test {
        cargo.env("KLP_TEST_MODULES_DIR", workspace_root().join(patch::TARGET_DIR));
        cargo.args(["--features", "ktest"]);
    }
    cargo
}

/// Builds the kernel and returns the path of the image with its symbol table filled.
pub fn main(options: &Options) -> Result<PathBuf> {
    packages::require_toolchain()?;
    // The kernel embeds the public key that patch modules must be signed with
    // (kernel/build.rs reads it from KLP_PATCH_PUBLIC_KEY); made on first use.
    signing::ensure_key_pair()?;
    if options.test {
        // The in-kernel tests load the signed sample modules, which kernel/build.rs
        // copies from KLP_TEST_MODULES_DIR into the build.
        patch::build_all()?;
    }
    let mut cargo = kernel_cargo("rustc", options.test, TARGET_DIR);
    cargo.arg("--").args(KERNEL_FLAGS);
    run_checked(&mut cargo)?;

    let linked = workspace_root().join(LINKED);
    let image = image(options.test);
    let mut data = fs::read(&linked).with_context(|| format!("reading {}", linked.display()))?;
    match symbols::fill(&mut data)? {
        Filled::Table { count, used, capacity } => {
            eprintln!("symbols: {count} functions, {used} of {capacity} bytes used in {}", symbols::SECTION)
        }
        Filled::NoSection => eprintln!("warning: the kernel has no {} section; symbol table skipped", symbols::SECTION),
    }
    match symbols::fill_klp(&mut data)? {
        Filled::Table { count, used, capacity } => eprintln!(
            "klp symbols: {count} functions and data objects, {used} of {capacity} bytes used in {}",
            symbols::KLP_SECTION
        ),
        Filled::NoSection => {
            eprintln!("warning: the kernel has no {} section; klp symbol table skipped", symbols::KLP_SECTION)
        }
    }
    let kernel = function_notes::Kernel::read(&data).context("reading the kernel's DWARF")?;
    match function_notes::fill(&mut data, &kernel)? {
        Filled::Table { count, used, capacity } => {
            eprintln!(
                "function notes: {count} functions, {used} of {capacity} bytes used in {}",
                function_notes::SECTION
            )
        }
        Filled::NoSection => {
            eprintln!("warning: the kernel has no {} section; function notes skipped", function_notes::SECTION)
        }
    }
    // Last: the build id covers everything loaded, the tables above included.
    let (commit, dirty) = build_id::source_commit();
    match build_id::fill(&mut data, &commit, dirty)? {
        Some(id) => eprintln!("build id: {id} (commit {commit}{})", if dirty { ", dirty" } else { "" }),
        None => eprintln!("warning: the kernel has no {} section; build id skipped", build_id::SECTION),
    }
    fs::write(&image, &data).with_context(|| format!("writing {}", image.display()))?;
    eprintln!("kernel: {}", image.display());
    Ok(image)
}
