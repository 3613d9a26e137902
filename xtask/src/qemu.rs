//! QEMU pseries: its command line, a guard that kills it, the lock of the user's kernel, and a console reader with a timeout.

use std::fs::{File, TryLockError};
use std::hash::Hasher;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
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

/// A running child process that is killed when the guard is dropped, or
/// when xtask dies without dropping it (a signal that ends xtask ends it too).
pub struct Guard(Child);

impl Guard {
    /// Prints and starts `command`.
    pub fn spawn(command: &mut Command) -> Result<Self> {
        announce(command);
        die_with_parent(command);
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

/// Makes the kernel send SIGKILL to the process `command` starts when the
/// thread that starts it (xtask's, which outlives it) ends, however xtask
/// ends (SIGTERM, SIGHUP, SIGKILL): a QEMU in its own process group is
/// otherwise left running, holding the sockets, with nobody to stop it.
fn die_with_parent(command: &mut Command) {
    let parent = std::process::id();
    // Safety: the closure runs in the child between fork and exec and calls
    // only prctl and getppid, which are async-signal-safe and allocate nothing.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // xtask died before the request took effect: it would never fire.
            if u32::try_from(libc::getppid()) != Ok(parent) {
                return Err(std::io::Error::other("xtask exited while starting this process"));
            }
            Ok(())
        });
    }
}

/// The lock of the kernel that xtask boots for a user on the sockets of
/// [`crate::patch_channel::in_folder`] (`cargo xtask run`, `cargo xtask gdb`),
/// relative to the workspace root. Its holder writes [`Holder`] into it.
pub const KERNEL_LOCK: &str = "target/kernel/qemu.lock";

/// An exclusive lock on a file (flock), held until it is dropped or its holder
/// exits however it ends; the file names the holder (see [`Holder`]).
#[derive(Debug)]
pub struct Lock {
    file: File,
}

/// Who holds a [`Lock`], as written in its file: `key value` lines.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The process id of the xtask that holds it.
    pub pid: String,
    /// What it runs (`cargo xtask run`).
    pub command: String,
    /// The kernel it booted, relative to the workspace root, and a hash of its contents when it booted.
    pub image: Option<PathBuf>,
    pub hash: Option<String>,
}

impl Holder {
    fn parse(text: &str) -> Holder {
        let mut holder = Holder::default();
        for (key, value) in text.lines().filter_map(|line| line.split_once(' ')) {
            match key {
                "pid" => holder.pid = value.to_string(),
                "command" => holder.command = value.to_string(),
                "image" => holder.image = Some(PathBuf::from(value)),
                "hash" => holder.hash = Some(value.to_string()),
                _ => {}
            }
        }
        holder
    }

    fn text(&self) -> String {
        let mut text = format!("pid {}\ncommand {}\n", self.pid, self.command);
        if let Some(image) = &self.image {
            text.push_str(&format!("image {}\n", image.display()));
        }
        if let Some(hash) = &self.hash {
            text.push_str(&format!("hash {hash}\n"));
        }
        text
    }

    /// `` `cargo xtask run`, pid 1234 `` for messages.
    pub fn describe(&self) -> String {
        let command = if self.command.is_empty() { "an xtask command" } else { &self.command };
        let pid = if self.pid.is_empty() { "unknown" } else { &self.pid };
        format!("`{command}`, pid {pid}")
    }
}

