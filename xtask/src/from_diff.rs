//! `patch from-diff`: turns a diff of the kernel's source into a signed patch module for the running kernel.
//!
//! Steps (docs/modules.md, "From a diff"): find the target kernel (the
//! running one, matched by build id to an image built here, or an image);
//! take its recorded source commit as the base; set the source tree
//! `target/from-diff/tree` to it and check that the diff applies; compile
//! the kernel crate there twice, base and patched, with the kernel's own
//! flags plus `-C code-model=large`, to relocatable objects; compare them
//! function by function (`object_diff`); check what may be replaced
//! against the image (`ImageFacts`); write the module (`klp_module`), sign
//! it, write the report; with `--load`, send it over the patch channel.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use object::read::elf::{ElfFile64, Sym};
use object::{Endianness, Object, ObjectSymbol, elf};

use crate::klp_module;
use crate::object_diff::{self, Build, Reason};
use crate::{build, build_id, command, diff_dwarf, packages, patch, patch_channel, run_checked, signing};
use crate::{symbols, workspace_root};

#[derive(clap::Args)]
pub struct Options {
    /// The fix: a unified diff of the kernel's source (`git diff` output), paths relative to the workspace root.
    pub diff: PathBuf,
    /// The module's name (default: the diff's file name without `.diff`).
    #[arg(long)]
    pub name: Option<String>,
    /// The source the running kernel was built from (default: the commit recorded in its image).
    #[arg(long)]
    pub base: Option<String>,
    /// Send the module to the kernel that `cargo xtask run` booted (whose build id picks the image).
    #[arg(long)]
    pub load: bool,
    /// Without --load: generate for the test kernel (target/kernel/kernel-test.elf) instead of the kernel.
    #[arg(long)]
    pub test: bool,
    /// Seconds to wait for the kernel's replies.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
}

/// Where the source tree, the two objects and the build live.
const FOLDER: &str = "target/from-diff";

/// Names the cached base objects: change it when the flags of the compared builds change.
const FORMAT: &str = "large1";

/// The kernel a patch is generated for.
struct TargetKernel {
    image: PathBuf,
    data: Vec<u8>,
    id: String,
    commit: String,
    dirty: bool,
    test: bool,
}

pub fn main(options: &Options) -> Result<ExitCode> {
    let started = Instant::now();
    // The two builds need what `cargo xtask build` needs (rust-src for build-std).
    packages::require_toolchain()?;
    let name = match &options.name {
        Some(name) => name.clone(),
        None => options.diff.file_stem().context("the diff has no file name")?.to_string_lossy().into_owned(),
    };
    if name.is_empty() || !name.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_') {
        bail!("module name {name:?}: use letters, digits, '-' and '_' (or pass --name)");
    }
    let diff = fs::read_to_string(&options.diff).with_context(|| format!("reading {}", options.diff.display()))?;
    let diff_path = fs::canonicalize(&options.diff)?;
    let target = target_kernel(options)?;
    eprintln!(
        "from-diff: target kernel {} (build-id {} commit {}{})",
        relative(&target.image),
        target.id,
        target.commit,
        if target.dirty { "-dirty" } else { "" }
    );
    let base = base_commit(options.base.as_deref(), &target)?;
    check_paths(&diff)?;
    let folder = workspace_root().join(FOLDER);
    fs::create_dir_all(&folder)?;
    let tree = prepare_tree(&folder, &base, target.dirty)?;
    let applied = command("git").current_dir(&tree).args(["apply", "--check"]).arg(&diff_path).output()?;
    if !applied.status.success() {
        bail!(
            "{} does not apply to the base {} ({}): {}",
            options.diff.display(),
            short(&base),
            if target.dirty { "the kernel's commit plus the work tree's changes" } else { "the kernel's source" },
            String::from_utf8_lossy(&applied.stderr).trim()
        );
    }
    // The base object depends only on the kernel's source and flags: kept
    // per target kernel, so that the next fix for it builds once.
    let cached = folder.join(format!("base-{}{}-{FORMAT}.o", target.id, if target.test { "-test" } else { "" }));
    let build_started = Instant::now();
    let base_object = match fs::read(&cached) {
        Ok(object) => object,
        Err(_) => {
            let object = compile(&tree, target.test).context("compiling the base")?;
            fs::write(&cached, &object)?;
            object
        }
    };
    let base_seconds = build_started.elapsed().as_secs_f64();
    run_checked(command("git").current_dir(&tree).arg("apply").arg(&diff_path))?;
    let patched_started = Instant::now();
    let patched_object = compile(&tree, target.test);
    let patched_seconds = patched_started.elapsed().as_secs_f64();
    reset_tree(&tree, &base, target.dirty)?;
    let patched_object = patched_object.context("compiling the patched source")?;
    fs::write(folder.join("patched.o"), &patched_object)?;

    let analysis_started = Instant::now();
    let generated = generate(&name, &target, &base_object, &patched_object, &changed_lines(&diff))?;
    let analysis_seconds = analysis_started.elapsed().as_secs_f64();
    let pair = signing::ensure_key_pair()?;
    let signed = signing::sign(&generated.object, &pair);
    let directory = workspace_root().join(patch::TARGET_DIR);
    fs::create_dir_all(&directory)?;
    let module_path = patch::signed_path(&name);
    fs::write(directory.join(format!("{name}.o")), &generated.object)?;
    fs::write(&module_path, &signed)?;
    let report_path = directory.join(format!("{name}.report"));
    fs::write(&report_path, &generated.report)?;
    print!("{}", generated.report);
    eprintln!(
        "from-diff: {} ({} bytes signed; report {}) in {:.1} s (base build {base_seconds:.1} s, patched build \
         {patched_seconds:.1} s, analysis {analysis_seconds:.1} s)",
        relative(&module_path),
        signed.len(),
        relative(&report_path),
        started.elapsed().as_secs_f64()
    );
    if !options.load {
        return Ok(ExitCode::SUCCESS);
    }
    let request = portable::channel::Message::Load { name: &name, module: &signed };
    let what = format!("LOAD {name} ({} bytes, generated from {})", signed.len(), options.diff.display());
    let status = patch_channel::request(&request, &what, Duration::from_secs(options.timeout))?;
    eprintln!("from-diff: from the command to the kernel's reply: {:.1} s", started.elapsed().as_secs_f64());
    Ok(status)
}

