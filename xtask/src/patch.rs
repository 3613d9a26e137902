//! `patch`: builds, signs, loads and unloads live patch modules (`patches/NAME`).
//!
//! A patch is a `no_std` library crate under `patches/` (see `patches/README.md`).
//! `patch build NAME` compiles it for the kernel's target like the kernel itself,
//! takes its one relocatable object, checks it (`patch_object`) and signs it
//! into `target/patches/NAME.klp` (`signing`). `patch load NAME` and `patch
//! unload NAME` talk to a kernel booted by `cargo xtask run` over its patch
//! channel (`patch_channel`), and `patch identify` asks that kernel for its
//! build id and source commit (`build_id`). `patch targets [GLOB]` lists what a patch may
//! replace safely (`function_notes`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::patch_object::{self, Inspection};
use crate::{announce, command, display, function_notes, packages, patch_channel, signing, workspace_root};

#[derive(clap::Args)]
pub struct Options {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(clap::Subcommand)]
pub enum Command {
    /// Builds and signs patches/NAME into target/patches/NAME.klp.
    Build {
        /// The patch (a folder under patches/).
        #[arg(required_unless_present = "all")]
        name: Option<String>,
        /// Build every patch under patches/.
        #[arg(long, conflicts_with = "name")]
        all: bool,
    },
    /// Builds patches/NAME if needed and loads it into the kernel that `cargo xtask run` (or `gdb`) booted.
    Load {
        /// The patch (a folder under patches/), or the path of a signed .klp file.
        name: String,
        /// Send the file NAME as it is, unchecked, so that the kernel's own signature
        /// and format checks decide (the module is named after the file).
        #[arg(long)]
        no_verify: bool,
        /// Seconds to wait for the kernel's reply (the next `patch` command reports
        /// what became of a request that timed out).
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// Lists the kernel functions a live patch can replace safely, with their signatures
    /// (from the kernel's ELF and DWARF): an ftrace site, #[livepatchable], inlined nowhere.
    Targets {
        /// Only the functions whose names match this glob (`*`, `?`).
        #[arg(default_value = "*")]
        glob: String,
        /// The test kernel's functions (target/kernel/kernel-test.elf) instead of the kernel's.
        #[arg(long)]
        test: bool,
    },
    /// Asks the kernel that `cargo xtask run` (or `gdb`) booted for its build id and source commit.
    Identify {
        /// Seconds to wait for the kernel's reply.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// Generates a signed patch module from a diff of the kernel's source (docs/modules.md, "From a diff").
    FromDiff(crate::from_diff::Options),
    /// Unloads the patch module NAME from the kernel that `cargo xtask run` (or `gdb`) booted.
    Unload {
        /// The module's name.
        name: String,
        /// Seconds to wait for the kernel's reply.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
}

/// Where patches are built, and where their signed modules end up.
pub const TARGET_DIR: &str = "target/patches";

/// The helper crate under patches/ that is not itself a patch.
pub const HELPER_CRATE: &str = "klp-patch";

pub fn main(options: &Options) -> Result<ExitCode> {
    match &options.command {
        Command::Build { name: Some(name), .. } => build(name).map(|_| ExitCode::SUCCESS),
        Command::Build { name: None, .. } => build_all().map(|_| ExitCode::SUCCESS),
        Command::Load { name, no_verify, timeout } => {
            let (module_name, module) = if *no_verify { unchecked_module(name)? } else { signed_module(name)? };
            let request = portable::channel::Message::Load { name: &module_name, module: &module };
            let unchecked = if *no_verify { ", sent unchecked" } else { "" };
            let what = format!("LOAD {module_name} ({} bytes{unchecked})", module.len());
            patch_channel::request(&request, &what, Duration::from_secs(*timeout))
        }
        Command::Targets { glob, test } => targets(glob, *test).map(|()| ExitCode::SUCCESS),
        Command::Identify { timeout } => {
            patch_channel::request(&portable::channel::Message::Identify, "IDENTIFY", Duration::from_secs(*timeout))
        }
        Command::FromDiff(options) => crate::from_diff::main(options),
        Command::Unload { name, timeout } => {
            let request = portable::channel::Message::Unload { name };
            patch_channel::request(&request, &format!("UNLOAD {name}"), Duration::from_secs(*timeout))
        }
    }
}

/// `patch targets GLOB`: builds the kernel (cargo skips what is fresh) and
/// prints the functions matching GLOB that a live patch can replace safely,
/// one signature a line on stdout; on stderr, which others match and why
/// they cannot be replaced.
fn targets(glob: &str, test: bool) -> Result<()> {
    let image = crate::build::main(&crate::build::Options { test })?;
    let data = fs::read(&image).with_context(|| format!("reading {}", image.display()))?;
    let kernel = function_notes::Kernel::read(&data).context("reading the kernel's DWARF")?;
    let targets = kernel.targets(glob);
    for target in &targets.replaceable {
        println!("{}", function_notes::describe(target));
    }
    for (name, holders) in &targets.inlined {
        eprintln!("not {name}: #[livepatchable] but inlined into {}", holders.join(", "));
    }
    eprintln!(
        "{} functions matching '{glob}' can be replaced safely; {} are inlined somewhere; {} more have an ftrace site \
         but are not #[livepatchable]",
        targets.replaceable.len(),
        targets.inlined.len(),
        targets.unmarked
    );
    Ok(())
}

/// Whether the crate of `manifest` is a loadable target module
/// (`[package.metadata.klp] kind = "module"`) rather than a patch.
pub fn is_target_module(manifest: &Path) -> Result<bool> {
    let text = fs::read_to_string(manifest).with_context(|| format!("reading {}", manifest.display()))?;
    let value: toml::Value = toml::from_str(&text).with_context(|| format!("parsing {}", manifest.display()))?;
    match value.get("package").and_then(|package| package.get("metadata")).and_then(|metadata| metadata.get("klp")) {
        None => Ok(false),
        Some(klp) => match klp.get("kind").and_then(toml::Value::as_str) {
            Some("module") => Ok(true),
            Some("patch") => Ok(false),
            other => bail!(
                "{}: [package.metadata.klp] kind must be \"module\" or \"patch\", not {other:?}",
                manifest.display()
            ),
        },
    }
}

/// Whether the crate of `manifest` is a test fixture the kernel must refuse
/// (`[package.metadata.klp] refused-on-purpose = true`): built and signed
/// even though the checks of `patch_object::inspect` fail.
fn refused_on_purpose(manifest: &Path) -> Result<bool> {
    let text = fs::read_to_string(manifest).with_context(|| format!("reading {}", manifest.display()))?;
    let value: toml::Value = toml::from_str(&text).with_context(|| format!("parsing {}", manifest.display()))?;
    Ok(value
        .get("package")
        .and_then(|package| package.get("metadata"))
        .and_then(|metadata| metadata.get("klp"))
        .and_then(|klp| klp.get("refused-on-purpose"))
        .and_then(toml::Value::as_bool)
        .unwrap_or(false))
}

/// The signed module file of patch `name`.
pub fn signed_path(name: &str) -> PathBuf {
    workspace_root().join(TARGET_DIR).join(format!("{name}.klp"))
}

/// The names of the patches under patches/, sorted.
pub fn names() -> Result<Vec<String>> {
    let directory = workspace_root().join("patches");
    let mut names = Vec::new();
    for entry in fs::read_dir(&directory).with_context(|| format!("reading {}", directory.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name != HELPER_CRATE && entry.path().join("Cargo.toml").is_file() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Builds every patch; returns their signed module files.
pub fn build_all() -> Result<Vec<PathBuf>> {
    names()?.iter().map(|name| build(name)).collect()
}

/// Builds, checks and signs patch `name`; returns `target/patches/NAME.klp`.
pub fn build(name: &str) -> Result<PathBuf> {
    let manifest = workspace_root().join("patches").join(name).join("Cargo.toml");
    if name == HELPER_CRATE || !manifest.is_file() {
        bail!("no patch {name:?}: the patches are {}", names()?.join(", "));
    }
    packages::require_toolchain()?;
    let pair = signing::ensure_key_pair()?;
    let module = is_target_module(&manifest)?;
    let rlib = compile(&manifest, module)?;
    let archive = fs::read(&rlib).with_context(|| format!("reading {}", rlib.display()))?;
    let object = patch_object::object_from_rlib(&archive).with_context(|| format!("in {}", rlib.display()))?;
    if refused_on_purpose(&manifest)? {
        // A fixture the kernel must refuse: what the checks say is shown, and it is signed all the same.
        if let Err(error) = patch_object::inspect(&object) {
            eprintln!("patch {name}: refused on purpose ({error:#}); signed all the same");
        }
        let signed = signing::sign(&object, &pair);
        let signed_path = signed_path(name);
        write_if_changed(&signed_path, &signed)?;
        return Ok(signed_path);
    }
    let inspection = patch_object::inspect(&object).with_context(|| format!("patch {name}"))?;
    if inspection.description.module.is_some() != module {
        bail!(
            "patches/{name}: its Cargo.toml says it is a {}, its description says otherwise \
             ([package.metadata.klp] kind = \"module\" goes with klp_module!, nothing with klp_patch!)",
            if module { "target module" } else { "patch" }
        );
    }
    if inspection.description.name != name {
        bail!("patches/{name} declares the module name {:?}: they must be the same", inspection.description.name);
    }
    let directory = workspace_root().join(TARGET_DIR);
    let object_path = directory.join(format!("{name}.o"));
    write_if_changed(&object_path, &object)?;
    let signed = signing::sign(&object, &pair);
    signing::verify(&signed, &pair.pk).context("the module just signed does not verify")?;
    let signed_path = signed_path(name);
    write_if_changed(&signed_path, &signed)?;
    report(name, &inspection, &object_path, &signed_path, signed.len());
    Ok(signed_path)
}

/// Writes `bytes` to `path` unless it holds them already: the test kernel
/// embeds the signed modules (kernel/build.rs watches them), and a rewrite
/// of the same bytes made every later build, each gdb session's among
/// them, compile the kernel again.
fn write_if_changed(path: &Path, bytes: &[u8]) -> Result<()> {
    if fs::read(path).is_ok_and(|existing| existing == bytes) {
        return Ok(());
    }
    fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// Compiles the patch crate of `manifest` for the kernel's target; returns its rlib.
///
/// Why the rlib: the library's one codegen unit is exactly the relocatable object
/// a module needs, and cargo keeps the rlib up to date. `--emit obj=PATH` would
/// give the same object, but cargo does not track that extra output: when the
/// crate is fresh, rustc does not run and a deleted object would not come back.
fn compile(manifest: &Path, module: bool) -> Result<PathBuf> {
    let mut cargo = command("cargo");
    cargo
        .env("RUSTC_BOOTSTRAP", "1")
        // One object per patch, no unwinding: whatever the patch's own profile says.
        .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "1")
        .env("CARGO_PROFILE_RELEASE_PANIC", "abort")
        .args(["rustc", "--release", "--lib", "--manifest-path"])
        .arg(manifest)
        .args([
            "--target",
            "kernel/ppc64le-kernel.json",
            "-Zbuild-std=core",
            "-Zjson-target-spec",
            "--target-dir",
            TARGET_DIR,
            "--message-format=json-render-diagnostics",
        ])
        .stderr(Stdio::inherit());
    if module {
        // A target module is compiled like the kernel (`build::main`): an
        // ftrace site (two nops after the local entry) in each of its
        // functions, which its loader registers and live patches redirect,
        // and identical functions kept apart. `cargo rustc` passes these to
        // the module's crate alone (not core, not klp-patch).
        cargo.args(["--", "-Zpatchable-function-entry=2", "-Zmerge-functions=disabled"]);
    }
    announce(&cargo);
    let output = cargo.output().with_context(|| format!("could not start {}", display(&cargo)))?;
    if !output.status.success() {
        bail!("{} failed with {}", display(&cargo), output.status);
    }
    let manifest = manifest.canonicalize()?;
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| message["reason"] == "compiler-artifact")
        .filter(|message| message["manifest_path"].as_str().is_some_and(|path| Path::new(path) == manifest))
        .flat_map(|message| message["filenames"].as_array().cloned().unwrap_or_default())
        .filter_map(|file| file.as_str().map(PathBuf::from))
        .find(|file| file.extension().is_some_and(|extension| extension == "rlib"))
        .with_context(|| format!("cargo reported no rlib for {}: is it a [lib] crate?", manifest.display()))
}

fn report(name: &str, inspection: &Inspection, object: &Path, signed: &Path, size: usize) {
    eprintln!("patch {name}: {} ({size} bytes, signed), object {}", relative(signed), relative(object));
    if let Some(module) = &inspection.description.module {
        let or_none = |name: &Option<String>| name.clone().unwrap_or_else(|| "(none)".to_string());
        eprintln!("    target module: init {}, exit {}", or_none(&module.init), or_none(&module.exit));
        eprintln!("    livepatchable: {}", module.livepatchable.join(", "));
    }
    for replacement in &inspection.description.replacements {
        let flag = if replacement.allow_inlined { " (allow_inlined)" } else { "" };
        let object = replacement.object.as_ref().map(|object| format!(" in {object}")).unwrap_or_default();
        eprintln!("    replaces {}{object} with {}{flag}", replacement.old_name, replacement.new_symbol);
    }
    let symbols = if inspection.undefined.is_empty() { "(none)".to_string() } else { inspection.undefined.join(", ") };
    eprintln!("    kernel symbols: {symbols}");
    let relocations: Vec<String> =
        inspection.relocations.iter().map(|(kind, count)| format!("{kind} x{count}")).collect();
    eprintln!("    relocations: {}", relocations.join(", "));
}

fn relative(path: &Path) -> String {
    crate::qemu::relative(path).display().to_string()
}

/// The module name (the file's stem) and bytes for `patch load --no-verify FILE`: the file as it is.
fn unchecked_module(file: &str) -> Result<(String, Vec<u8>)> {
    let path = Path::new(file);
    let bytes =
        fs::read(path).with_context(|| format!("reading {file} (--no-verify takes a file, not a patch name)"))?;
    let name = path.file_stem().map(|stem| stem.to_string_lossy().into_owned()).filter(|stem| !stem.is_empty());
    Ok((name.unwrap_or_else(|| "unnamed".into()), bytes))
}

/// The module name and signed bytes for `patch load NAME`: patches/NAME built
/// (cargo skips what is fresh), or NAME itself when it is a `.klp` file.
fn signed_module(name: &str) -> Result<(String, Vec<u8>)> {
    let path = if name.ends_with(".klp") && Path::new(name).is_file() { PathBuf::from(name) } else { build(name)? };
    let signed = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let public_key = signing::ensure_key_pair()?.pk;
    let object = signing::verify(&signed, &public_key)
        .with_context(|| format!("{} is not signed with {}", path.display(), signing::public_key_path().display()))?;
    let inspection = patch_object::inspect(object).with_context(|| format!("in {}", path.display()))?;
    Ok((inspection.description.name, signed))
}
