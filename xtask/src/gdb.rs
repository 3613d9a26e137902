//! `gdb`: gdb-multiarch on the kernel: boots it paused in QEMU, or attaches to the one `cargo xtask run` runs.
//!
//! Every QEMU that xtask starts for a user (`run`, `gdb`) offers its gdb stub
//! on the unix socket [`socket`], and the patch channel on its own socket, so
//! that `cargo xtask gdb --attach` and `cargo xtask patch load` reach it
//! whichever command booted it. `cargo xtask gdb` boots the kernel paused,
//! puts its console on a socket that `cargo xtask console` attaches a
//! terminal to (`console.rs`), and runs gdb until `boot_main`.
//!
//! Two locks keep users from tripping over each other: the xtask that boots
//! the kernel holds [`qemu::KERNEL_LOCK`] for QEMU's whole life (a second
//! kernel would take the sockets over), and every gdb session holds
//! [`GDB_LOCK`] (QEMU serves one gdb at a time; a second connection would
//! wait in the socket's queue and stop the kernel when the first detaches).
//! Nothing connects to the stub but gdb itself.

use std::io::ErrorKind;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::image::{self, Selection};
use crate::qemu::{self, Firmware, Guard, Lock, Machine, relative};
use crate::run::exit_code;
use crate::{announce, build, command, console, packages, patch_channel, workspace_root};

#[derive(clap::Args)]
pub struct Options {
    /// Attach to the kernel that `cargo xtask run` is running, through its gdb stub
    /// (target/kernel/gdb.sock); quitting gdb detaches and leaves it running.
    #[arg(long, conflicts_with_all = ["test", "firmware"])]
    pub attach: bool,
    /// Debug the test kernel running the in-kernel test NAME: a whole name as the
    /// test runner prints it, or a part of names as `cargo xtask test NAME` takes it.
    #[arg(long, value_name = "NAME")]
    pub test: Option<String>,
    /// Run the gdb commands in FILE without a prompt (gdb -batch -x FILE).
    #[arg(long, value_name = "FILE")]
    pub batch: Option<PathBuf>,
    /// Firmware that loads the kernel (not with --attach: the kernel is running already).
    #[arg(long, value_enum, default_value_t)]
    pub firmware: Firmware,
}

/// The gdb stub's socket, relative to the workspace root (or in the folder of
/// [`patch_channel::FOLDER_VARIABLE`], as [`socket`] says).
pub const SOCKET: &str = "target/kernel/gdb.sock";

/// The lock that a gdb session holds while it runs, whether it booted the kernel or attached to it.
pub const GDB_LOCK: &str = "target/kernel/gdb.lock";

/// The gdb stub's socket in use, relative to the workspace root.
pub fn socket() -> PathBuf {
    patch_channel::in_folder(SOCKET)
}

/// The QEMU options of a gdb stub on [`socket`] that does not wait for gdb.
pub fn stub_options() -> [String; 2] {
    ["-gdb".into(), format!("unix:{},server=on,wait=off", socket().display())]
}

/// Who runs a gdb session on the kernel now, if anyone (for `cargo xtask patch`'s messages).
pub fn session_holder() -> Option<qemu::Holder> {
    Lock::holder(&patch_channel::in_folder(GDB_LOCK)).ok().flatten()
}

/// gdb, the QEMU it debugs if xtask started it (killed when this is dropped),
/// and the locks held for as long as both run.
struct Session {
    gdb: Command,
    qemu: Option<Guard>,
    _locks: Vec<Lock>,
}

/// Takes the gdb session lock, or fails naming the gdb that holds it.
fn lock_the_debugger(command: &str) -> Result<Lock> {
    match Lock::take(&patch_channel::in_folder(GDB_LOCK), command)? {
        Ok(lock) => Ok(lock),
        Err(holder) => bail!(
            "gdb is attached to this kernel already ({}): QEMU serves one gdb at a time; use that one, \
             or quit it (or `detach` there) first",
            holder.describe()
        ),
    }
}