/// The running kernel (with --load: asked over the channel, then found among
/// the images built here by its build id), or the image --test chooses.
fn target_kernel(options: &Options) -> Result<TargetKernel> {
    let running = if options.load {
        let (socket, pending) = (patch_channel::socket_path(), patch_channel::PendingFile::default_file());
        let mut channel = patch_channel::Channel::connect(&socket)?;
        let message = portable::channel::Message::Identify;
        let exchanged = patch_channel::exchange(
            &mut channel,
            &pending,
            &message,
            "IDENTIFY",
            Duration::from_secs(options.timeout),
            &mut |line| eprintln!("{line}"),
        )?;
        let id = portable::build_id::find_in(&exchanged.reply.message)
            .with_context(|| format!("the kernel's IDENTIFY reply names no build id: {}", exchanged.reply.message))?;
        Some(id.to_string())
    } else {
        None
    };
    let candidates = match (&running, options.test) {
        (Some(_), _) => vec![true, false],
        (None, test) => vec![test],
    };
    let mut seen = Vec::new();
    for test in candidates {
        let image = build::image(test);
        let Ok(data) = fs::read(&image) else { continue };
        let Some((id, commit, dirty)) = build_id::read(&data)? else { continue };
        let id = id.to_string();
        if running.as_ref().is_none_or(|running| *running == id) {
            return Ok(TargetKernel { image, data, id, commit, dirty, test });
        }
        seen.push(format!("{} is {id}", relative(&image)));
    }
    match running {
        Some(running) => bail!(
            "the running kernel (build-id {running}) is none of the images built here ({}): a patch can only be \
             generated for a kernel whose image and source are at hand; rebuild it (`cargo xtask run`)",
            if seen.is_empty() { "none".to_string() } else { seen.join(", ") }
        ),
        None => bail!(
            "no kernel image with a build id at {}: build it first (`cargo xtask build{}`)",
            relative(&build::image(options.test)),
            if options.test { " --test" } else { "" }
        ),
    }
}

/// The commit to apply the diff to: the kernel's recorded one; `--base` must name the same.
fn base_commit(base: Option<&str>, target: &TargetKernel) -> Result<String> {
    // A dirty build records `COMMIT+DIGEST` of the work tree's changes.
    let (recorded, changes) = match target.commit.split_once('+') {
        Some((commit, digest)) => (commit, Some(digest)),
        None => (target.commit.as_str(), None),
    };
    if recorded.is_empty() || recorded == "unknown" {
        bail!("the kernel image {} records no source commit", relative(&target.image));
    }
    let resolve = |revision: &str| -> Result<String> {
        let output =
            command("git").args(["rev-parse", "--verify", "--quiet"]).arg(format!("{revision}^{{commit}}")).output()?;
        if !output.status.success() {
            bail!("{revision} is not a commit of this repository");
        }
        Ok(String::from_utf8(output.stdout)?.trim().to_string())
    };
    let kernel =
        resolve(recorded).with_context(|| format!("the kernel's commit {recorded} is not in this repository"))?;
    if let Some(base) = base {
        let given = resolve(base).map_err(|_| {
            anyhow::anyhow!(
                "--base {base} is not the source of the target kernel {} (build-id {}, commit {}): it is not a \
                 commit of this repository (a shallow clone has only its own commits)",
                relative(&target.image),
                target.id,
                short(&kernel)
            )
        })?;
        if given != kernel {
            bail!(
                "--base {base} ({}) is not the source of the target kernel {} (build-id {}, commit {}): a patch \
                 generated against other source would not match the code it replaces",
                short(&given),
                relative(&target.image),
                target.id,
                short(&kernel)
            );
        }
    }
    if target.dirty {
        let head = resolve("HEAD")?;
        if head != kernel {
            bail!(
                "the target kernel was built from uncommitted changes on {} but HEAD is now {}: its source is gone; \
                 rebuild it",
                short(&kernel),
                short(&head)
            );
        }
        let now = build_id::work_tree_digest();
        if changes.is_none() || changes != now.as_deref() {
            bail!(
                "the target kernel was built from uncommitted changes (digest {}) and the work tree now holds others \
                 (digest {}): its source is gone; rebuild it (`cargo xtask build`) or commit and rebuild",
                changes.unwrap_or("not recorded"),
                now.as_deref().unwrap_or("none")
            );
        }
    }
    Ok(kernel)
}

/// Refuses a diff that changes anything but the kernel crate's Rust source.
fn check_paths(diff: &str) -> Result<()> {
    let mut files = BTreeSet::new();
    for line in diff.lines() {
        if let Some(rest) = line.strip_prefix("diff --git ") {
            for word in rest.split_whitespace() {
                if let Some(path) = word.strip_prefix("a/").or_else(|| word.strip_prefix("b/")) {
                    files.insert(path.to_string());
                }
            }
        } else if let Some(path) = line.strip_prefix("+++ b/").or_else(|| line.strip_prefix("--- a/")) {
            files.insert(path.trim().to_string());
        }
    }
    if files.is_empty() {
        bail!("the diff changes no file (expected `git diff` output)");
    }
    let outside: Vec<&String> =
        files.iter().filter(|path| !(path.starts_with("kernel/src/") && path.ends_with(".rs"))).collect();
    if outside.is_empty() {
        return Ok(());
    }
    let boot = outside.iter().any(|path| path.starts_with("boot/"));
    bail!(
        "the diff changes {}: only the kernel crate's Rust source (kernel/src/**.rs) can be live patched{}",
        outside.iter().map(|path| path.as_str()).collect::<Vec<_>>().join(", "),
        if boot {
            "; boot/ is boot code, which has run once and is gone by the time a patch could load"
        } else {
            " (boot code, other crates, the linker script and build files are fixed in the image)"
        }
    )
}