impl Lock {
    /// Takes the lock `path` (relative to the workspace root) for `command`,
    /// or returns who holds it.
    pub fn take(path: &Path, command: &str) -> Result<std::result::Result<Lock, Holder>> {
        let path = workspace_root().join(path);
        if let Some(folder) = path.parent() {
            std::fs::create_dir_all(folder).with_context(|| format!("creating {}", folder.display()))?;
        }
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Ok(Err(Holder::parse(&std::fs::read_to_string(&path).unwrap_or_default())));
            }
            Err(TryLockError::Error(error)) => {
                return Err(error).with_context(|| format!("locking {}", path.display()));
            }
        }
        let mut lock = Lock { file };
        lock.write(&Holder { pid: std::process::id().to_string(), command: command.to_string(), ..Holder::default() })?;
        Ok(Ok(lock))
    }

    /// Who holds the lock `path` now (`None`: nobody; the lock is not kept).
    pub fn holder(path: &Path) -> Result<Option<Holder>> {
        Lock::take(path, "").map(|lock| lock.err())
    }

    /// Replaces what the file says about the holder.
    pub fn write(&mut self, holder: &Holder) -> Result<()> {
        self.file.set_len(0)?;
        std::os::unix::fs::FileExt::write_all_at(&self.file, holder.text().as_bytes(), 0)?;
        Ok(())
    }

    /// Notes in the file the kernel `image` this holder boots (its path and a hash of its contents).
    pub fn record_image(&mut self, command: &str, image: &Path) -> Result<()> {
        self.write(&Holder {
            pid: std::process::id().to_string(),
            command: command.to_string(),
            image: Some(relative(image).to_path_buf()),
            hash: Some(content_hash(image)?),
        })
    }
}

/// A hash of the contents of the file `path` (hexadecimal), to tell whether a
/// rebuilt kernel differs from the one that booted: every build rewrites the
/// file, even when nothing changed, so its time says nothing.
pub fn content_hash(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut hasher = std::hash::DefaultHasher::new();
    hasher.write(&bytes);
    Ok(format!("{:016x}", hasher.finish()))
}

/// Takes the lock of the user's kernel ([`KERNEL_LOCK`]) for `command`, or fails
/// naming the kernel that runs already and what to do instead.
pub fn lock_the_kernel(command: &str) -> Result<Lock> {
    match Lock::take(&crate::patch_channel::in_folder(KERNEL_LOCK), command)? {
        Ok(lock) => Ok(lock),
        Err(holder) => anyhow::bail!(
            "a kernel is running already ({}): `cargo xtask gdb --attach` debugs it and `cargo xtask patch load` \
             reaches it; end it first (`poweroff` in its shell, or quit its gdb) to boot another",
            holder.describe()
        ),
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
    fn a_lock_is_refused_to_a_second_holder_and_names_the_first() {
        let path = PathBuf::from(format!("target/xtask-test/lock-{}", std::process::id()));
        let image = PathBuf::from(format!("target/xtask-test/image-{}", std::process::id()));
        std::fs::create_dir_all(workspace_root().join("target/xtask-test")).unwrap();
        std::fs::write(workspace_root().join(&image), b"kernel").unwrap();
        assert_eq!(Lock::holder(&path).unwrap(), None);
        let mut first = Lock::take(&path, "cargo xtask run").unwrap().expect("nobody holds it");
        first.record_image("cargo xtask run", &workspace_root().join(&image)).unwrap();
        let holder = Lock::take(&path, "cargo xtask gdb").unwrap().expect_err("held by the first");
        assert_eq!(holder.describe(), format!("`cargo xtask run`, pid {}", std::process::id()));
        assert_eq!(holder.image.as_deref(), Some(image.as_path()));
        assert_eq!(holder.hash, Some(content_hash(&workspace_root().join(&image)).unwrap()));
        assert_eq!(Lock::holder(&path).unwrap(), Some(holder));
        drop(first);
        assert_eq!(Lock::holder(&path).unwrap(), None);
        let _ = std::fs::remove_file(workspace_root().join(&path));
        let _ = std::fs::remove_file(workspace_root().join(&image));
    }

    #[test]
    fn a_hash_tells_contents_apart_not_times() {
        let path = workspace_root().join(format!("target/xtask-test/hash-{}", std::process::id()));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"one").unwrap();
        let one = content_hash(&path).unwrap();
        std::fs::write(&path, b"one").unwrap();
        assert_eq!(content_hash(&path).unwrap(), one);
        std::fs::write(&path, b"two").unwrap();
        assert_ne!(content_hash(&path).unwrap(), one);
        let _ = std::fs::remove_file(&path);
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