pub fn main(options: &Options) -> Result<ExitCode> {
    let batch = match &options.batch {
        Some(file) => Some(file.canonicalize().with_context(|| format!("gdb script {}", file.display()))?),
        None => None,
    };
    let interactive = batch.is_none();
    let session = if options.attach {
        attach(batch.as_deref())?
    } else {
        start(options.test.as_deref(), batch.as_deref(), options.firmware)?
    };
    if interactive && options.attach {
        eprintln!("(quitting gdb, or `detach`, leaves the kernel running)");
    } else if interactive {
        eprintln!(
            "(the kernel's console: `cargo xtask console` in another terminal, its output also in {}; \
             `cargo xtask patch load NAME` reaches it; quitting gdb stops the machine)",
            console::log().display()
        );
    }
    let Session { mut gdb, qemu, _locks } = session;
    announce(&gdb);
    let mut gdb = gdb.spawn().context("could not start gdb-multiarch")?;
    if interactive {
        // Ctrl-C is gdb's; xtask must outlive it to stop QEMU afterwards.
        ctrlc::set_handler(|| {}).context("could not catch Ctrl-C")?;
    }
    let status = gdb.wait()?;
    drop(qemu);
    if !interactive && !options.attach {
        eprintln!("console output: {}", console::log().display());
    }
    Ok(exit_code(status))
}

/// Builds the kernel (the test kernel with `test`), starts QEMU paused with
/// its gdb stub, its console on a socket and the patch channel, and returns
/// gdb, which runs it to `boot_main` before anything else.
fn start(test: Option<&str>, batch: Option<&Path>, firmware: Firmware) -> Result<Session> {
    packages::require("gdb-multiarch")?;
    // Before anything slow: a second kernel is refused at once.
    let mut kernel_lock = qemu::lock_the_kernel("cargo xtask gdb")?;
    let gdb_lock = lock_the_debugger("cargo xtask gdb")?;
    let image = build::main(&build::Options { test: test.is_some() })?;
    let data = std::fs::read(&image).with_context(|| format!("reading {}", image.display()))?;
    let append = match test {
        Some(query) => {
            let selection = image::select(&image::kernel_tests(&data)?, query)?;
            match &selection {
                Selection::One(name) => eprintln!("kernel test: {name}"),
                Selection::Several(names) => eprintln!(
                    "kernel tests whose names contain {query:?}, run one after another in this boot (an \
                     isolated one is only listed, as `ktest: isolated NAME`: give its whole name): {}",
                    names.join(", ")
                ),
            }
            selection.boot_argument(query)
        }
        None => String::new(),
    };
    let boot_main = image::local_entry(&data, "boot_main")?;
    kernel_lock.record_image("cargo xtask gdb", &image)?;
    for socket in [socket(), console::socket()] {
        match std::fs::remove_file(workspace_root().join(&socket)) {
            Err(error) if error.kind() != ErrorKind::NotFound => {
                return Err(error).with_context(|| format!("removing the old {}", socket.display()));
            }
            _ => {}
        }
    }
    let machine = Machine {
        append,
        patch_channel: Some(patch_channel::socket()),
        ..Machine::new(image.clone(), firmware).with(&["-S"]).with(&stub_options()).with(&console::qemu_options())
    };
    let mut qemu = machine.command()?;
    qemu.stdin(Stdio::null());
    if batch.is_none() {
        // Its own process group: Ctrl-C in gdb interrupts the kernel instead of
        // killing QEMU. (A batch run keeps it in its own group, so that whoever
        // kills that group, as the tests do when a session fails, kills QEMU too.)
        qemu.process_group(0);
    }
    let mut guard = Guard::spawn(&mut qemu)?;
    wait_for_socket(&workspace_root().join(socket()), &mut guard)?;
    let mut gdb = gdb_command(&image, &data);
    // Not at _start, where the CPU is still big-endian and the breakpoint is hit forever.
    gdb.args(["-ex", &format!("tbreak *{boot_main:#x}"), "-ex", "continue"]);
    add_batch(&mut gdb, batch);
    Ok(Session { gdb, qemu: Some(guard), _locks: vec![kernel_lock, gdb_lock] })
}