/// Sets `FOLDER/tree` (a git worktree) to `base` and, for a dirty kernel, the
/// work tree's changes; files cargo would see change only where they differ,
/// so the build stays warm.
fn prepare_tree(folder: &Path, base: &str, dirty: bool) -> Result<PathBuf> {
    let tree = folder.join("tree");
    if !tree.join(".git").exists() {
        let _ = fs::remove_dir_all(&tree);
        run_checked(command("git").args(["worktree", "prune"]))?;
        run_checked(command("git").args(["worktree", "add", "--detach", "--force"]).arg(&tree).arg(base))?;
    }
    reset_tree(&tree, base, dirty)?;
    Ok(tree)
}

/// Puts the tree back to `base` (plus the work tree's changes when `dirty`).
fn reset_tree(tree: &Path, base: &str, dirty: bool) -> Result<()> {
    run_checked(command("git").current_dir(tree).args(["checkout", "--quiet", "--detach", "--force", base]))?;
    run_checked(command("git").current_dir(tree).args(["clean", "-fdq"]))?;
    if dirty {
        let changes = command("git").args(["diff", "HEAD", "--binary", "--no-ext-diff", "--no-textconv"]).output()?;
        if !changes.status.success() {
            bail!("git diff HEAD failed: {}", String::from_utf8_lossy(&changes.stderr));
        }
        if !changes.stdout.is_empty() {
            let path = tree.parent().context("tree folder")?.join("work-tree-changes.diff");
            fs::write(&path, &changes.stdout)?;
            run_checked(command("git").current_dir(tree).arg("apply").arg(&path))?;
        }
        // Untracked files are part of the work tree the kernel was built from (the digest covers them).
        let untracked = command("git").args(["ls-files", "--others", "--exclude-standard", "-z"]).output()?;
        for path in untracked.stdout.split(|&byte| byte == 0).filter(|path| !path.is_empty()) {
            let path = String::from_utf8_lossy(path).into_owned();
            let target = tree.join(&path);
            if let Some(parent) = target.parent() {
                fs::create_dir_all(parent)?;
            }
            fs::copy(workspace_root().join(&path), &target).with_context(|| format!("copying untracked {path}"))?;
        }
    }
    Ok(())
}

/// Compiles the kernel crate in `tree` with the kernel's flags plus the large
/// code model, to one relocatable object; returns its bytes.
fn compile(tree: &Path, test: bool) -> Result<Vec<u8>> {
    let mut cargo = build::kernel_cargo("rustc", test, "target/kernel");
    cargo.current_dir(tree);
    cargo.arg("--").args(build::KERNEL_FLAGS).args(["-Ccode-model=large", "--emit=obj"]);
    let deps = tree.join("target/kernel/ppc64le-kernel/release/deps");
    // A failed build must not leave an older object looking current.
    for entry in fs::read_dir(&deps).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.file_name().is_some_and(|name| name.to_string_lossy().starts_with("kernel-"))
            && path.extension().is_some_and(|extension| extension == "o")
        {
            fs::remove_file(&path)?;
        }
    }
    run_checked(&mut cargo)?;
    let object = fs::read_dir(&deps)?
        .flatten()
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name().is_some_and(|name| name.to_string_lossy().starts_with("kernel-"))
                && path.extension().is_some_and(|extension| extension == "o")
        })
        .with_context(|| format!("no kernel-*.o in {}", deps.display()))?;
    fs::read(&object).with_context(|| format!("reading {}", object.display()))
}

/// The module object and its report.
pub struct Generated {
    pub object: Vec<u8>,
    pub report: String,
}

