//! `console`: this terminal (or pipe) on the console of the kernel that `cargo xtask gdb` booted.
//!
//! Under gdb, the terminal of `cargo xtask gdb` is gdb's, so QEMU puts the
//! kernel's console on the unix socket [`SOCKET`] and writes everything the
//! kernel prints to [`LOG`] as well. `cargo xtask console` prints that log
//! (what came before it attached), then passes keys to the kernel and its
//! output back, the terminal in raw mode, until Ctrl-] or the machine stops.
//! From a pipe it types its input and stays until the console has been quiet
//! for a moment after the input ended.

use std::io::{IsTerminal, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{command, workspace_root};

/// The console's socket, relative to the workspace root.
pub const SOCKET: &str = "target/kernel/console.sock";

/// Everything the kernel under `cargo xtask gdb` printed.
pub const LOG: &str = "target/kernel/gdb-console.log";

/// The key that detaches the terminal (Ctrl-], as in telnet).
const DETACH: u8 = 0x1d;

/// How long the console must stay quiet after piped input ended.
const QUIET: Duration = Duration::from_millis(500);

/// The QEMU options that put the first console on [`SOCKET`], logged to [`LOG`].
pub fn qemu_options() -> [String; 4] {
    [
        "-chardev".into(),
        format!("socket,id=console,path={SOCKET},server=on,wait=off,logfile={LOG},logappend=off"),
        "-serial".into(),
        "chardev:console".into(),
    ]
}

pub fn main() -> Result<ExitCode> {
    let socket = workspace_root().join(SOCKET);
    let stream = UnixStream::connect(&socket).with_context(|| {
        format!(
            "no console at {SOCKET}: `cargo xtask gdb` offers one while it runs \
             (the console of `cargo xtask run` is its own terminal)"
        )
    })?;
    // Attached first, then the log: what comes meanwhile may show twice, but nothing is missed.
    let earlier = std::fs::read(workspace_root().join(LOG)).unwrap_or_default();
    let mut stdout = std::io::stdout();
    stdout.write_all(&earlier)?;
    stdout.flush()?;
    let terminal = if std::io::stdin().is_terminal() { Some(RawTerminal::enter()?) } else { None };
    if terminal.is_some() {
        eprintln!("(attached to the kernel's console: Ctrl-] detaches)");
    }
    let last_output = Arc::new(Mutex::new(Instant::now()));
    let mut from_kernel = stream.try_clone()?;
    let saved = terminal.as_ref().map(|terminal| terminal.saved.clone());
    let output_time = Arc::clone(&last_output);
    thread::spawn(move || {
        let mut buffer = [0; 4096];
        let mut stdout = std::io::stdout();
        while let Ok(count @ 1..) = from_kernel.read(&mut buffer) {
            *output_time.lock().expect("no panics while held") = Instant::now();
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
    let mut stdin = std::io::stdin();
    let mut buffer = [0; 1024];
    loop {
        let count = stdin.read(&mut buffer)?;
        if count == 0 {
            break;
        }
        let keys = &buffer[..count];
        let end = if terminal.is_some() { keys.iter().position(|&key| key == DETACH) } else { None };
        to_kernel.write_all(&keys[..end.unwrap_or(count)])?;
        if end.is_some() {
            drop(terminal);
            eprintln!("(detached; `cargo xtask console` attaches again)");
            return Ok(ExitCode::SUCCESS);
        }
    }
    // Piped input ended: wait for the answer to the last of it.
    while last_output.lock().expect("no panics while held").elapsed() < QUIET {
        thread::sleep(QUIET / 10);
    }
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

    #[test]
    fn the_console_is_a_logged_unix_socket() {
        assert_eq!(
            qemu_options().join(" "),
            "-chardev socket,id=console,path=target/kernel/console.sock,server=on,wait=off,\
             logfile=target/kernel/gdb-console.log,logappend=off -serial chardev:console"
        );
    }
}
