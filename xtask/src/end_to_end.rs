//! The end-to-end phase of `cargo xtask test`: live patching a running kernel from another process.
//!
//! Drives the two commands a user types in two terminals: `cargo xtask run`
//! (this process types into its console) and `cargo xtask patch load NAME`
//! / `patch unload NAME` (run as separate processes), and checks that what
//! the shell prints changes without a reboot, and changes back.

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::test::{Options, Tally};
use crate::workspace_root;

const ORIGINAL: &str = "hello from the original kernel";
const PATCHED: &str = "hello from the greeting patch module";
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// The kernel under `cargo xtask run`, with its console output gathered as it comes.
struct Session {
    child: Child,
    output: Receiver<u8>,
    seen: String,
}

impl Session {
    fn start() -> Result<Session> {
        let mut child = Command::new(std::env::current_exe()?)
            .arg("run")
            .current_dir(workspace_root())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting `cargo xtask run`")?;
        let mut stdout = child.stdout.take().expect("piped");
        let (sender, output) = channel();
        thread::spawn(move || {
            let mut byte = [0u8; 1];
            while let Ok(1) = stdout.read(&mut byte) {
                if sender.send(byte[0]).is_err() {
                    break;
                }
            }
        });
        Ok(Session { child, output, seen: String::new() })
    }

    /// Waits until `text` appears after what was already matched.
    fn wait_for(&mut self, text: &str) -> Result<()> {
        let deadline = Instant::now() + STEP_TIMEOUT;
        while !self.seen.contains(text) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.output.recv_timeout(left) {
                Ok(byte) => {
                    self.seen.push(byte as char);
                    print!("{}", byte as char);
                }
                Err(_) => bail!("the kernel did not print {text:?} within {} s", STEP_TIMEOUT.as_secs()),
            }
        }
        let end = self.seen.find(text).expect("found") + text.len();
        self.seen.drain(..end);
        Ok(())
    }

    fn type_line(&mut self, line: &str) -> Result<()> {
        let stdin = self.child.stdin.as_mut().expect("piped");
        stdin.write_all(format!("{line}\n").as_bytes())?;
        stdin.flush()?;
        Ok(())
    }

    /// Ends input; the kernel powers off and `xtask run` must exit 0.
    fn finish(mut self) -> Result<()> {
        drop(self.child.stdin.take());
        let status = self.child.wait()?;
        if !status.success() {
            bail!("`cargo xtask run` ended with {status}");
        }
        Ok(())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `cargo xtask patch ARGUMENTS` as a separate process; must succeed.
fn patch_command(arguments: &[&str]) -> Result<()> {
    let status = Command::new(std::env::current_exe()?)
        .arg("patch")
        .args(arguments)
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("running `cargo xtask patch {}`", arguments.join(" ")))?;
    if !status.success() {
        bail!("`cargo xtask patch {}` failed: {status}", arguments.join(" "));
    }
    Ok(())
}

fn live_patch_round_trip() -> Result<()> {
    // Build the module first so `patch load` below only sends it.
    patch_command(&["build", "greeting"])?;
    let mut session = Session::start()?;
    session.wait_for("klp> ")?;
    session.type_line("hello")?;
    session.wait_for(ORIGINAL)?;
    patch_command(&["load", "greeting"])?;
    // The message goes on its own line, and the prompt comes back below it.
    session.wait_for("\nklp: module 'greeting' loaded, patch 'greeting' enabled\nklp> ")?;
    session.type_line("hello")?;
    session.wait_for(PATCHED)?;
    patch_command(&["unload", "greeting"])?;
    session.wait_for("klp: module 'greeting' unloaded")?;
    session.type_line("hello")?;
    session.wait_for(ORIGINAL)?;
    session.finish()
}

/// Runs the end-to-end test (named `end_to_end::live_patch_over_the_channel`).
pub fn end_to_end_tests(options: &Options, tally: &mut Tally) -> Result<()> {
    let name = "end_to_end::live_patch_over_the_channel";
    if options.filter.as_ref().is_some_and(|filter| !name.contains(filter.as_str())) {
        return Ok(());
    }
    let verdict = live_patch_round_trip().map_err(|error| format!("{error:#}"));
    println!("\ntest {name} ... {}", if verdict.is_ok() { "ok" } else { "FAILED" });
    tally.record(name, &verdict);
    Ok(())
}
