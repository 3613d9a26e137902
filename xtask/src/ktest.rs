//! The in-kernel test protocol: what the test kernel prints, and how a boot is judged.
//!
//! ```text
//! test NAME ... ok                 a case passed (or `test NAME ... ` then, later, a line `ok`)
//! test NAME ... FAILED             a case failed (or a later line `FAILED`)
//! ktest: isolated NAME             NAME must run alone, in a boot with ktest.only=NAME
//! ktest: expected panic [in NAME]  a should_panic case panicked as it should (exit status 1)
//! ktest: expect line HEX           the running case will print this line (hex of its UTF-8)
//!                                  before its result; if it does not, the case fails
//! ktest: finished                  every case ran; the kernel powers off
//! ```

use crate::qemu::Outcome;

/// What one boot of the test kernel reported so far.
#[derive(Debug, Default)]
pub struct Report {
    pub passed: Vec<String>,
    pub failed: Vec<String>,
    pub isolated: Vec<String>,
    /// The case whose result line has not come yet.
    pub running: Option<String>,
    /// The last case that started, with or without a result.
    pub last: Option<String>,
    pub finished: bool,
    pub panicked: bool,
    pub expected_panic: bool,
    /// Lines the running case announced and has not printed yet.
    pub announced: Vec<String>,
    /// Why a case that printed `ok` failed all the same: (case, reason).
    pub reasons: Vec<(String, String)>,
    /// The panic message of a case that panicked: (case, message).
    pub panics: Vec<(String, String)>,
    /// Taking the running case's panic message into `panics` (until its `Call Trace:`).
    panic_message: bool,
}

/// The most lines of a panic message a failure's reason quotes.
const PANIC_MESSAGE_LINES: usize = 6;

impl Report {
    /// Takes one console line.
    pub fn line(&mut self, line: &str) {
        let trimmed = line.trim();
        if let Some(case) = line.strip_prefix("test ")
            && let Some((name, rest)) = case.split_once(" ...")
        {
            // A case that never printed its result before the next one started has failed.
            if let Some(previous) = self.running.take() {
                self.failed.push(previous);
            }
            self.last = Some(name.trim().to_string());
            self.announced.clear();
            self.output(rest.trim());
            self.result(name.trim().to_string(), rest.trim());
        } else if let Some(name) = self.running.take() {
            self.output(trimmed);
            self.result(name, trimmed);
        }
        if let Some(name) = trimmed.strip_prefix("ktest: isolated ") {
            self.isolated.push(name.trim().to_string());
        }
        if trimmed == "ktest: finished" {
            self.finished = true;
        }
        // `ktest: expected panic` may name the case: `ktest: expected panic in NAME`.
        if trimmed.starts_with("ktest: expected panic") {
            self.expected_panic = true;
        }
        if let Some(at) = line.find("panicked at") {
            self.panicked = true;
            self.panic_message = false;
            // The running case's panic message becomes its reason: the
            // summary at the end of `cargo xtask test`, all CI's log may keep, says why.
            if let Some(case) = self.running.clone() {
                self.panics.push((case, line[at..].trim().to_string()));
                self.panic_message = true;
            }
        } else if self.panic_message && self.running.is_none() {
            // The case printed its result: the message ended.
            self.panic_message = false;
        } else if self.panic_message {
            let reason = &mut self.panics.last_mut().expect("a panic message has its case").1;
            if trimmed.starts_with("Call Trace:") || reason.matches(" / ").count() + 1 >= PANIC_MESSAGE_LINES {
                self.panic_message = false;
            } else if !trimmed.is_empty() {
                reason.push_str(" / ");
                reason.push_str(trimmed);
            }
        }
    }

    /// A line the running case printed: an announcement, or perhaps an announced line.
    fn output(&mut self, text: &str) {
        if let Some(hex) = text.strip_prefix("ktest: expect line ") {
            self.announced.push(decode_hex(hex.trim()).unwrap_or_else(|| format!("(undecodable announcement {hex})")));
        } else {
            self.announced.retain(|line| line != text);
        }
    }

    /// Records `name`'s result if `text` is one; otherwise the case is still running.
    fn result(&mut self, name: String, text: &str) {
        match text {
            "ok" if !self.announced.is_empty() => {
                let missing = std::mem::take(&mut self.announced);
                self.reasons.push((name.clone(), format!("announced but never printed the line(s) {missing:?}")));
                self.failed.push(name);
            }
            "ok" => self.passed.push(name),
            "FAILED" => self.failed.push(name),
            _ => self.running = Some(name),
        }
    }