/// Compares the two builds, checks every change against the target kernel and writes the module.
fn generate(
    name: &str,
    target: &TargetKernel,
    base_bytes: &[u8],
    patched_bytes: &[u8],
    edits: &BTreeMap<String, Vec<u64>>,
) -> Result<Generated> {
    let base = Build::parse(base_bytes).context("the base object")?;
    let patched = Build::parse(patched_bytes).context("the patched object")?;
    let diff = object_diff::diff_builds(&base, &patched)?;
    if let Some(symbol) = diff.data_changed.first() {
        bail!(
            "static {} changed its initial value, size or type: a live patch cannot change data the running kernel \
             initialised long ago (its code keeps using the old layout and value); keep the static as it is and \
             keep new state in a shadow variable (klp_shadow_get_or_alloc, docs/livepatch.md \"Shadow variables\"){}",
            symbols::demangle(symbol),
            if diff.data_changed.len() > 1 {
                format!(
                    " (also changed: {})",
                    diff.data_changed[1..].iter().map(|s| symbols::demangle(s)).collect::<Vec<_>>().join(", ")
                )
            } else {
                String::new()
            }
        );
    }
    let mut layouts = diff_dwarf::layout_changes(base_bytes, patched_bytes)?;
    check_closures(&base, &mut layouts)?;
    if !layouts.is_empty() {
        bail!(
            "the diff changes the layout of {}: the running kernel's data of that type (statics, heap, stacks) keeps \
             the old layout, which old and new code would then read differently; keep the type as it is and put new \
             fields in a shadow variable (klp_shadow_get_or_alloc, docs/livepatch.md \"Shadow variables\")",
            layouts.iter().map(|change| change.description.as_str()).collect::<Vec<_>>().join("; ")
        );
    }
    check_renumbering(&base, &patched, &diff)?;
    let image = ImageFacts::read(&target.data)?;
    let why = Why::read(patched_bytes, edits)?;
    let mut replaced = BTreeSet::new();
    let mut new_code: BTreeSet<String> = diff.added.iter().cloned().collect();
    let mut lines = Vec::new();
    for changed in &diff.changed {
        let why = why.of(&changed.symbol, &changed.reasons);
        match image.function(&changed.symbol) {
            Some(address) if !image.sites.contains(&address) => bail!(
                "{} changed but has no ftrace site in the running kernel (a #[notrace] function, or assembly): \
                 it cannot be live patched",
                changed.name
            ),
            Some(address) => {
                replaced.insert(changed.symbol.clone());
                lines.push(format!("  replaced  {} ({why}) at {address:#x}", changed.name));
            }
            None if changed.symbol.starts_with('.') => {
                bail!("{} changed, and it is not a Rust function (assembly?): it cannot be live patched", changed.name)
            }
            None => {
                new_code.insert(changed.symbol.clone());
                lines.push(format!(
                    "  changed   {} ({why}); the running kernel has no copy of its own (inlined into its callers), \
                     copied where the patch calls it",
                    changed.name
                ));
            }
        }
    }
    if replaced.is_empty() {
        bail!(
            "the diff changes no function the running kernel has a copy of{}",
            if diff.changed.is_empty() && diff.added.is_empty() {
                " (the compiled code is the same)".to_string()
            } else {
                format!(
                    ": changed {:?}, added {:?}",
                    diff.changed.iter().map(|c| &c.name).collect::<Vec<_>>(),
                    diff.added
                )
            }
        );
    }
    check_inlined_everywhere(&diff, &image, &replaced)?;
    // The compiler changed how callers call these: their callers in the
    // running kernel do not pass what the source says (hardening issue).
    // Read from the compared builds and from the running kernel itself.
    let mut abi = diff_dwarf::abi_changed(base_bytes)?;
    abi.extend(diff_dwarf::abi_changed(patched_bytes)?);
    abi.extend(diff_dwarf::abi_changed(&target.data)?);
    if let Some(symbol) = replaced.iter().find(|symbol| abi.contains(*symbol)) {
        bail!(
            "{} changed, but the compiler changed its calling convention (DWARF DW_CC_nocall: an argument or its \
             result dropped, or a constant argument folded in), so its callers do not call it as its source says \
             and a replacement compiled from the source cannot be trusted to match them; change its callers \
             instead, or mark it #[livepatchable] in the next kernel",
            symbols::demangle(symbol)
        );
    }
    // Every holder of an inlined copy of a replaced function must be replaced too.
    let mut allow_inlined = BTreeSet::new();
    for symbol in &replaced {
        let address = image.function(symbol).expect("replaced functions are in the image");
        let holders = image.holders(address);
        if holders.is_empty() {
            continue;
        }
        let stale = image.not_replaced(holders, &replaced);
        if !stale.is_empty() {
            bail!(
                "{} is inlined into {} in the running kernel, whose code did not change in the compared builds: \
                 they would keep running the old code",
                symbols::demangle(symbol),
                stale.join(", ")
            );
        }
        allow_inlined.insert(symbol.clone());
    }
    let mut description = format!("klp-patch 1\nname {name}\nbuild-id {}\ntoc kernel\nabi-checked\n", target.id);
    for symbol in &replaced {
        let old = image.description_name(symbol)?;
        let flag = if allow_inlined.contains(symbol) { " allow_inlined" } else { "" };
        description.push_str(&format!("replace {old} {symbol}{flag}\n"));
    }
    let new_statics: BTreeSet<String> = diff.added_statics.iter().cloned().collect();
    let rules = klp_module::Rules { replaced: &replaced, new_code: &new_code, new_statics: &new_statics };
    let extracted = klp_module::extract(&patched, &rules, &image, &description)?;

    let mut report = format!(
        "patch {name} for kernel build-id {} (commit {}{})\n",
        target.id,
        target.commit,
        if target.dirty { "-dirty" } else { "" }
    );
    report.push_str("functions:\n");
    for line in lines {
        report.push_str(&line);
        report.push('\n');
    }
    for symbol in &diff.added {
        let taken = extracted.copied_functions.contains(symbol);
        report.push_str(&format!(
            "  added     {}{}\n",
            symbols::demangle(symbol),
            if taken { "" } else { " (not reached from a replaced function: left out)" }
        ));
    }
    for symbol in &extracted.copied_functions {
        if !new_code.contains(symbol) {
            report.push_str(&format!(
                "  copied    {} (unchanged; the running kernel has no copy of its own)\n",
                symbols::demangle(symbol)
            ));
        }
    }
    if !extracted.copied_statics.is_empty() {
        report.push_str("statics in the module:\n");
        for symbol in &extracted.copied_statics {
            let why = if new_statics.contains(symbol) { "new in the fix" } else { "read-only, copied" };
            report.push_str(&format!("  {} ({why})\n", symbols::demangle(symbol)));
        }
    }
    report.push_str(&format!("references to the running kernel ({}):\n", extracted.kernel_references.len()));
    for symbol in &extracted.kernel_references {
        report.push_str(&format!("  {}\n", symbols::demangle(symbol)));
    }
    report.push_str(&format!(
        "module: {} bytes of code and data, {} constants copied, object {} bytes\n",
        extracted.loaded_bytes,
        extracted.constants,
        extracted.object.len()
    ));
    Ok(Generated { object: extracted.object, report })
}

/// What the generator reads from the target kernel's image.
struct ImageFacts {
    /// The kernel's klp table (`.kernel_klp_symbols`: functions and data objects by ELF name), as the
    /// loader resolves `.klp.sym.vmlinux.NAME,POSITION` against it.
    klp_table: Vec<u8>,
    /// Function entries by mangled name (sized functions).
    functions: BTreeMap<String, u64>,
    /// Mangled name by function entry.
    names: BTreeMap<u64, String>,
    sites: BTreeSet<u64>,
    /// Function entry -> the entries of the functions holding an inlined copy.
    holders: BTreeMap<u64, Vec<u64>>,
    /// Functions with no copy of their own (ELF name) -> the entries of the functions holding theirs.
    inlined_everywhere: BTreeMap<String, Vec<u64>>,
}

