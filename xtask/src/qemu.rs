//! QEMU pseries: its command line, a guard that kills it, and a console reader with a timeout.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::{announce, command, display, packages, patch_channel, workspace_root};

/// The kernel shell's prompt: console input is typed once it appears.
pub const SHELL_PROMPT: &str = "klp> ";

/// The byte that tells the kernel shell its input has ended (it then powers off).
pub const END_OF_INPUT: u8 = 0x04;

/// CPUs of `cargo xtask run` and of the kernel tests when none is asked for: two, so that
/// the secondary CPU paths (start-up, IPIs, the text patching's cross-CPU step) run in
/// every test boot, at the cost of one more vCPU that idles ceded. The benchmarks and the
/// console, gdb and end-to-end sessions keep one.
pub const DEFAULT_CPUS: u32 = 2;

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
    /// The unix socket of the patch channel (a second vty), relative to the workspace root.
    pub patch_channel: Option<PathBuf>,
}

impl Machine {
    pub fn new(kernel: PathBuf, firmware: Firmware) -> Self {
        Machine {
            firmware,
            cpus: 1,
            memory: "512M".into(),
            kernel,
            append: String::new(),
            extra: Vec::new(),
            patch_channel: None,
        }
    }

    /// Adds options (e.g. `-serial stdio`).
    pub fn with(mut self, options: &[impl AsRef<str>]) -> Self {
        self.extra.extend(options.iter().map(|option| option.as_ref().to_string()));
        self
    }

    /// The QEMU command, after making sure QEMU is installed.
    pub fn command(&self) -> Result<Command> {
        packages::require("qemu-system-ppc64")?;
        if let Some(folder) = self.patch_channel.as_deref().and_then(Path::parent) {
            // QEMU binds the socket but makes no folder (the channel folder may be new).
            std::fs::create_dir_all(workspace_root().join(folder))
                .with_context(|| format!("creating {}", folder.display()))?;
        }
        Ok(self.command_line())
    }

    fn command_line(&self) -> Command {
        let mut machine = String::from("pseries");
        if self.firmware == Firmware::Vof {
            machine.push_str(",x-vof=on");
        }
        // Tell TCG not to emulate the speculation mitigations (it cannot and would warn).
        machine.push_str(",cap-cfpc=broken,cap-sbbc=broken,cap-ibs=broken,cap-ccf-assist=off");
        // The kernel drives XICS only (its IPIs, kernel/src/arch/ppc64/xics.rs). QEMU's default,
        // `dual`, also gives XICS to a kernel that never negotiates (no client-architecture-support
        // call); saying so pins it, whatever a later QEMU's default becomes.
        machine.push_str(",ic-mode=xics");
        let mut qemu = command("qemu-system-ppc64");
        qemu.args(["-M", &machine, "-m", &self.memory, "-smp", &self.cpus.to_string()]);
        qemu.args(["-nodefaults", "-display", "none", "-action", "panic=exit-failure"]);
        qemu.arg("-kernel").arg(relative(&self.kernel));
        if !self.append.is_empty() {
            qemu.args(["-append", &self.append]);
        }
        qemu.args(&self.extra);
        if let Some(socket) = &self.patch_channel {
            qemu.args(patch_channel::qemu_options(socket));
        }
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

/// Watches a byte stream for a text, which may arrive split across reads.
pub struct Watch {
    needle: Vec<u8>,
    seen: Vec<u8>,
    found: bool,
}

impl Watch {
    pub fn new(needle: &str) -> Self {
        Watch { needle: needle.as_bytes().to_vec(), seen: Vec::new(), found: needle.is_empty() }
    }

    pub fn found(&self) -> bool {
        self.found
    }

    /// Takes more of the stream; true at the moment the text is first seen.
    pub fn push(&mut self, bytes: &[u8]) -> bool {
        if self.found {
            return false;
        }
        self.seen.extend_from_slice(bytes);
        self.found = self.seen.windows(self.needle.len()).any(|window| window == self.needle);
        // Keep only what could begin the text.
        let keep = self.seen.len().min(self.needle.len() - 1);
        self.seen.drain(..self.seen.len() - keep);
        self.found
    }
}

/// Text typed into the console of a boot.
pub struct Input {
    pub bytes: Vec<u8>,
    /// Typing starts once the console printed this (empty: at once). Firmware such as
    /// SLOF reads and drops what is typed before the kernel runs.
    pub after: String,
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

/// Boots `qemu` (whose console must be `-serial stdio`), types `input` and then
/// [`END_OF_INPUT`] into the console if given, and passes each line that QEMU prints
/// (console and QEMU's own messages; an unfinished last line too) to `on_line`.
/// Kills QEMU after `timeout`.
pub fn boot(
    qemu: &mut Command,
    input: Option<Input>,
    timeout: Duration,
    mut on_line: impl FnMut(&str),
) -> Result<Outcome> {
    qemu.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() });
    qemu.stdout(Stdio::piped()).stderr(Stdio::piped());
    let deadline = Instant::now() + timeout;
    let mut guard = Guard::spawn(qemu)?;
    let child = guard.child();
    let mut stdin = child.stdin.take();
    let (sender, chunks) = mpsc::channel();
    let streams: [Option<Box<dyn Read + Send>>; 2] =
        [child.stdout.take().map(|out| Box::new(out) as _), child.stderr.take().map(|err| Box::new(err) as _)];
    for (index, stream) in streams.into_iter().enumerate() {
        let sender = sender.clone();
        if let Some(stream) = stream {
            thread::spawn(move || send_chunks(index, stream, sender));
        }
    }
    drop(sender);
    let (mut bytes, mut watch) = match input {
        Some(Input { bytes, after }) => (bytes, Watch::new(&after)),
        None => (Vec::new(), Watch::new("")),
    };
    let mut partial = [Vec::new(), Vec::new()];
    let mut status = None;
    loop {
        if watch.found()
            && let Some(stdin) = stdin.take()
        {
            feed(stdin, std::io::Cursor::new(std::mem::take(&mut bytes)));
        }
        // A guest that never stops printing must still end at the deadline.
        if Instant::now() >= deadline {
            break;
        }
        match chunks.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok((stream, chunk)) => {
                if stream == 0 {
                    watch.push(&chunk);
                }
                let pending = &mut partial[stream];
                pending.extend_from_slice(&chunk);
                while let Some(end) = pending.iter().position(|byte| *byte == b'\n') {
                    let line: Vec<u8> = pending.drain(..=end).collect();
                    on_line(String::from_utf8_lossy(&line).trim_end_matches(['\n', '\r']));
                }
                // Output without newlines (a runaway print) is passed on in pieces,
                // not searched again and again as it grows.
                if pending.len() > LONGEST_LINE {
                    on_line(&String::from_utf8_lossy(&std::mem::take(pending)));
                }
            }
            Err(RecvTimeoutError::Timeout) => break,
            Err(RecvTimeoutError::Disconnected) => {
                // Both streams are closed: QEMU is exiting.
                status = guard.child().try_wait()?;
                while status.is_none() && Instant::now() < deadline {
                    thread::sleep(Duration::from_millis(10));
                    status = guard.child().try_wait()?;
                }
                break;
            }
        }
    }
    for pending in partial.iter().filter(|pending| !pending.is_empty()) {
        on_line(String::from_utf8_lossy(pending).trim_end_matches('\r'));
    }
    Ok(Outcome { status, timeout })
}

