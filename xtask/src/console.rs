//! `console`: this terminal (or pipe) on the console of the kernel that `cargo xtask gdb` booted.
//!
//! Under gdb, the terminal of `cargo xtask gdb` is gdb's, so QEMU puts the
//! kernel's console on the unix socket [`SOCKET`] and writes everything the
//! kernel prints to [`LOG`] as well. `cargo xtask console` prints that log
//! (what came before it attached), then passes keys to the kernel and its
//! output back, the terminal in raw mode, until Ctrl-] or the machine stops.
//! From a pipe it types its input a line at a time, each once the shell has
//! echoed the one before ([`type_lines`]), and stays until the console has
//! been quiet for a moment after the input ended.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::qemu::relative;
use crate::{command, patch_channel, workspace_root};

/// The console's socket, relative to the workspace root (see [`socket`]).
pub const SOCKET: &str = "target/kernel/console.sock";

/// Everything the kernel under `cargo xtask gdb` printed (see [`log`]).
pub const LOG: &str = "target/kernel/gdb-console.log";

/// The console's socket in use: [`SOCKET`], or its name in the folder of `patch_channel::FOLDER_VARIABLE`.
pub fn socket() -> PathBuf {
    patch_channel::in_folder(SOCKET)
}

/// The console log in use: [`LOG`], or its name in the folder of `patch_channel::FOLDER_VARIABLE`.
pub fn log() -> PathBuf {
    patch_channel::in_folder(LOG)
}

/// The key that detaches the terminal (Ctrl-], as in telnet).
const DETACH: u8 = 0x1d;

/// How long the console must stay quiet after piped input ended.
const QUIET: Duration = Duration::from_millis(500);

/// How long a piped line may wait for the shell's echo before the next is sent anyway.
const ECHO_TIMEOUT: Duration = Duration::from_secs(10);

/// What the kernel printed since the last line was typed, and when it last printed.
#[derive(Default)]
pub struct Echo {
    state: Mutex<EchoState>,
    arrived: Condvar,
}

struct EchoState {
    seen: Vec<u8>,
    last: Instant,
}

impl Default for EchoState {
    fn default() -> Self {
        EchoState { seen: Vec::new(), last: Instant::now() }
    }
}

impl Echo {
    /// Takes what the kernel printed.
    pub fn push(&self, bytes: &[u8]) {
        let mut state = self.state.lock().expect("no panics while held");
        state.seen.extend_from_slice(bytes);
        // Only the end can hold the echo still awaited (a line is far shorter).
        let excess = state.seen.len().saturating_sub(64 * 1024);
        state.seen.drain(..excess);
        state.last = Instant::now();
        self.arrived.notify_all();
    }

    fn forget(&self) {
        self.state.lock().expect("no panics while held").seen.clear();
    }

    /// Waits up to `timeout` until the kernel has printed `text` since [`Echo::forget`].
    fn wait_for(&self, text: &[u8], timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.state.lock().expect("no panics while held");
        loop {
            if state.seen.windows(text.len()).any(|window| window == text) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = self.arrived.wait_timeout(state, left).expect("no panics while held").0;
        }
    }

    fn quiet_for(&self) -> Duration {
        self.state.lock().expect("no panics while held").last.elapsed()
    }
}

/// Types `input` into the console `to_kernel` a line at a time: after each
/// line, waits (up to `timeout`) until the kernel has echoed it before
/// sending the next. While the machine is stopped (under gdb) QEMU takes 16
/// bytes of input and drops the rest, so nothing is sent ahead of the shell;
/// a line that is not echoed is reported (on standard error). Returns how
/// many lines were not echoed.
pub fn type_lines(
    mut input: impl BufRead,
    to_kernel: &mut impl Write,
    echo: &Echo,
    timeout: Duration,
) -> Result<usize> {
    let mut unechoed = 0;
    let mut line = Vec::new();
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            return Ok(unechoed);
        }
        echo.forget();
        to_kernel.write_all(&line)?;
        to_kernel.flush()?;
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        // An empty line is echoed as a new line.
        let wanted: &[u8] = if text.is_empty() { b"\n" } else { text };
        if !echo.wait_for(wanted, timeout) {
            unechoed += 1;
            eprintln!(
                "(the shell did not echo {:?} within {} s: is the kernel stopped under gdb? input typed while \
                 it is stopped is lost beyond 16 bytes)",
                String::from_utf8_lossy(text),
                timeout.as_secs()
            );
        }
    }
}

/// The QEMU options that put the first console on [`socket`], logged to [`log`].
pub fn qemu_options() -> [String; 4] {
    [
        "-chardev".into(),
        format!(
            "socket,id=console,path={},server=on,wait=off,logfile={},logappend=off",
            socket().display(),
            log().display()
        ),
        "-serial".into(),
        "chardev:console".into(),
    ]
}

