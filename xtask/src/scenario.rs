//! Console scenarios (`tests/scenarios/*.scenario`): type into the shell, expect output.
//!
//! ```text
//! # a comment
//! args: loglevel=debug      kernel command line (optional)
//! firmware: slof            vof or slof (optional; default: the one given to `test`)
//! ready: "klp> "            typing starts once this was printed (default: the shell prompt)
//! input: threads            a console line; all are sent in order, then end of input
//! expect: "klp> "           must appear in the output, after the previous expectation
//! reject: "# tracer"        must not appear between the previous expectation and the next (or the end)
//! expect-exit: 0            QEMU's exit status (default 0)
//! ```
//! A value may be put in double quotes to keep its surrounding spaces.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::qemu::{self, Firmware, Input, Machine, Outcome};

#[derive(Debug, PartialEq)]
pub struct Scenario {
    pub name: String,
    pub args: String,
    pub firmware: Option<Firmware>,
    pub ready: String,
    pub inputs: Vec<String>,
    pub checks: Vec<Check>,
    pub exit: i32,
}

/// One line of output the scenario looks for, or must not see.
#[derive(Debug, PartialEq)]
pub enum Check {
    Expect(String),
    Reject(String),
}

impl Scenario {
    pub fn load(path: &Path) -> Result<Self> {
        let name = path.file_stem().context("a scenario file needs a name")?.to_string_lossy().into_owned();
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&name, &text).with_context(|| format!("in {}", path.display()))
    }

    pub fn parse(name: &str, text: &str) -> Result<Self> {
        let mut scenario = Scenario {
            name: name.into(),
            args: String::new(),
            firmware: None,
            ready: qemu::SHELL_PROMPT.into(),
            inputs: vec![],
            checks: vec![],
            exit: 0,
        };
        for (number, line) in text.lines().enumerate().map(|(index, line)| (index + 1, line.trim_end_matches('\r'))) {
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once(':') else {
                bail!("line {number}: expected `key: value`, found {line:?}");
            };
            let value = unquote(value.strip_prefix(' ').unwrap_or(value));
            match key.trim() {
                "input" => scenario.inputs.push(value),
                "expect" => scenario.checks.push(Check::Expect(value)),
                "reject" => scenario.checks.push(Check::Reject(value)),
                "args" => scenario.args = value,
                "ready" => scenario.ready = value,
                "firmware" => {
                    scenario.firmware = Some(match value.trim() {
                        "vof" => Firmware::Vof,
                        "slof" => Firmware::Slof,
                        other => bail!("line {number}: unknown firmware {other:?} (vof or slof)"),
                    })
                }
                "expect-exit" => {
                    scenario.exit = value.trim().parse().with_context(|| format!("line {number}: bad exit status"))?
                }
                other => {
                    bail!(
                        "line {number}: unknown key {other:?} (input, expect, reject, ready, args, firmware, expect-exit)"
                    )
                }
            }
        }
        Ok(scenario)
    }

    /// The bytes typed into the console: each input line, then (by the feeder) end of input.
    pub fn console_input(&self) -> Vec<u8> {
        self.inputs.iter().flat_map(|input| format!("{input}\n").into_bytes()).collect()
    }

    /// Why the run failed, if it did: each expectation is searched after the
    /// previous one, and each rejected text in the stretch between the
    /// expectations around it.
    pub fn verdict(&self, output: &str, outcome: &Outcome) -> Result<(), String> {
        let mut rest = output;
        let mut rejected: Vec<&str> = Vec::new();
        let seen_in =
            |stretch: &str, rejected: &mut Vec<&str>| match rejected.drain(..).find(|text| stretch.contains(text)) {
                Some(text) => Err(format!("{text:?} appeared where the scenario rejects it; {}", outcome.describe())),
                None => Ok(()),
            };
        for check in &self.checks {
            match check {
                Check::Reject(text) => rejected.push(text),
                Check::Expect(expect) => match rest.find(expect.as_str()) {
                    Some(at) => {
                        seen_in(&rest[..at], &mut rejected)?;
                        rest = &rest[at + expect.len()..];
                    }
                    None => {
                        return Err(format!(
                            "expected {expect:?} in the output (after the previous expectations); {}",
                            outcome.describe()
                        ));
                    }
                },
            }
        }
        seen_in(rest, &mut rejected)?;
        match outcome.code() {
            Some(code) if code == self.exit => Ok(()),
            _ => Err(format!("expected exit status {}, got: {}", self.exit, outcome.describe())),
        }
    }

    /// Boots `kernel` as the scenario says; returns the console output and the verdict.
    pub fn run(
        &self,
        kernel: &Path,
        default_firmware: Firmware,
        timeout: Duration,
    ) -> Result<(String, Result<(), String>)> {
        let machine = Machine {
            append: self.args.clone(),
            // As under `cargo xtask run`, with a socket of its own: scenarios boot in parallel.
            patch_channel: Some(PathBuf::from(format!("target/kernel/patch-channel-{}.sock", self.name))),
            ..Machine::new(kernel.to_path_buf(), self.firmware.unwrap_or(default_firmware)).with(&["-serial", "stdio"])
        };
        let mut output = String::new();
        let input = Input { bytes: self.console_input(), after: self.ready.clone() };
        let outcome = qemu::boot(&mut machine.command()?, Some(input), timeout, |line| {
            output.push_str(line);
            output.push('\n');
        })?;
        let verdict = self.verdict(&output, &outcome);
        Ok((output, verdict))
    }
}