impl ImageFacts {
    fn read(data: &[u8]) -> Result<ImageFacts> {
        let file = ElfFile64::<Endianness>::parse(data).context("the kernel image is not a 64-bit ELF file")?;
        let endian = file.endian();
        let mut functions = BTreeMap::new();
        let mut names = BTreeMap::new();
        for symbol in file.symbols() {
            let raw = symbol.elf_symbol();
            let kind = raw.st_type();
            if (kind != elf::STT_FUNC && kind != elf::STT_OBJECT) || raw.st_size(endian) == 0 {
                continue;
            }
            let name = symbol.name()?.to_string();
            if kind == elf::STT_FUNC {
                functions.insert(name.clone(), symbol.address());
                names.entry(symbol.address()).or_insert_with(|| name.clone());
            }
        }
        let sites: BTreeSet<u64> = symbols::section_words(data, "__patchable_function_entries")?.into_iter().collect();
        // Every inlined copy the kernel's DWARF records, by the inlined
        // function's ELF name, held in functions the image has (copies in
        // functions the linker dropped do not run): all of them, not only
        // the plain functions the embedded notes keep.
        let mut holders = BTreeMap::new();
        let mut inlined_everywhere: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for (symbol, callers) in crate::dwarf::read(data, &BTreeSet::new())?.inlined {
            let callers: Vec<u64> = callers.into_iter().filter(|caller| names.contains_key(caller)).collect();
            if callers.is_empty() {
                continue;
            }
            match functions.get(&symbol) {
                Some(&function) => {
                    holders.insert(function, callers);
                }
                None => {
                    inlined_everywhere.insert(symbol, callers);
                }
            }
        }
        let klp_table = symbols::klp_table(data)?;
        Ok(ImageFacts { klp_table, functions, names, sites, holders, inlined_everywhere })
    }

    fn function(&self, mangled: &str) -> Option<u64> {
        self.functions.get(mangled).copied()
    }

    fn mangled(&self, address: u64) -> Option<&String> {
        self.names.get(&address)
    }

    fn demangled(&self, address: u64) -> String {
        self.names.get(&address).map_or_else(|| format!("{address:#x}"), |name| symbols::demangle(name))
    }

    /// The names of the functions at `entries` that `replaced` (mangled) lacks.
    fn not_replaced(&self, entries: &[u64], replaced: &BTreeSet<String>) -> Vec<String> {
        entries
            .iter()
            .filter(|entry| !self.mangled(**entry).is_some_and(|mangled| replaced.contains(mangled)))
            .map(|entry| self.demangled(*entry))
            .collect()
    }

    fn holders(&self, address: u64) -> &[u64] {
        self.holders.get(&address).map_or(&[], Vec::as_slice)
    }

    /// The name a `replace` line gives function `mangled`: as the kernel's
    /// site table names it (demangled, no hash), `@N` when several functions
    /// with a site share that name (the Nth by address); its ELF name when
    /// the readable one has spaces (a trait method, `<T as Trait>::method`),
    /// which the kernel then finds through its klp table.
    fn description_name(&self, mangled: &str) -> Result<String> {
        let name = symbols::demangle(mangled);
        if name.chars().any(char::is_whitespace) {
            if !mangled.starts_with("_R") {
                bail!("{name}: a name with spaces and no Rust ELF name cannot be written in a patch description");
            }
            return Ok(mangled.to_string());
        }
        let address = self.function(mangled).context("not in the image")?;
        let same: Vec<u64> = self
            .sites
            .iter()
            .copied()
            .filter(|site| self.names.get(site).is_some_and(|other| symbols::demangle(other) == name))
            .collect();
        if same.len() <= 1 {
            return Ok(name);
        }
        let position = same.iter().position(|&site| site == address).context("a replaced function without a site")?;
        Ok(format!("{name}@{}", position + 1))
    }
}

impl klp_module::Kernel for ImageFacts {
    fn klp_symbol(&self, mangled: &str) -> Result<Option<String>> {
        let table = portable::symbols::SymbolTable::parse(&self.klp_table).context("the kernel's klp table")?;
        match table.klp_address(mangled, 0) {
            Ok(_) => Ok(Some(format!("{}{mangled},0", klp_module::KERNEL_SYMBOL_PREFIX))),
            Err(portable::symbols::KlpLookupError::Missing) => Ok(None),
            Err(error) => bail!("{}: {error:?} in the running kernel's symbols", symbols::demangle(mangled)),
        }
    }
}

fn short(commit: &str) -> &str {
    &commit[..commit.len().min(12)]
}

fn relative(path: &Path) -> String {
    path.strip_prefix(workspace_root()).unwrap_or(path).display().to_string()
}

/// The lines a diff adds or removes, per file (paths relative to the
/// workspace root, line numbers in the patched file; a removal counts at the
/// line that follows it).
fn changed_lines(diff: &str) -> BTreeMap<String, Vec<u64>> {
    let mut files: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut file = None;
    let mut line = 0;
    for text in diff.lines() {
        if let Some(path) = text.strip_prefix("+++ b/") {
            file = Some(path.trim().to_string());
        } else if text.starts_with("+++ ") || text.starts_with("--- ") {
            continue;
        } else if let Some(header) = text.strip_prefix("@@ ") {
            // @@ -a,b +c,d @@
            let start = header.split_whitespace().find_map(|word| word.strip_prefix('+'));
            line = start.and_then(|word| word.split(',').next()?.parse().ok()).unwrap_or(0);
        } else if let Some(file) = &file {
            match text.as_bytes().first() {
                Some(b'+') => {
                    files.entry(file.clone()).or_default().push(line);
                    line += 1;
                }
                Some(b'-') => files.entry(file.clone()).or_default().push(line),
                Some(b' ') | None => line += 1,
                _ => {}
            }
        }
    }
    files
}

/// Why each changed function changed, for the report: its own source, or a changed function inlined into it.
struct Why {
    /// Demangled names of the functions whose source lines the diff touches.
    edited: BTreeSet<String>,
    /// Mangled name -> its declaration (path relative to the tree, line).
    declarations: BTreeMap<String, (String, u64)>,
    /// Mangled name -> demangled names of what is inlined into it.
    inlined: BTreeMap<String, BTreeSet<String>>,
}

