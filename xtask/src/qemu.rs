//! QEMU pseries: its command line, a guard that kills it, and a console reader with a timeout.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::{announce, command, display, packages, workspace_root};

/// The byte that tells the kernel shell its input has ended (it then powers off).
pub const END_OF_INPUT: u8 = 0x04;

/// The firmware that loads the kernel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Firmware {
    /// QEMU's Virtual Open Firmware: boots in a few milliseconds.
    #[default]
    Vof,
    /// SLOF, the full Open Firmware: boots in several seconds.
    Slof,
}

/// One QEMU machine; [`Machine::command`] turns it into a command line.
pub struct Machine {
    pub firmware: Firmware,
    pub cpus: u32,
    pub memory: String,
    pub kernel: PathBuf,
    /// The kernel command line; omitted when empty.
    pub append: String,
    /// Options added at the end (console, gdb, icount).
    pub extra: Vec<String>,
}

impl Machine {
    pub fn new(kernel: PathBuf, firmware: Firmware) -> Self {
        Machine { firmware, cpus: 1, memory: "512M".into(), kernel, append: String::new(), extra: Vec::new() }
    }

    /// Adds options (e.g. `-serial stdio`).
    pub fn with(mut self, options: &[&str]) -> Self {
        self.extra.extend(options.iter().map(|option| option.to_string()));
        self
    }

    /// The QEMU command, after making sure QEMU is installed.
    pub fn command(&self) -> Result<Command> {
        packages::require("qemu-system-ppc64")?;
        Ok(self.command_line())
    }

    fn command_line(&self) -> Command {
        let mut machine = String::from("pseries");
        if self.firmware == Firmware::Vof {
            machine.push_str(",x-vof=on");
        }
        // Tell TCG not to emulate the speculation mitigations (it cannot and would warn).
        machine.push_str(",cap-cfpc=broken,cap-sbbc=broken,cap-ibs=broken,cap-ccf-assist=off");
        let mut qemu = command("qemu-system-ppc64");
        qemu.args(["-M", &machine, "-m", &self.memory, "-smp", &self.cpus.to_string()]);
        qemu.args(["-nodefaults", "-display", "none", "-action", "panic=exit-failure"]);
        qemu.arg("-kernel").arg(relative(&self.kernel));
        if !self.append.is_empty() {
            qemu.args(["-append", &self.append]);
        }
        qemu.args(&self.extra);
        qemu
    }
}

/// `path` relative to the workspace root (where QEMU runs), for a shorter command line.
pub fn relative(path: &Path) -> &Path {
    path.strip_prefix(workspace_root()).unwrap_or(path)
}

/// A running child process that is killed when the guard is dropped.
pub struct Guard(Child);

impl Guard {
    /// Prints and starts `command`.
    pub fn spawn(command: &mut Command) -> Result<Self> {
        announce(command);
        Ok(Guard(command.spawn().with_context(|| format!("could not start {}", display(command)))?))
    }

    pub fn child(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Copies `source` into QEMU's console, then sends [`END_OF_INPUT`]. Runs on its own thread.
pub fn feed(mut stdin: ChildStdin, mut source: impl Read + Send + 'static) {
    thread::spawn(move || {
        // QEMU may exit before reading everything: a broken pipe is then expected.
        let _ = std::io::copy(&mut source, &mut stdin);
        let _ = stdin.write_all(&[END_OF_INPUT]);
        let _ = stdin.flush();
    });
}

/// How a boot ended.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    /// QEMU's exit status; `None` when it was killed at the timeout.
    pub status: Option<ExitStatus>,
    pub timeout: Duration,
}

impl Outcome {
    pub fn timed_out(&self) -> bool {
        self.status.is_none()
    }

    /// QEMU's exit code, if it exited by itself.
    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|status| status.code())
    }

    pub fn describe(&self) -> String {
        match self.status {
            None => format!("timed out after {} s (QEMU killed)", self.timeout.as_secs()),
            Some(status) => format!("QEMU {status}"),
        }
    }
}

/// Boots `qemu` (whose console must be `-serial stdio`), writes `input` and then
/// [`END_OF_INPUT`] to the console if given, and passes each line that QEMU prints
/// (console and QEMU's own messages) to `on_line`. Kills QEMU after `timeout`.
pub fn boot(qemu: &mut Command, input: Option<Vec<u8>>, timeout: Duration, mut on_line: impl FnMut(&str)) -> Result<Outcome> {
    qemu.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() });
    qemu.stdout(Stdio::piped()).stderr(Stdio::piped());
    let deadline = Instant::now() + timeout;
    let mut guard = Guard::spawn(qemu)?;
    let child = guard.child();
    if let (Some(input), Some(stdin)) = (input, child.stdin.take()) {
        feed(stdin, std::io::Cursor::new(input));
    }
    let (sender, lines) = mpsc::channel();
    for stream in [child.stdout.take().map(|out| Box::new(out) as Box<dyn Read + Send>), child.stderr.take().map(|err| Box::new(err) as _)]
        .into_iter()
        .flatten()
    {
        let sender = sender.clone();
        thread::spawn(move || send_lines(stream, sender));
    }
    drop(sender);
    let timed_out = Outcome { status: None, timeout };
    loop {
        match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => on_line(&line),
            Err(RecvTimeoutError::Timeout) => return Ok(timed_out),
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    // Both streams are closed: QEMU is exiting.
    while Instant::now() < deadline {
        if let Some(status) = guard.child().try_wait()? {
            return Ok(Outcome { status: Some(status), timeout });
        }
        thread::sleep(Duration::from_millis(10));
    }
    Ok(timed_out)
}

/// Sends each line of `stream` (without its line ending), and a last unterminated one.
fn send_lines(stream: Box<dyn Read + Send>, sender: mpsc::Sender<String>) {
    let mut reader = BufReader::new(stream);
    let mut bytes = Vec::new();
    loop {
        bytes.clear();
        match reader.read_until(b'\n', &mut bytes) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let line = String::from_utf8_lossy(&bytes);
                if sender.send(line.trim_end_matches(['\n', '\r']).to_string()).is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vof_command_line_matches_the_platform_notes() {
        let machine = Machine { append: "ktest.filter=x".into(), ..Machine::new(workspace_root().join("target/kernel/kernel.elf"), Firmware::Vof) };
        assert_eq!(
            display(&machine.command_line()),
            "qemu-system-ppc64 -M pseries,x-vof=on,cap-cfpc=broken,cap-sbbc=broken,cap-ibs=broken,cap-ccf-assist=off \
             -m 512M -smp 1 -nodefaults -display none -action panic=exit-failure -kernel target/kernel/kernel.elf \
             -append ktest.filter=x"
        );
    }

    #[test]
    fn boot_reads_lines_feeds_input_and_times_out() {
        // `cat` stands in for QEMU: it echoes the console input, then EOT.
        let mut lines = Vec::new();
        let outcome = boot(&mut Command::new("cat"), Some(b"one\r\ntwo".to_vec()), Duration::from_secs(5), |line| {
            lines.push(line.to_string())
        });
        // The feeder closes the pipe after the end-of-input byte, so cat ends by itself.
        let outcome = outcome.unwrap();
        assert_eq!(lines, ["one", "two\u{4}"]);
        assert_eq!(outcome.code(), Some(0));

        let outcome = boot(Command::new("sleep").arg("10"), None, Duration::from_millis(200), |_| {}).unwrap();
        assert!(outcome.timed_out());
        assert!(outcome.describe().contains("timed out"));
    }
}