/// gdb for the kernel that `cargo xtask run` booted, through the stub it offers.
fn attach(batch: Option<&Path>) -> Result<Session> {
    packages::require("gdb-multiarch")?;
    // The lock of the xtask that booted it says whether a kernel runs, and
    // which: nothing but gdb connects to the stub (a connection stops the
    // machine, and one that waits behind another gdb's would stop it later).
    let Some(booted) = Lock::holder(&patch_channel::in_folder(qemu::KERNEL_LOCK))? else {
        bail!("no kernel to attach to: boot one with `cargo xtask run` (in another terminal) first");
    };
    let gdb_lock = lock_the_debugger("cargo xtask gdb --attach")?;
    let image = match &booted.image {
        Some(image) => workspace_root().join(image),
        None => build::image(false),
    };
    if let Some(booted_hash) = &booted.hash
        && qemu::content_hash(&image).ok().as_ref() != Some(booted_hash)
    {
        eprintln!(
            "warning: {} is not the kernel that booted ({}): it was rebuilt since with changes, so its symbols \
             may not match the running code",
            relative(&image).display(),
            booted.describe()
        );
    }
    let data = std::fs::read(&image).with_context(|| format!("reading {}", image.display()))?;
    let mut gdb = gdb_command(&image, &data);
    add_batch(&mut gdb, batch);
    Ok(Session { gdb, qemu: None, _locks: vec![gdb_lock] })
}

/// The gdb convenience variable that tells gdb/kernel.py where to break for
/// module events: the ELFv2 local entry of `klp_debug_module_event`, where
/// the kernel's calls enter it.
const MODULE_EVENT_VARIABLE: &str = "$klp_module_event";

/// gdb-multiarch connected to [`socket`] with the kernel's symbols and gdb/kernel.py;
/// `data` is the contents of `image`.
fn gdb_command(image: &Path, data: &[u8]) -> Command {
    let mut gdb = command("gdb-multiarch");
    gdb.args(["-q", "-ex", "set pagination off"]);
    // Pointer values without `<symbol+offset>`: gdb names them from the ELF
    // symbol table, whose v0-demangled names carry crate hashes
    // (`<boot[414b8c07f2a64c9c]::CPU_AREAS+160>`), e.g. in the frame it
    // prints when it attaches to a CPU stopped with such an argument.
    // Functions in frames are named from DWARF, without hashes.
    gdb.args(["-ex", "set print symbol off"]);
    gdb.args(["-ex", &format!("file {}", relative(image).display())]);
    gdb.args(["-ex", &format!("target remote {}", socket().display())]);
    if let Ok(entry) = image::local_entry(data, "klp_debug_module_event") {
        gdb.args(["-ex", &format!("set {MODULE_EVENT_VARIABLE} = {entry:#x}")]);
    }
    if workspace_root().join("gdb/kernel.py").exists() {
        gdb.args(["-x", "gdb/kernel.py"]);
    }
    gdb
}

fn add_batch(gdb: &mut Command, batch: Option<&Path>) {
    if let Some(file) = batch {
        gdb.arg("-batch").arg("-x").arg(file);
    }
}

/// Waits until QEMU has made the socket `path` (without connecting to it: a
/// connection to the gdb stub stops the machine).
fn wait_for_socket(path: &Path, qemu: &mut Guard) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(status) = qemu.child().try_wait()? {
            bail!("QEMU exited before gdb could attach: {status}");
        }
        if std::fs::metadata(path).is_ok_and(|metadata| metadata.file_type().is_socket()) {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(20));
    }
    bail!("QEMU did not open its gdb stub at {} within 10 s", relative(path).display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stub_is_a_unix_socket_that_does_not_wait_for_gdb() {
        assert_eq!(stub_options().join(" "), "-gdb unix:target/kernel/gdb.sock,server=on,wait=off");
    }

    #[test]
    fn gdb_connects_to_the_socket_with_symbols_and_the_script() {
        let gdb = crate::display(&gdb_command(&workspace_root().join("target/kernel/kernel.elf"), &[]));
        assert!(
            gdb.starts_with(
                "gdb-multiarch -q -ex 'set pagination off' -ex 'set print symbol off' \
                 -ex 'file target/kernel/kernel.elf' -ex 'target remote target/kernel/gdb.sock'"
            ),
            "{gdb}"
        );
    }
}