impl Why {
    fn read(patched: &[u8], edits: &BTreeMap<String, Vec<u64>>) -> Result<Why> {
        let tree = workspace_root().join(FOLDER).join("tree");
        let mut declarations = BTreeMap::new();
        for (symbol, (path, line)) in diff_dwarf::decl_lines(patched)? {
            let path = Path::new(&path).strip_prefix(&tree).map_or(path.clone(), |path| path.display().to_string());
            declarations.insert(symbol, (path, line));
        }
        // A function's lines: from its declaration to the next one in its file.
        let mut by_file: BTreeMap<&str, Vec<(u64, &str)>> = BTreeMap::new();
        for (symbol, (path, line)) in &declarations {
            by_file.entry(path.as_str()).or_default().push((*line, symbol.as_str()));
        }
        let mut edited = BTreeSet::new();
        for (path, functions) in &mut by_file {
            let Some(lines) = edits.get(*path) else { continue };
            functions.sort();
            for (index, &(start, symbol)) in functions.iter().enumerate() {
                let end =
                    functions[index + 1..].iter().map(|&(line, _)| line).find(|&line| line > start).unwrap_or(u64::MAX);
                if lines.iter().any(|&line| line >= start && line < end) {
                    edited.insert(symbols::demangle(symbol));
                }
            }
        }
        Ok(Why { edited, declarations, inlined: diff_dwarf::inlined_callees(patched)? })
    }

    fn of(&self, symbol: &str, reasons: &[Reason]) -> String {
        let code = match reasons {
            [Reason::Bytes] => "its instructions differ",
            [Reason::Relocations] => "what it calls or reads differs",
            _ => "its instructions and what it calls or reads differ",
        };
        let place = self.declarations.get(symbol).map(|(path, line)| format!(", {path}:{line}")).unwrap_or_default();
        if self.edited.contains(&symbols::demangle(symbol)) {
            return format!("its source changed{place}; {code}");
        }
        let inlined: Vec<&String> =
            self.inlined.get(symbol).into_iter().flatten().filter(|callee| self.edited.contains(*callee)).collect();
        if !inlined.is_empty() {
            let names = inlined.iter().map(|name| name.as_str()).collect::<Vec<_>>().join(", ");
            return format!("the changed {names} is inlined into it; {code}");
        }
        format!("{code}{place}")
    }
}

/// Refuses a change to the captures of a closure that may outlive the
/// function making it, and takes every closure's captures out of `layouts`.
///
/// A closure whose captures changed is safe while every such closure lives
/// and dies inside the function that makes it (a thread running that function
/// is not switched to the patch, so it never runs the new body on old
/// captures); not when it escapes as a trait object (a boxed callback, a
/// spawned thread's body), which the base build shows as a vtable (data)
/// pointing at the closure's code.
fn check_closures(base: &Build, layouts: &mut Vec<diff_dwarf::LayoutChange>) -> Result<()> {
    let escaping = escaping_closures(base)?;
    if let Some(change) =
        layouts.iter().find(|change| closure_keys(&change.name).iter().any(|key| escaping.contains(key)))
    {
        bail!(
            "{}: the captures of a closure that may outlive its caller changed (data points at its code: a \
             trait object, e.g. a boxed callback or a thread body); one made before the patch would run the new \
             body on the old captures; keep its captures as they are, or make the new behaviour a new function",
            change.description
        );
    }
    layouts.retain(|change| !change.name.contains("{closure_env#"));
    Ok(())
}

/// A changed function the running kernel inlined everywhere lives on in the
/// functions holding its copies: each must be replaced too.
fn check_inlined_everywhere(
    diff: &object_diff::ObjectDiff,
    image: &ImageFacts,
    replaced: &BTreeSet<String>,
) -> Result<()> {
    for changed in diff.changed.iter().filter(|changed| image.function(&changed.symbol).is_none()) {
        let holders = image.inlined_everywhere.get(&changed.symbol).map_or(&[][..], Vec::as_slice);
        let stale = image.not_replaced(holders, replaced);
        if !stale.is_empty() {
            bail!(
                "{} changed; the running kernel has no copy of its own but inlined it into {}, whose code did not \
                 change in the compared builds: they would keep running the old code",
                changed.name,
                stale.join(", ")
            );
        }
    }
    Ok(())
}

/// What identifies a closure in both naming schemes: `PARENT::{closure#N}`,
/// PARENT the last path segment before it without generic arguments. The
/// DWARF names a captures type `kernel::m::{impl#0}::method::{closure_env#0}`
/// (or `...{closure_env#0}<u32>` in a generic function), a symbol names the
/// closure `<kernel::m::Foo>::method::{closure#0}`; both give
/// `method::{closure#0}`. Two methods of one name in different impls share a
/// key: a change is then refused if either escapes (the safe side).
fn closure_key(name: &str, position: usize) -> Option<String> {
    let rest = &name[position..];
    let marker = if rest.starts_with("{closure_env#") { "{closure_env#" } else { "{closure#" };
    let number: String = rest[marker.len()..].chars().take_while(char::is_ascii_digit).collect();
    let mut before = name[..position].strip_suffix("::")?;
    // A generic parent's arguments as their own segment (`generic::<u32>`): dropped.
    if before.ends_with('>') {
        let mut depth = 0;
        for (index, byte) in before.bytes().enumerate().rev() {
            match byte {
                b'>' => depth += 1,
                b'<' => {
                    depth -= 1;
                    if depth == 0 {
                        if let Some(parent) = before[..index].strip_suffix("::") {
                            before = parent;
                        }
                        break;
                    }
                }
                _ => {}
            }
        }
    }
    // The parent segment: after the last `::` outside generic arguments, without its own `<...>`.
    let mut depth = 0;
    let mut start = 0;
    let bytes = before.as_bytes();
    for index in (0..bytes.len()).rev() {
        match bytes[index] {
            b'>' => depth += 1,
            b'<' if depth > 0 => depth -= 1,
            b':' if depth == 0 && index > 0 && bytes[index - 1] == b':' => {
                start = index + 1;
                break;
            }
            b'<' | b' ' if depth == 0 => {
                start = index + 1;
                break;
            }
            _ => {}
        }
    }
    let parent = &before[start..];
    let parent = parent.split('<').next().unwrap_or(parent);
    Some(format!("{parent}::{{closure#{number}}}"))
}

/// The closure keys ([`closure_key`]) of every closure `name` mentions.
fn closure_keys(name: &str) -> Vec<String> {
    let mut keys = Vec::new();
    for marker in ["{closure#", "{closure_env#"] {
        keys.extend(name.match_indices(marker).filter_map(|(position, _)| closure_key(name, position)));
    }
    keys
}

