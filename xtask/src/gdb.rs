//! `gdb`: gdb-multiarch on the kernel: boots it paused in QEMU, or attaches to the one `cargo xtask run` runs.
//!
//! Every QEMU that xtask starts for a user (`run`, `gdb`) offers its gdb stub
//! on the unix socket [`SOCKET`], and the patch channel on its own socket, so
//! that `cargo xtask gdb --attach` and `cargo xtask patch load` reach it
//! whichever command booted it. `cargo xtask gdb` boots the kernel paused,
//! puts its console on a socket that `cargo xtask console` attaches a
//! terminal to (`console.rs`), and runs gdb until `boot_main`.

use std::io::ErrorKind;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::image::{self, Selection};
use crate::qemu::{Firmware, Guard, Machine, relative};
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

/// The gdb stub's socket, relative to the workspace root.
pub const SOCKET: &str = "target/kernel/gdb.sock";

/// The QEMU options of a gdb stub on [`SOCKET`] that does not wait for gdb.
pub fn stub_options() -> [String; 2] {
    ["-gdb".into(), format!("unix:{SOCKET},server=on,wait=off")]
}

/// gdb, and the QEMU it debugs if xtask started it (killed when this is dropped).
struct Session {
    gdb: Command,
    qemu: Option<Guard>,
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
            console::LOG
        );
    }
    let Session { mut gdb, qemu } = session;
    announce(&gdb);
    let mut gdb = gdb.spawn().context("could not start gdb-multiarch")?;
    if interactive {
        // Ctrl-C is gdb's; xtask must outlive it to stop QEMU afterwards.
        ctrlc::set_handler(|| {}).context("could not catch Ctrl-C")?;
    }
    let status = gdb.wait()?;
    drop(qemu);
    if !interactive && !options.attach {
        eprintln!("console output: {}", console::LOG);
    }
    Ok(exit_code(status))
}

/// Runs the gdb `script` against the test kernel running the test(s) `test`
/// selects, and returns what gdb printed (for `cargo xtask test`).
pub fn batch_output(test: &str, script: &Path) -> Result<String> {
    let Session { mut gdb, qemu } = start(Some(test), Some(script), Firmware::default())?;
    announce(&gdb);
    let output = gdb.stdin(Stdio::null()).output().context("could not start gdb-multiarch")?;
    drop(qemu);
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    Ok(text)
}

/// Builds the kernel (the test kernel with `test`), starts QEMU paused with
/// its gdb stub, its console on a socket and the patch channel, and returns
/// gdb, which runs it to `boot_main` before anything else.
fn start(test: Option<&str>, batch: Option<&Path>, firmware: Firmware) -> Result<Session> {
    packages::require("gdb-multiarch")?;
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
    refuse_a_second_kernel()?;
    for socket in [SOCKET, console::SOCKET] {
        match std::fs::remove_file(workspace_root().join(socket)) {
            Err(error) if error.kind() != ErrorKind::NotFound => {
                return Err(error).with_context(|| format!("removing the old {socket}"));
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
    wait_for_socket(&workspace_root().join(SOCKET), &mut guard)?;
    let mut gdb = gdb_command(&image);
    // Not at _start, where the CPU is still big-endian and the breakpoint is hit forever.
    gdb.args(["-ex", &format!("tbreak *{boot_main:#x}"), "-ex", "continue"]);
    add_batch(&mut gdb, batch);
    Ok(Session { gdb, qemu: Some(guard) })
}

/// gdb for the kernel that `cargo xtask run` booted, through the stub it offers.
fn attach(batch: Option<&Path>) -> Result<Session> {
    packages::require("gdb-multiarch")?;
    let socket = workspace_root().join(SOCKET);
    let hint = "boot one with `cargo xtask run` (in another terminal) first";
    // Connecting stops the machine, as gdb's own connection does next.
    match UnixStream::connect(&socket) {
        Ok(_) => {}
        Err(error) if error.kind() == ErrorKind::NotFound => bail!("no kernel to attach to: {hint}"),
        Err(error) if error.kind() == ErrorKind::ConnectionRefused => {
            bail!("no kernel to attach to ({SOCKET} is left from one that has exited): {hint}")
        }
        Err(error) => return Err(error).with_context(|| format!("connecting to {SOCKET}")),
    }
    // `run` boots the ordinary kernel; it may have been rebuilt since.
    let image = build::image(false);
    let booted = std::fs::metadata(&socket).and_then(|socket| socket.modified());
    let built = std::fs::metadata(&image).and_then(|image| image.modified());
    if let (Ok(booted), Ok(built)) = (booted, built)
        && built > booted
    {
        eprintln!(
            "warning: {} was built after this kernel booted: its symbols may not match the running code",
            relative(&image).display()
        );
    }
    let mut gdb = gdb_command(&image);
    add_batch(&mut gdb, batch);
    Ok(Session { gdb, qemu: None })
}

/// gdb-multiarch connected to [`SOCKET`] with the kernel's symbols and gdb/kernel.py.
fn gdb_command(image: &Path) -> Command {
    let mut gdb = command("gdb-multiarch");
    gdb.args(["-q", "-ex", "set pagination off"]);
    gdb.args(["-ex", &format!("file {}", relative(image).display())]);
    gdb.args(["-ex", &format!("target remote {SOCKET}")]);
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

/// Fails when a kernel that xtask booted is running here already: its patch
/// channel socket accepts a connection. A second one would take the sockets
/// over, and `cargo xtask patch` would no longer reach the first.
fn refuse_a_second_kernel() -> Result<()> {
    let socket = patch_channel::socket();
    if UnixStream::connect(workspace_root().join(&socket)).is_ok() {
        bail!(
            "a kernel is running already ({} answers): `cargo xtask gdb --attach` debugs it; \
             end it first to boot another",
            socket.display()
        );
    }
    Ok(())
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
        let gdb = crate::display(&gdb_command(&workspace_root().join("target/kernel/kernel.elf")));
        assert!(
            gdb.starts_with(
                "gdb-multiarch -q -ex 'set pagination off' -ex 'file target/kernel/kernel.elf' \
                 -ex 'target remote target/kernel/gdb.sock'"
            ),
            "{gdb}"
        );
    }
}