/// Bytes of console output without a newline passed on as one line.
const LONGEST_LINE: usize = 64 * 1024;

/// Sends what `stream` delivers, as it comes, tagged with `index`.
fn send_chunks(index: usize, mut stream: Box<dyn Read + Send>, sender: mpsc::Sender<(usize, Vec<u8>)>) {
    let mut buffer = [0; 4096];
    while let Ok(count @ 1..) = stream.read(&mut buffer) {
        if sender.send((index, buffer[..count].to_vec())).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vof_command_line_matches_the_platform_notes() {
        let machine = Machine {
            append: "ktest.filter=x".into(),
            ..Machine::new(workspace_root().join("target/kernel/kernel.elf"), Firmware::Vof)
        };
        assert_eq!(
            display(&machine.command_line()),
            "qemu-system-ppc64 -M pseries,x-vof=on,cap-cfpc=broken,cap-sbbc=broken,cap-ibs=broken,cap-ccf-assist=off,ic-mode=xics \
             -m 512M -smp 1 -nodefaults -display none -action panic=exit-failure -kernel target/kernel/kernel.elf \
             -append ktest.filter=x"
        );
    }

    #[test]
    fn patch_channel_is_a_second_vty_on_a_unix_socket() {
        let machine = Machine {
            patch_channel: Some(PathBuf::from(patch_channel::SOCKET)),
            ..Machine::new(workspace_root().join("target/kernel/kernel.elf"), Firmware::Vof).with(&["-serial", "stdio"])
        };
        assert!(display(&machine.command_line()).ends_with(
            "-serial stdio -chardev socket,id=patchchannel,path=target/kernel/patch-channel.sock,server=on,wait=off \
             -device spapr-vty,chardev=patchchannel,reg=0x71000010"
        ));
    }

    #[test]
    fn boot_reads_lines_feeds_input_and_times_out() {
        // `sh` stands in for QEMU: it prints a prompt without a newline, then echoes the console.
        let mut lines = Vec::new();
        let script = "printf 'ready> '; cat";
        let input = Input { bytes: b"one\r\ntwo".to_vec(), after: "ready> ".into() };
        let outcome = boot(Command::new("sh").args(["-c", script]), Some(input), Duration::from_secs(5), |line| {
            lines.push(line.to_string())
        });
        // The feeder closes the pipe after the end-of-input byte, so cat ends by itself.
        let outcome = outcome.unwrap();
        assert_eq!(lines, ["ready> one", "two\u{4}"]);
        assert_eq!(outcome.code(), Some(0));

        // The unfinished last line still arrives when QEMU is killed at the timeout.
        let mut lines = Vec::new();
        let script = "printf 'klp> '; sleep 10";
        let outcome = boot(Command::new("sh").args(["-c", script]), None, Duration::from_millis(300), |line| {
            lines.push(line.to_string())
        });
        let outcome = outcome.unwrap();
        assert!(outcome.timed_out() && outcome.describe().contains("timed out"));
        assert_eq!(lines, ["klp> "]);
    }

    #[test]
    fn watch_finds_text_split_across_reads() {
        let mut watch = Watch::new("klp> ");
        assert!(!watch.push(b"booting\nkl"));
        assert!(watch.push(b"p> "));
        assert!(watch.found() && !watch.push(b"klp> "));
        assert!(Watch::new("").found());
    }
}