    /// Why `name` failed, as far as this report knows.
    pub fn reason(&self, name: &str) -> &str {
        self.reasons.iter().chain(&self.panics).find(|(case, _)| case == name).map_or("FAILED", |(_, reason)| reason)
    }

    /// The panic message of `name`, if it panicked (its first lines).
    pub fn panic_message(&self, name: &str) -> Option<&str> {
        self.panics.iter().find(|(case, _)| case == name).map(|(_, message)| message.as_str())
    }

    /// Why the boot that ran every case failed, if it did.
    pub fn boot_failure(&self, outcome: &Outcome) -> Option<String> {
        if outcome.timed_out() || outcome.code() != Some(0) {
            Some(outcome.describe())
        } else if self.panicked {
            Some("the kernel panicked".into())
        } else if !self.finished {
            Some("the kernel never printed `ktest: finished`".into())
        } else {
            None
        }
    }

    /// After a boot that failed (see [`Report::boot_failure`]): the case a
    /// fresh boot must continue after (`ktest.after=NAME`), or None when no
    /// case started since the boot that began after `after` (nothing to skip:
    /// another boot would fail the same way).
    pub fn continue_after(&self, after: Option<&str>) -> Option<String> {
        self.last.clone().filter(|last| Some(last.as_str()) != after)
    }

    /// Whether the isolated boot of `name` passed: its `ok` line was printed and QEMU
    /// exited 0, or 1 after a should_panic case's `ktest: expected panic`.
    pub fn isolated_verdict(&self, name: &str, outcome: &Outcome) -> Result<(), String> {
        if self.failed.iter().any(|failed| failed == name) {
            return Err(format!("{} ({})", self.reason(name), outcome.describe()));
        }
        if !self.passed.iter().any(|passed| passed == name) {
            return Err(format!("`test {name} ... ok` was not printed ({})", outcome.describe()));
        }
        match outcome.code() {
            Some(0) => Ok(()),
            Some(1) if self.expected_panic => Ok(()),
            _ => Err(format!("{} after `test {name} ... ok`", outcome.describe())),
        }
    }
}