/// `"text"` -> `text`; anything else unchanged.
fn unquote(value: &str) -> String {
    match value.strip_prefix('"').and_then(|inner| inner.strip_suffix('"')) {
        Some(inner) => inner.to_string(),
        None => value.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;

    fn exited(code: i32) -> Outcome {
        Outcome { status: Some(ExitStatus::from_raw(code << 8)), timeout: Duration::from_secs(60) }
    }

    #[test]
    fn parses_every_key() {
        let text = "# comment\n\nargs: a=1 b\r\nfirmware: slof\ninput: threads\ninput: mem\nexpect: \"klp> \"\nexpect: powering off\nexpect-exit: 1\n";
        let scenario = Scenario::parse("shell", text).unwrap();
        assert_eq!(
            scenario,
            Scenario {
                name: "shell".into(),
                args: "a=1 b".into(),
                firmware: Some(Firmware::Slof),
                ready: "klp> ".into(),
                inputs: vec!["threads".into(), "mem".into()],
                checks: vec![Check::Expect("klp> ".into()), Check::Expect("powering off".into())],
                exit: 1,
            }
        );
        assert_eq!(scenario.console_input(), b"threads\nmem\n");
        assert_eq!(Scenario::parse("x", "ready: \"\"\n").unwrap().ready, "");
    }

    #[test]
    fn rejects_unknown_keys_and_values() {
        assert!(Scenario::parse("x", "send: x\n").unwrap_err().to_string().contains("line 1"));
        assert!(Scenario::parse("x", "firmware: uboot\n").is_err());
        assert!(Scenario::parse("x", "expect-exit: one\n").is_err());
        assert!(Scenario::parse("x", "no colon\n").is_err());
    }

    #[test]
    fn expectations_must_appear_in_order() {
        let scenario = Scenario::parse("x", "expect: b\nexpect: a\n").unwrap();
        assert!(scenario.verdict("a b a", &exited(0)).is_ok());
        assert!(scenario.verdict("a b", &exited(0)).unwrap_err().contains("\"a\" in the output"));
        assert!(scenario.verdict("b a", &exited(1)).unwrap_err().contains("exit status 0"));
        let timeout = Outcome { status: None, timeout: Duration::from_secs(5) };
        assert!(scenario.verdict("b a", &timeout).unwrap_err().contains("timed out"));
    }

    #[test]
    fn a_rejected_text_fails_only_between_the_expectations_around_it() {
        let scenario = Scenario::parse("x", "expect: start\nreject: header\nexpect: end\nreject: late\n").unwrap();
        assert!(scenario.verdict("header start body end", &exited(0)).is_ok());
        assert!(scenario.verdict("start header end", &exited(0)).unwrap_err().contains("\"header\" appeared"));
        assert!(scenario.verdict("start end late", &exited(0)).unwrap_err().contains("\"late\" appeared"));
        assert!(scenario.verdict("start end header", &exited(0)).is_ok());
    }
}
