//! `bench`: boots the test kernel with a deterministic clock and tabulates its benchmarks.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, bail};
use serde_json::{Value, json};

use crate::build;
use crate::qemu::{self, Firmware, Machine};

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

pub fn main(options: &Options) -> Result<ExitCode> {
    let image = build::main(&build::Options { test: true })?;
    let machine = Machine { append: "bench".into(), ..Machine::new(image, Firmware::Vof) }.with(&[
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
    if options.json {
        println!("{}", serde_json::to_string_pretty(&to_json(&measurements))?);
    } else {
        print!("{}", table(&measurements));
    }
    Ok(ExitCode::SUCCESS)
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