/// The closures (their [`closure_key`]s) whose code a data section of
/// `build` points at: a vtable's call shims, so they may outlive their caller.
fn escaping_closures(build: &Build) -> Result<BTreeSet<String>> {
    use object::{ObjectSection, RelocationTarget, SectionKind};
    let mut closures = BTreeSet::new();
    for section in build.file.sections() {
        if matches!(section.kind(), SectionKind::Text | SectionKind::Debug | SectionKind::Other | SectionKind::Metadata)
            || section.name().is_ok_and(|name| name.starts_with(".debug") || name == ".toc")
        {
            continue;
        }
        for (_, relocation) in section.relocations() {
            // Functions are mostly named through their section's symbol here.
            let name = match build.target_section(relocation.target())? {
                Some(section) => object_diff::function_symbol(&build.file, section).unwrap_or_default(),
                None => match relocation.target() {
                    RelocationTarget::Symbol(index) => build
                        .file
                        .symbol_by_index(index)
                        .ok()
                        .and_then(|symbol| symbol.name().ok())
                        .unwrap_or("")
                        .to_string(),
                    _ => continue,
                },
            };
            let name = symbols::demangle(&name);
            // `<PATH::{closure#N} as core::ops::FnOnce<..>>::call_once`, or the closure itself.
            closures.extend(closure_keys(&name));
        }
    }
    Ok(closures)
}

/// An item's name as the source has it, without what tells same-named items
/// apart: v0 symbols count same-named statics of one function (`s_`) and
/// closures (`{closure#N}`) in definition order, and demangling shows the
/// first as one name.
fn source_name(symbol: &str) -> String {
    let name = symbols::demangle(symbol);
    let mut plain = String::with_capacity(name.len());
    let mut rest = name.as_str();
    while let Some(start) = rest.find("{closure#") {
        plain.push_str(&rest[..start]);
        plain.push_str("{closure}");
        rest = rest[start..].split_once('}').map_or("", |(_, after)| after);
    }
    plain.push_str(rest);
    plain
}