/// The bytes of `hex` (two digits each) as UTF-8 text.
fn decode_hex(hex: &str) -> Option<String> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(hex.get(at..at + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;
    use std::time::Duration;

    fn report(text: &str) -> Report {
        let mut report = Report::default();
        text.lines().for_each(|line| report.line(line));
        report
    }

    fn exited(code: i32) -> Outcome {
        Outcome { status: Some(ExitStatus::from_raw(code << 8)), timeout: Duration::from_secs(60) }
    }

    #[test]
    fn reads_results_on_one_line_or_after_output() {
        let report = report(
            "kernel banner\n\
             test alloc::vec ... ok\n\
             test sched::yield ... hello from the test\n\
             more output\n\
             ok\n\
             test patch::apply ... \n\
             FAILED\n\
             test bug::table ... FAILED\n\
             ktest: isolated panic::oops\n\
             ktest: finished\n",
        );
        assert_eq!(report.passed, ["alloc::vec", "sched::yield"]);
        assert_eq!(report.failed, ["patch::apply", "bug::table"]);
        assert_eq!(report.isolated, ["panic::oops"]);
        assert!(report.finished && !report.panicked && report.running.is_none());
        assert_eq!(report.boot_failure(&exited(0)), None);
    }

    #[test]
    fn a_boot_fails_on_panic_status_timeout_or_missing_end() {
        let crashed = report("test mm::map ... \npanicked at kernel/src/mm.rs:3:5\n");
        assert_eq!(crashed.running.as_deref(), Some("mm::map"));
        assert!(crashed.boot_failure(&exited(0)).unwrap().contains("panicked"));
        assert!(crashed.boot_failure(&exited(1)).unwrap().contains("exit status: 1"));
        let timeout = Outcome { status: None, timeout: Duration::from_secs(60) };
        assert!(report("ktest: finished\n").boot_failure(&timeout).unwrap().contains("timed out"));
        assert!(report("test a ... ok\n").boot_failure(&exited(0)).unwrap().contains("ktest: finished"));
    }

    #[test]
    fn a_case_fails_when_it_never_prints_a_line_it_announced() {
        // "é done" in hex: the announcement itself never counts as the line.
        let printed = report("test c::say ... \nktest: expect line c3a920646f6e65\né done\nok\n");
        assert_eq!((printed.passed.as_slice(), printed.failed.len()), (&["c::say".to_string()][..], 0));
        let silent = report("test c::say ... \nktest: expect line c3a920646f6e65\né don\nok\ntest c::next ... ok\n");
        assert_eq!(silent.failed, ["c::say"]);
        assert!(silent.reason("c::say").contains("\"é done\""), "{}", silent.reason("c::say"));
        assert_eq!(silent.passed, ["c::next"], "an announcement belongs to its case only");
        assert!(silent.isolated_verdict("c::say", &exited(0)).unwrap_err().contains("never printed"));
        assert_eq!(decode_hex("c3a9"), Some("é".to_string()));
        assert_eq!(decode_hex("c3a"), None);
    }

    #[test]
    fn a_failed_case_is_reported_with_its_panic_message() {
        let failed = report(
            "test a ... ok\ntest b ... \nkernel panicked at t.rs:9:5: assertion `left == right` failed: no site changed\n  \
             left: [1]\n right: [2]\nCall Trace:\n  [0x10] f+0x0/0x4\nFAILED\ntest c ... ok\n",
        );
        assert_eq!(failed.failed, ["b"]);
        assert_eq!(
            failed.reason("b"),
            "panicked at t.rs:9:5: assertion `left == right` failed: no site changed / left: [1] / right: [2]"
        );
        assert_eq!(failed.reason("a"), "FAILED", "a case that passed has no reason");
        assert_eq!(failed.panic_message("b"), Some(failed.reason("b")));
        assert_eq!(failed.panic_message("a"), None);
        let long = report(&format!("test d ... \npanicked at t.rs:1:1: x\n{}", "more\n".repeat(20)));
        assert_eq!(long.reason("d").matches(" / ").count() + 1, PANIC_MESSAGE_LINES);
    }

    #[test]
    fn a_case_without_result_fails_when_the_next_starts() {
        let report = report("test a ... \ntest b ... ok\n");
        assert_eq!(report.failed, ["a"]);
        assert_eq!(report.passed, ["b"]);
    }

    #[test]
    fn a_fresh_boot_continues_after_the_case_that_hung_or_crashed() {
        // The kernel's watchdog ends the hung case's line with FAILED, then powers off.
        let watchdog =
            report("test a ... ok\ntest b ... FAILED\nktest: watchdog: b still running after its 2 s deadline\n");
        assert_eq!(watchdog.failed, ["b"]);
        assert_eq!(watchdog.continue_after(None).as_deref(), Some("b"));
        // Interrupts off: only the host's timeout ends it, with the case still running.
        let timeout = report("test a ... ok\ntest c ... \n");
        assert_eq!(timeout.running.as_deref(), Some("c"));
        assert_eq!(timeout.continue_after(Some("a")).as_deref(), Some("c"));
        // A boot that died before its first case cannot be continued.
        assert_eq!(report("klp: banner\n").continue_after(None), None);
        assert_eq!(report("").continue_after(Some("b")), None);
    }

    #[test]
    fn isolated_boots_allow_status_one_only_after_an_expected_panic() {
        let plain = report("test solo ... ok\n");
        assert!(plain.isolated_verdict("solo", &exited(0)).is_ok());
        assert!(plain.isolated_verdict("solo", &exited(1)).is_err());
        let panicked = report("panicked at x.rs:1:1: boom\ntest solo ... ok\nktest: expected panic\n");
        assert!(panicked.isolated_verdict("solo", &exited(1)).is_ok());
        // The kernel's own words: the panic message interrupts the case line.
        let named = report("test solo ... kernel panicked at t.rs:2:3: boom\nok\nktest: expected panic in solo\n");
        assert!(named.isolated_verdict("solo", &exited(1)).is_ok());
        assert_eq!(named.reason("solo"), "panicked at t.rs:2:3: boom");
        assert!(named.reasons.is_empty(), "a panic is no reason to fail a case that printed ok");
        assert!(report("test solo ... FAILED\n").isolated_verdict("solo", &exited(0)).is_err());
        assert!(report("").isolated_verdict("solo", &exited(0)).unwrap_err().contains("was not printed"));
    }
}