pub fn main() -> Result<ExitCode> {
    let socket = workspace_root().join(socket());
    let stream = UnixStream::connect(&socket).with_context(|| {
        format!(
            "no console at {}: `cargo xtask gdb` offers one while it runs \
             (the console of `cargo xtask run` is its own terminal)",
            relative(&socket).display()
        )
    })?;
    // Attached first, then the log: what comes meanwhile may show twice, but nothing is missed.
    let earlier = std::fs::read(workspace_root().join(log())).unwrap_or_default();
    let mut stdout = std::io::stdout();
    stdout.write_all(&earlier)?;
    stdout.flush()?;
    let terminal = if std::io::stdin().is_terminal() { Some(RawTerminal::enter()?) } else { None };
    if terminal.is_some() {
        eprintln!("(attached to the kernel's console: Ctrl-] detaches)");
    }
    let echo = Arc::new(Echo::default());
    let mut from_kernel = stream.try_clone()?;
    let saved = terminal.as_ref().map(|terminal| terminal.saved.clone());
    let output = Arc::clone(&echo);
    thread::spawn(move || {
        let mut buffer = [0; 4096];
        let mut stdout = std::io::stdout();
        while let Ok(count @ 1..) = from_kernel.read(&mut buffer) {
            output.push(&buffer[..count]);
            let _ = stdout.write_all(&buffer[..count]).and_then(|()| stdout.flush());
        }
        // The machine stopped (gdb quit): nothing more will come.
        if let Some(saved) = saved {
            restore(&saved);
        }
        eprintln!("\n(the console closed: the machine has stopped)");
        std::process::exit(0);
    });
    let mut to_kernel = stream;
    if terminal.is_none() {
        type_lines(std::io::stdin().lock(), &mut to_kernel, &echo, ECHO_TIMEOUT)?;
        // Piped input ended: wait for the answer to the last of it.
        while echo.quiet_for() < QUIET {
            thread::sleep(QUIET / 10);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut stdin = std::io::stdin();
    let mut buffer = [0; 1024];
    loop {
        let count = stdin.read(&mut buffer)?;
        if count == 0 {
            break;
        }
        let keys = &buffer[..count];
        let end = keys.iter().position(|&key| key == DETACH);
        to_kernel.write_all(&keys[..end.unwrap_or(count)])?;
        if end.is_some() {
            break;
        }
    }
    drop(terminal);
    eprintln!("(detached; `cargo xtask console` attaches again)");
    Ok(ExitCode::SUCCESS)
}

/// The terminal in raw mode without echo (keys go to the kernel as typed,
/// the kernel echoes them); its settings come back when this is dropped.
struct RawTerminal {
    saved: String,
}

impl RawTerminal {
    fn enter() -> Result<Self> {
        let output = command("stty").arg("-g").stdin(Stdio::inherit()).output().context("could not run stty")?;
        if !output.status.success() {
            bail!("stty -g failed: {}", String::from_utf8_lossy(&output.stderr).trim());
        }
        let saved = String::from_utf8_lossy(&output.stdout).trim().to_string();
        // Output processing stays on, as QEMU's own stdio console keeps it: the
        // kernel ends lines with \n alone, which the terminal must turn into \r\n.
        let status = command("stty").args(["raw", "-echo", "opost", "onlcr"]).stdin(Stdio::inherit()).status()?;
        if !status.success() {
            bail!("stty raw -echo opost onlcr failed");
        }
        Ok(RawTerminal { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        restore(&self.saved);
    }
}

/// Puts the terminal back as `stty -g` described it.
fn restore(saved: &str) {
    let _ = command("stty").arg(saved).stdin(Stdio::inherit()).status();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for the kernel's shell on the other end of `stream`: reads
    /// what comes, notes whether more came while it held back its echo for
    /// `delay`, then echoes it into `echo` (if `echoes`).
    fn shell(stream: UnixStream, echo: Arc<Echo>, delay: Duration, echoes: bool) -> thread::JoinHandle<Vec<Vec<u8>>> {
        thread::spawn(move || {
            let mut reads = Vec::new();
            let mut stream = stream;
            let mut buffer = [0; 256];
            while let Ok(count @ 1..) = stream.read(&mut buffer) {
                reads.push(buffer[..count].to_vec());
                thread::sleep(delay);
                if echoes {
                    echo.push(&buffer[..count]);
                }
            }
            reads
        })
    }

    #[test]
    fn piped_lines_wait_for_the_echo_of_the_one_before() {
        let (mut ours, theirs) = UnixStream::pair().unwrap();
        let echo = Arc::new(Echo::default());
        let kernel = shell(theirs, Arc::clone(&echo), Duration::from_millis(100), true);
        let input = b"first line\n\nthird\n".as_slice();
        assert_eq!(type_lines(input, &mut ours, &echo, Duration::from_secs(5)).unwrap(), 0);
        drop(ours);
        // Each line came alone: the next was sent only after the echo.
        assert_eq!(kernel.join().unwrap(), [b"first line\n".to_vec(), b"\n".to_vec(), b"third\n".to_vec()]);
    }

    #[test]
    fn a_stopped_kernel_that_echoes_nothing_is_reported_per_line() {
        let (mut ours, theirs) = UnixStream::pair().unwrap();
        let echo = Arc::new(Echo::default());
        let kernel = shell(theirs, Arc::clone(&echo), Duration::ZERO, false);
        let start = Instant::now();
        assert_eq!(type_lines(b"hello\nmem\n".as_slice(), &mut ours, &echo, Duration::from_millis(200)).unwrap(), 2);
        assert!(start.elapsed() < Duration::from_secs(2));
        drop(ours);
        kernel.join().unwrap();
    }

    #[test]
    fn the_console_is_a_logged_unix_socket() {
        assert_eq!(
            qemu_options().join(" "),
            "-chardev socket,id=console,path=target/kernel/console.sock,server=on,wait=off,\
             logfile=target/kernel/gdb-console.log,logappend=off -serial chardev:console"
        );
    }
}