/// Refuses a fix that adds or removes a static or closure beside a
/// same-named one: the compiler tells such items apart by their order, so
/// an added one can take the old one's symbol, or a removal shift the ones
/// after it onto their predecessors' symbols, and the generator would bind
/// them to the wrong running instance (and put the right one in a copy).
fn check_renumbering(base: &Build, patched: &Build, diff: &object_diff::ObjectDiff) -> Result<()> {
    let names = |build: &Build| -> BTreeSet<String> {
        build.functions.keys().chain(build.statics.keys()).map(|symbol| source_name(symbol)).collect()
    };
    let (existing, remaining) = (names(base), names(patched));
    let added = diff.added.iter().chain(&diff.added_statics);
    if let Some(symbol) = added.into_iter().find(|symbol| existing.contains(&source_name(symbol))) {
        bail!(
            "the fix adds {} beside another item of that name: the compiler numbers same-named statics and \
             closures of one function in the order they are written, so the new one may take the symbol of the \
             running kernel's (and be bound to its instance); give the new one a name of its own",
            source_name(symbol)
        );
    }
    let removed_statics = base.statics.keys().filter(|symbol| !patched.statics.contains_key(*symbol));
    if let Some(symbol) =
        diff.removed.iter().chain(removed_statics).find(|symbol| remaining.contains(&source_name(symbol)))
    {
        bail!(
            "the fix removes one of several items named {}: the compiler numbers same-named statics and closures \
             of one function in the order they are written, so the ones after it would take its symbol (and be \
             bound to its running instance); keep it, or rename the others",
            source_name(symbol)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture_object::compile_with;

    /// Compiles both with v0 symbols (as the kernel is) and checks the renumbering rule.
    fn renumbering(test: &str, base: &str, patched: &str) -> Result<()> {
        let options = ["-C", "opt-level=2", "-C", "symbol-mangling-version=v0"];
        let base_bytes = compile_with(test, "base", base, "fixture", &options);
        let patched_bytes = compile_with(test, "patched", patched, "fixture", &options);
        let (base, patched) = (Build::parse(&base_bytes)?, Build::parse(&patched_bytes)?);
        check_renumbering(&base, &patched, &object_diff::diff_builds(&base, &patched)?)
    }

    const COUNT: &str = r#"#![no_std]
use core::sync::atomic::{AtomicU64, Ordering};
#[inline(never)]
#[unsafe(no_mangle)]
pub fn count(x: u64) -> u64 {
    static HITS: AtomicU64 = AtomicU64::new(0);
    HITS.fetch_add(x, Ordering::Relaxed)
}
"#;

    #[test]
    fn from_diff_refuses_a_static_that_takes_a_same_named_ones_place() {
        // A second `static HITS`, written first: it takes the old one's symbol.
        let patched = COUNT.replace(
            "    static HITS",
            "    { static HITS: AtomicU64 = AtomicU64::new(7); HITS.fetch_add(1, Ordering::Relaxed); }\n    static HITS",
        );
        let error = format!("{:#}", renumbering("renumbered", COUNT, &patched).unwrap_err());
        assert!(error.contains("fixture::count::HITS") && error.contains("name of its own"), "{error}");
        // Taken away again: the one written second would move onto the first one's symbol.
        let error = format!("{:#}", renumbering("renumbered-removed", &patched, COUNT).unwrap_err());
        assert!(error.contains("removes one of several items named fixture::count::HITS"), "{error}");
        // Named apart, it is simply new.
        let renamed = patched.replacen(
            "static HITS: AtomicU64 = AtomicU64::new(7); HITS",
            "static FIRST: AtomicU64 = AtomicU64::new(7); FIRST",
            1,
        );
        renumbering("renamed", COUNT, &renamed).unwrap();
    }

    const CLOSURES: &str = r#"#![no_std]
#[inline(never)]
fn run(f: &dyn Fn(u64) -> u64) -> u64 { f(3) }
#[inline(never)]
#[unsafe(no_mangle)]
pub fn escaping(k: u64) -> u64 { run(core::hint::black_box(&|y| y + k)) }
#[inline(never)]
#[unsafe(no_mangle)]
pub fn transient(k: u64, n: u64) -> u64 { (0..n).map(|y| y ^ k).fold(0, |a, b| a.wrapping_add(b)) }
pub struct Holder(pub u64);
impl Holder {
    #[inline(never)]
    pub fn method_escaping(&self, k: u64) -> u64 { run(core::hint::black_box(&|y| y * k + 1)) }
}
"#;

    /// The closure rule on two builds: `Ok` or the refusal.
    fn closures(test: &str, patched: &str) -> Result<()> {
        let options = ["-C", "opt-level=2", "-C", "symbol-mangling-version=v0", "-C", "debuginfo=2"];
        let base_bytes = compile_with(test, "base", CLOSURES, "kernel", &options);
        let patched_bytes = compile_with(test, "patched", patched, "kernel", &options);
        let mut layouts = diff_dwarf::layout_changes(&base_bytes, &patched_bytes)?;
        assert!(layouts.iter().any(|change| change.name.contains("{closure_env#")), "captures changed: {layouts:?}");
        check_closures(&Build::parse(&base_bytes)?, &mut layouts)?;
        assert!(layouts.is_empty(), "{layouts:?}");
        Ok(())
    }

    #[test]
    fn from_diff_refuses_new_captures_only_for_closures_that_escape() {
        // Behind `&dyn Fn`: a vtable points at it, so it may outlive `escaping`.
        let escaping = CLOSURES.replace(
            "run(core::hint::black_box(&|y| y + k))",
            "let j = k.rotate_left(3); run(core::hint::black_box(&|y| y + k + j))",
        );
        let error = format!("{:#}", closures("closure-escaping", &escaping).unwrap_err());
        assert!(error.contains("kernel::escaping::{closure_env#0}") && error.contains("outlive"), "{error}");
        // The same in a method: DWARF and symbols name it differently, the rule must still see it.
        let method = CLOSURES.replace(
            "pub fn method_escaping(&self, k: u64) -> u64 { run(core::hint::black_box(&|y| y * k + 1)) }",
            "pub fn method_escaping(&self, k: u64) -> u64 { let j = self.0; run(core::hint::black_box(&|y| y * k + j)) }",
        );
        let error = format!("{:#}", closures("closure-method", &method).unwrap_err());
        assert!(error.contains("method_escaping::{closure_env#0}") && error.contains("outlive"), "{error}");
        // A closure made and used inside `transient`: its captures may change.
        let transient = CLOSURES.replace("map(|y| y ^ k)", "map(|y| y ^ k ^ n)");
        closures("closure-transient", &transient).unwrap();
    }

    #[test]
    fn from_diff_refuses_a_change_inlined_into_a_caller_it_does_not_replace() {
        let image = ImageFacts {
            klp_table: Vec::new(),
            functions: BTreeMap::from([("_Rcaller".to_string(), 0x100), ("_Rother".to_string(), 0x200)]),
            names: BTreeMap::from([(0x100, "_Rcaller".to_string()), (0x200, "_Rother".to_string())]),
            sites: BTreeSet::from([0x100, 0x200]),
            holders: BTreeMap::new(),
            inlined_everywhere: BTreeMap::from([("_Rscale".to_string(), vec![0x100, 0x200])]),
        };
        let changed = object_diff::Changed {
            name: "kernel::scale".to_string(),
            symbol: "_Rscale".to_string(),
            reasons: vec![Reason::Bytes],
        };
        let diff = object_diff::ObjectDiff { changed: vec![changed], ..Default::default() };
        // Both holders replaced: fine.
        let both = BTreeSet::from(["_Rcaller".to_string(), "_Rother".to_string()]);
        check_inlined_everywhere(&diff, &image, &both).unwrap();
        // One left running its copy of the old code: refused, naming it.
        let one = BTreeSet::from(["_Rcaller".to_string()]);
        let error = check_inlined_everywhere(&diff, &image, &one).unwrap_err().to_string();
        assert!(error.contains("kernel::scale") && error.contains("_Rother") && !error.contains("_Rcaller"), "{error}");
    }

    #[test]
    fn from_diff_closure_keys_match_across_dwarf_and_symbol_names() {
        let same =
            |dwarf: &str, symbol: &str| assert_eq!(closure_keys(dwarf), closure_keys(symbol), "{dwarf} / {symbol}");
        same(
            "kernel::m::{impl#0}::method::{closure_env#0}",
            "<kernel::m::Foo as core::ops::FnOnce<()>>::method::{closure#0}",
        );
        same("kernel::m::{impl#0}::method::{closure_env#0}", "<kernel::m::Foo>::method::{closure#0}");
        same("kernel::m::generic::{closure_env#2}<u32>", "kernel::m::generic::<u32>::{closure#2}");
        same(
            "kernel::f::{closure_env#1}",
            "<kernel::f::{closure#1} as core::ops::function::FnOnce<(u64,)>>::call_once",
        );
        assert_ne!(closure_keys("kernel::f::{closure_env#1}"), closure_keys("kernel::f::{closure#0}"));
        assert_ne!(closure_keys("kernel::f::{closure_env#0}"), closure_keys("kernel::g::{closure#0}"));
    }

    #[test]
    fn from_diff_source_names_drop_closure_numbers() {
        assert_eq!(source_name("plain"), "plain");
        assert_eq!(
            source_name("_RNCNvCs1234_7fixture5counts0_0B3_"),
            source_name("_RNCNvCs1234_7fixture5count0B3_"),
            "{} / {}",
            symbols::demangle("_RNCNvCs1234_7fixture5counts0_0B3_"),
            symbols::demangle("_RNCNvCs1234_7fixture5count0B3_")
        );
    }

    #[test]
    fn from_diff_changed_lines_are_those_added_and_removed() {
        let diff = "--- a/kernel/src/x.rs\n+++ b/kernel/src/x.rs\n@@ -10,4 +10,4 @@\n a\n-b\n+c\n d\n@@ -30,2 +30,3 @@\n e\n+f\n g\n";
        assert_eq!(changed_lines(diff), BTreeMap::from([("kernel/src/x.rs".to_string(), vec![11, 11, 31])]));
    }
}
