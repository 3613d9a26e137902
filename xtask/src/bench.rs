//! `bench`: boots the test kernel with a deterministic clock and tabulates its benchmarks, then times the patch channel.
//!
//! The kernel's figures are guest instructions under `-icount` (repeatable);
//! the patch channel's are wall-clock times over its unix socket, measured
//! against a second boot of the kernel that `cargo xtask run` boots, without
//! `-icount` (they vary with the host's load).

use std::io::Read;
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use portable::channel::Message;
use serde_json::{Value, json};

use crate::patch_channel::{self, Channel, PendingFile};
use crate::qemu::{self, Firmware, Guard, Machine, SHELL_PROMPT, Watch};
use crate::{build, patch, workspace_root};

#[derive(clap::Args)]
pub struct Options {
    /// Print a JSON array of {name, value, unit, note} instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// How long the benchmark boot may take.
const TIMEOUT: Duration = Duration::from_secs(300);

/// One line `bench: NAME VALUE UNIT [NOTE...]`.
#[derive(Debug, PartialEq)]
pub struct Measurement {
    pub name: String,
    pub value: String,
    pub unit: String,
    pub note: String,
}

/// What a console line says: a measurement, the end, or nothing for benchmarks.
#[derive(Debug, PartialEq)]
pub enum Line {
    Measurement(Measurement),
    Done,
    Other,
}

pub fn parse(line: &str) -> Line {
    let Some(rest) = line.trim().strip_prefix("bench: ") else { return Line::Other };
    if rest.trim() == "done" {
        return Line::Done;
    }
    let mut words = rest.split_whitespace();
    let (Some(name), Some(value), Some(unit)) = (words.next(), words.next(), words.next()) else {
        return Line::Other;
    };
    let note = words.collect::<Vec<_>>().join(" ");
    Line::Measurement(Measurement { name: name.into(), value: value.into(), unit: unit.into(), note })
}

/// The measurements as an aligned table: name, value (right-aligned), unit, note.
pub fn table(measurements: &[Measurement]) -> String {
    let header = Measurement { name: "name".into(), value: "value".into(), unit: "unit".into(), note: "note".into() };
    let rows: Vec<&Measurement> = std::iter::once(&header).chain(measurements).collect();
    let width = |field: fn(&Measurement) -> &str| rows.iter().map(|row| field(row).len()).max().unwrap_or(0);
    let (name, value, unit) = (width(|m| &m.name), width(|m| &m.value), width(|m| &m.unit));
    rows.iter()
        .map(|row| {
            format!("{:name$}  {:>value$}  {:unit$}  {}", row.name, row.value, row.unit, row.note)
                .trim_end()
                .to_string()
                + "\n"
        })
        .collect()
}

/// The measurements as JSON; values that are numbers become JSON numbers.
pub fn to_json(measurements: &[Measurement]) -> Value {
    let number = |text: &str| -> Value {
        text.parse::<u64>()
            .map(Value::from)
            .or_else(|_| text.parse::<i64>().map(Value::from))
            .or_else(|_| text.parse::<f64>().map(Value::from))
            .unwrap_or_else(|_| Value::from(text))
    };
    Value::Array(
        measurements
            .iter()
            .map(|m| json!({ "name": m.name, "value": number(&m.value), "unit": m.unit, "note": m.note }))
            .collect(),
    )
}

/// The CPU counts of the boots that measure the cross-CPU paths (`bench-smp`);
/// the main benchmark boot keeps one CPU, so that its figures stay comparable.
const SMP_BENCH_CPUS: [u32; 2] = [2, 4];

pub fn main(options: &Options) -> Result<ExitCode> {
    let image = build::main(&build::Options { test: true })?;
    let mut measurements = kernel_figures(&image, "bench", 1)?;
    for cpus in SMP_BENCH_CPUS {
        measurements.extend(kernel_figures(&image, "bench-smp", cpus)?);
    }
    measurements.extend(channel()?);
    if options.json {
        println!("{}", serde_json::to_string_pretty(&to_json(&measurements))?);
    } else {
        print!("{}", table(&measurements));
    }
    Ok(ExitCode::SUCCESS)
}

/// Boots the test kernel with `append` and `cpus` CPUs under `-icount`
/// (round-robin TCG: one virtual clock, repeatable also with several CPUs)
/// and collects its `bench:` lines.
fn kernel_figures(image: &std::path::Path, append: &str, cpus: u32) -> Result<Vec<Measurement>> {
    let machine = Machine { append: append.into(), cpus, ..Machine::new(image.to_path_buf(), Firmware::Vof) }.with(&[
        "-icount",
        "shift=0,align=off,sleep=off",
        "-serial",
        "stdio",
    ]);
    let (mut measurements, mut done) = (Vec::new(), false);
    // The console goes to stderr so that stdout holds only the table or the JSON.
    let outcome = qemu::boot(&mut machine.command()?, None, TIMEOUT, |line| {
        eprintln!("{line}");
        match parse(line) {
            Line::Measurement(measurement) => measurements.push(measurement),
            Line::Done => done = true,
            Line::Other => {}
        }
    })?;
    if outcome.code() != Some(0) {
        bail!("the benchmark boot failed: {}", outcome.describe());
    }
    if !done {
        bail!("the kernel never printed `bench: done` ({} measurements seen)", measurements.len());
    }
    Ok(measurements)
}

/// The sample module of 64 KiB (patches/bulk) that the channel benchmark loads.
const CHANNEL_MODULE: &str = "bulk";
/// Loads timed, each after a pause; the median is reported.
const CHANNEL_ROUNDS: usize = 5;
/// The channel benchmark's own socket, so that a kernel of `cargo xtask run` may keep running.
const CHANNEL_SOCKET: &str = "target/kernel/bench-channel.sock";

/// Boots the kernel as `cargo xtask run` does (its patch channel on its own
/// socket), loads and unloads the 64 KiB module `CHANNEL_ROUNDS` times, and
/// reports the median load time and the rate it means.
fn channel() -> Result<Vec<Measurement>> {
    let module = std::fs::read(patch::build(CHANNEL_MODULE)?)?;
    let image = build::main(&build::Options { test: false })?;
    let socket = PathBuf::from(CHANNEL_SOCKET);
    let machine = Machine {
        patch_channel: Some(socket.clone()),
        ..Machine::new(image, Firmware::Vof).with(&["-serial", "stdio"])
    };
    let mut qemu = machine.command()?;
    qemu.stdin(Stdio::piped()).stdout(Stdio::piped());
    let mut guard = Guard::spawn(&mut qemu)?;
    let (Some(stdin), Some(mut console)) = (guard.child().stdin.take(), guard.child().stdout.take()) else {
        bail!("QEMU's console is not piped");
    };
    // The console goes to stderr as it comes, like the first boot's.
    let (sender, chunks) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buffer = [0; 4096];
        while let Ok(count @ 1..) = console.read(&mut buffer) {
            eprint!("{}", String::from_utf8_lossy(&buffer[..count]));
            if sender.send(buffer[..count].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut prompt = Watch::new(SHELL_PROMPT);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !prompt.found() {
        let chunk = chunks
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .context("the kernel for the channel benchmark did not reach its prompt")?;
        prompt.push(&chunk);
    }
    let mut channel = Channel::connect(&workspace_root().join(&socket))?;
    let pending = PendingFile::new(workspace_root().join("target/kernel/bench-channel.pending"));
    let _ = std::fs::remove_file(workspace_root().join("target/kernel/bench-channel.pending"));
    let timeout = Duration::from_secs(30);
    let mut times = Vec::new();
    let mut bytes = 0;
    for _ in 0..CHANNEL_ROUNDS {
        // Each load finds the listener idle (polling every 20 ms), as a user's does.
        std::thread::sleep(Duration::from_millis(300));
        let load = Message::Load { name: CHANNEL_MODULE, module: &module };
        let loaded = patch_channel::exchange(&mut channel, &pending, &load, "LOAD bulk", timeout, &mut |line| {
            eprintln!("{line}")
        })?;
        eprintln!("{}", patch_channel::timing(&loaded));
        if !loaded.reply.ok {
            bail!("the kernel refused the benchmark's module: {}", loaded.reply.message);
        }
        let unload = Message::Unload { name: CHANNEL_MODULE };
        let unloaded = patch_channel::exchange(&mut channel, &pending, &unload, "UNLOAD bulk", timeout, &mut |line| {
            eprintln!("{line}")
        })?;
        if !unloaded.reply.ok {
            bail!("the kernel did not unload the benchmark's module: {}", unloaded.reply.message);
        }
        times.push(loaded.elapsed);
        bytes = loaded.bytes;
    }
    drop(channel);
    // End of input: the shell powers the machine off.
    qemu::feed(stdin, std::io::empty());
    let _ = guard.child().wait();
    times.sort();
    let median = times[times.len() / 2];
    let note = format!(
        "wall-clock over the unix socket, not guest instructions: median of {CHANNEL_ROUNDS} loads, each from an idle line, of patches/{CHANNEL_MODULE} \
         ({} bytes signed, a {bytes}-byte frame), from the first byte sent to the reply (transfer, signature check, link, enable)",
        module.len()
    );
    Ok(vec![
        Measurement {
            name: "channel_load_64k".into(),
            value: format!("{:.1}", median.as_secs_f64() * 1000.0),
            unit: "ms".into(),
            note,
        },
        Measurement {
            name: "channel_rate".into(),
            value: format!("{:.0}", bytes as f64 / 1000.0 / median.as_secs_f64()),
            unit: "KB/s".into(),
            note: "that frame's bytes over that time; the end-to-end test requires 100 (best of three)".into(),
        },
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_measurements_and_the_end() {
        assert_eq!(
            parse("bench: ftrace_hook 195 instructions per call, tracing off"),
            Line::Measurement(Measurement {
                name: "ftrace_hook".into(),
                value: "195".into(),
                unit: "instructions".into(),
                note: "per call, tracing off".into(),
            })
        );
        assert_eq!(parse("bench: done"), Line::Done);
        assert_eq!(parse("bench: only two"), Line::Other);
        assert_eq!(parse("klp> bench"), Line::Other);
    }

    fn sample() -> Vec<Measurement> {
        ["bench: patch 4100000 instructions", "bench: hook 195.5 instructions per call"]
            .into_iter()
            .map(|line| match parse(line) {
                Line::Measurement(measurement) => measurement,
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn aligns_the_table() {
        assert_eq!(
            table(&sample()),
            "name     value  unit          note\n\
             patch  4100000  instructions\n\
             hook     195.5  instructions  per call\n"
        );
    }

    #[test]
    fn json_has_numbers_and_notes() {
        assert_eq!(
            to_json(&sample()),
            json!([
                { "name": "patch", "value": 4100000, "unit": "instructions", "note": "" },
                { "name": "hook", "value": 195.5, "unit": "instructions", "note": "per call" },
            ])
        );
    }
}
