//! `gdb`: boots the kernel paused in QEMU and attaches gdb-multiarch to QEMU's gdb stub.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::qemu::{Firmware, Guard, Machine, relative};
use crate::run::exit_code;
use crate::{announce, build, command, packages, workspace_root};

#[derive(clap::Args)]
pub struct Options {
    /// Debug the test kernel, running only the case NAME (ktest.only=NAME).
    #[arg(long, value_name = "NAME")]
    pub test: Option<String>,
    /// Run the gdb commands in FILE without a prompt (gdb -batch -x FILE).
    #[arg(long, value_name = "FILE")]
    pub batch: Option<PathBuf>,
    /// Firmware that loads the kernel.
    #[arg(long, value_enum, default_value_t)]
    pub firmware: Firmware,
}

/// Where the console goes in batch mode.
const CONSOLE_LOG: &str = "target/kernel/gdb-console.log";

pub fn main(options: &Options) -> Result<ExitCode> {
    let batch = match &options.batch {
        Some(file) => Some(file.canonicalize().with_context(|| format!("gdb script {}", file.display()))?),
        None => None,
    };
    let (guard, mut gdb) = start(options.test.as_deref(), batch.as_deref(), options.firmware)?;
    let mut gdb = gdb.spawn().context("could not start gdb-multiarch")?;
    if batch.is_none() {
        // Ctrl-C is gdb's; xtask must outlive it to stop QEMU afterwards.
        ctrlc::set_handler(|| {}).context("could not catch Ctrl-C")?;
    }
    let status = gdb.wait()?;
    drop(guard);
    if batch.is_some() {
        eprintln!("console output: {CONSOLE_LOG}");
    }
    Ok(exit_code(status))
}

/// Runs the gdb `script` against the test kernel running only `test`, and
/// returns what gdb printed (for `cargo xtask test`).
pub fn batch_output(test: &str, script: &Path) -> Result<String> {
    let (guard, mut gdb) = start(Some(test), Some(script), Firmware::default())?;
    let output = gdb.stdin(Stdio::null()).output().context("could not start gdb-multiarch")?;
    drop(guard);
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    Ok(text)
}

/// Builds the kernel, starts QEMU paused with its gdb stub, and returns the
/// guard that kills QEMU with the gdb command to run against it.
fn start(test: Option<&str>, batch: Option<&Path>, firmware: Firmware) -> Result<(Guard, Command)> {
    packages::require("gdb-multiarch")?;
    let image = build::main(&build::Options { test: test.is_some() })?;
    let port = free_port()?;
    // Interactively the console shares the terminal with gdb, which alone reads the keys.
    let serial = if batch.is_some() { format!("file:{CONSOLE_LOG}") } else { "stdio".into() };
    let gdb_stub = format!("tcp:127.0.0.1:{port}");
    let machine = Machine {
        append: test.map(|name| format!("ktest.only={name}")).unwrap_or_default(),
        ..Machine::new(image.clone(), firmware).with(&["-S", "-gdb", &gdb_stub, "-serial", &serial])
    };
    let mut qemu = machine.command()?;
    // Its own process group: Ctrl-C in gdb interrupts the kernel instead of killing QEMU.
    qemu.stdin(Stdio::null()).process_group(0);
    let mut guard = Guard::spawn(&mut qemu)?;
    wait_for_listener(port, &mut guard)?;

    let mut gdb = command("gdb-multiarch");
    gdb.args(["-q", "-ex", "set pagination off"]);
    gdb.args(["-ex", &format!("file {}", relative(&image).display())]);
    gdb.args(["-ex", &format!("target remote 127.0.0.1:{port}")]);
    if workspace_root().join("gdb/kernel.py").exists() {
        gdb.args(["-x", "gdb/kernel.py"]);
    }
    match batch {
        Some(file) => {
            gdb.arg("-batch").arg("-x").arg(file);
        }
        // Not at _start: the CPU is still big-endian there and the breakpoint is hit forever.
        None => {
            gdb.args(["-ex", "break boot_main", "-ex", "continue"]);
        }
    }
    announce(&gdb);
    Ok((guard, gdb))
}

/// A TCP port that is free now on 127.0.0.1.
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits until QEMU listens on `port`, read from /proc/net/tcp so that no probe
/// connection reaches the gdb stub.
fn wait_for_listener(port: u16, qemu: &mut Guard) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(status) = qemu.child().try_wait()? {
            bail!("QEMU exited before gdb could attach: {status}");
        }
        match std::fs::read_to_string("/proc/net/tcp") {
            Ok(table) if listening(&table, port) => return Ok(()),
            Ok(_) => thread::sleep(Duration::from_millis(20)),
            // No /proc: give QEMU a moment instead.
            Err(_) => {
                thread::sleep(Duration::from_secs(1));
                return Ok(());
            }
        }
    }
    bail!("QEMU did not open its gdb stub on port {port} within 10 s")
}

/// Whether /proc/net/tcp lists a socket listening (state 0A) on `port`.
fn listening(table: &str, port: u16) -> bool {
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let local_port = fields.get(1).and_then(|address| address.rsplit_once(':'));
        local_port.is_some_and(|(_, hex)| u16::from_str_radix(hex, 16) == Ok(port)) && fields.get(3) == Some(&"0A")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_listening_sockets_in_proc_net_tcp() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue\n\
                     \x20  0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000\n\
                     \x20  1: 0100007F:1F91 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000\n";
        assert!(listening(table, 0x1f90));
        assert!(!listening(table, 0x1f91));
        assert!(!listening(table, 1234));
    }

    #[test]
    fn sees_a_real_listener() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(listening(&std::fs::read_to_string("/proc/net/tcp").unwrap(), port));
    }
}
