//! `run`: builds the kernel and boots it with its console on this terminal or pipe, and a gdb stub on a socket.

use std::io::{IsTerminal, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{ChildStdin, ExitCode, ExitStatus, Stdio};

use anyhow::Result;

use crate::qemu::{self, Firmware, Guard, Machine, SHELL_PROMPT, Watch};
use crate::{build, gdb, patch_channel};

#[derive(clap::Args)]
pub struct Options {
    /// Firmware that loads the kernel.
    #[arg(long, value_enum, default_value_t)]
    pub firmware: Firmware,
    /// Number of CPUs (1 to 8); all of them come online.
    #[arg(long, default_value_t = qemu::DEFAULT_CPUS, value_parser = clap::value_parser!(u32).range(1..=8))]
    pub smp: u32,
    /// Guest memory, in QEMU's syntax (512M, 1G).
    #[arg(long, default_value = "512M")]
    pub memory: String,
    /// Kernel command line, after `--`.
    #[arg(last = true)]
    pub args: Vec<String>,
}

pub fn main(options: &Options) -> Result<ExitCode> {
    // Held until QEMU has exited: a second `run` or `gdb` is refused instead of
    // taking the sockets over (QEMU removes them when it exits, cutting this one off).
    let mut lock = qemu::lock_the_kernel("cargo xtask run")?;
    let image = build::main(&build::Options { test: false })?;
    lock.record_image("cargo xtask run", &image)?;
    let interactive = std::io::stdin().is_terminal();
    // On a terminal QEMU reads the keys itself (mon: adds Ctrl-A X to quit); from a pipe or
    // file, xtask types the input and ends it with the byte that makes the shell power off.
    let serial = if interactive { "mon:stdio" } else { "stdio" };
    let machine = Machine {
        cpus: options.smp,
        memory: options.memory.clone(),
        append: options.args.join(" "),
        // `cargo xtask patch load|unload` reach the kernel through this socket.
        patch_channel: Some(patch_channel::socket()),
        // And `cargo xtask gdb --attach` through this one, at any time.
        ..Machine::new(image, options.firmware).with(&["-serial", serial]).with(&gdb::stub_options())
    };
    let mut qemu = machine.command()?;
    if interactive {
        eprintln!(
            "(Ctrl-A X quits QEMU, Ctrl-A H lists the other keys; `cargo xtask gdb --attach` in another terminal \
             debugs this kernel)"
        );
    } else {
        qemu.stdin(Stdio::piped()).stdout(Stdio::piped());
    }
    let mut guard = Guard::spawn(&mut qemu)?;
    if let (Some(stdin), Some(console)) = (guard.child().stdin.take(), guard.child().stdout.take()) {
        relay(console, stdin, crate::symbolize::Symbolizer::new(&machine.kernel));
    }
    let status = guard.child().wait()?;
    drop(lock);
    Ok(exit_code(status))
}

/// Copies QEMU's console to stdout as it comes and, once the shell prompt appears
/// (firmware such as SLOF drops what is typed earlier), types xtask's stdin into it.
fn relay(mut console: impl Read, stdin: ChildStdin, symbolizer: Option<crate::symbolize::Symbolizer>) {
    let mut stdin = Some(stdin);
    let mut watch = Watch::new(SHELL_PROMPT);
    let mut output = std::io::stdout();
    let mut buffer = [0; 4096];
    let mut line = Vec::new();
    while let Ok(count @ 1..) = console.read(&mut buffer) {
        // Nobody reading our output (`| head`) must not stop the machine.
        let _ = output.write_all(&buffer[..count]).and_then(|()| output.flush());
        // After each complete report line, where it is in the source.
        for &byte in &buffer[..count] {
            if byte != b'\n' {
                line.push(byte);
                continue;
            }
            let text = String::from_utf8_lossy(&line);
            if let Some(annotation) = symbolizer.as_ref().and_then(|symbolizer| symbolizer.annotation(&text)) {
                let _ = writeln!(output, "{annotation}");
            }
            line.clear();
        }
        if watch.push(&buffer[..count])
            && let Some(stdin) = stdin.take()
        {
            qemu::feed(stdin, std::io::stdin());
        }
    }
}

/// QEMU's exit code, or 128 + the signal that killed it, as a shell reports it.
pub fn exit_code(status: ExitStatus) -> ExitCode {
    let code = status.code().or_else(|| status.signal().map(|signal| 128 + signal)).unwrap_or(1);
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
