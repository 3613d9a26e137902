//! The debugger phase of `cargo xtask test`: gdb batch sessions whose output must show what the scripts expect.
//!
//! Each `tests/gdb/NAME.gdb` starts with header comments. One line says
//! which kernel gdb debugs:
//!
//! - `# test: KTEST`: the test kernel running the in-kernel test(s) that
//!   `cargo xtask gdb --test KTEST` selects;
//! - `# session: gdb`: `cargo xtask gdb --batch` (the kernel of `run`,
//!   stopped at `boot_main`, its console reached with `cargo xtask console`);
//! - `# session: attach`: `cargo xtask run`, then `cargo xtask gdb --attach
//!   --batch`; the run must end well afterwards (the shell powers the
//!   machine off when its input ends), so the kernel must still run.
//!
//! `# expect: TEXT` lines must appear in gdb's output in order, and no
//! `# reject: TEXT` anywhere. A session (not a `test:` script) can act while
//! gdb runs: `# on: TEXT` waits until gdb prints TEXT, then the `# do:`
//! lines after it run in order: `patch ARGUMENTS` (`cargo xtask patch
//! ARGUMENTS`, which must succeed), `type LINE` (typed into the console),
//! `console TEXT` (wait until the console prints TEXT), `fails ARGUMENTS =>
//! TEXT` (`cargo xtask ARGUMENTS` must fail, printing TEXT, within
//! [`REFUSAL_TIME`]). An attach session can act before gdb attaches too:
//! `# first: ACTION` lines run in order once the kernel's shell is up.
//!
//! Every command runs as a separate `cargo xtask` process on the tests' own
//! sockets, lock files and console log (`end_to_end::xtask`), never on those
//! of a kernel the user runs meanwhile.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::end_to_end::{Session, patch_command, start_session, xtask};
use crate::test::{Options, Tally};
use crate::{build, workspace_root};

/// How long a refusal (`# do: fails`) may take: a refusal comes before anything slow.
const REFUSAL_TIME: Duration = Duration::from_secs(10);

/// The kernel a script debugs, and how gdb reaches it.
#[derive(Debug, PartialEq)]
enum Kind {
    Test(String),
    Boot,
    Attach,
}

/// What the runner does while gdb runs.
#[derive(Debug, PartialEq)]
enum Action {
    Patch(Vec<String>),
    Type(String),
    Console(String),
    Fails { arguments: Vec<String>, text: String },
}

/// `# on: TEXT` and the actions that follow it.
#[derive(Debug, PartialEq)]
struct Step {
    on: String,
    actions: Vec<Action>,
}

/// What a gdb script declares about itself.
#[derive(Debug, PartialEq)]
struct Expectations {
    kind: Kind,
    expect: Vec<String>,
    reject: Vec<String>,
    /// What an attach session does before gdb attaches.
    first: Vec<Action>,
    steps: Vec<Step>,
}

/// One `# do:` or `# first:` action.
fn parse_action(value: &str) -> Result<Action, String> {
    let (verb, rest) = value.split_once(' ').unwrap_or((value, ""));
    Ok(match verb {
        "patch" => Action::Patch(rest.split_whitespace().map(String::from).collect()),
        "type" => Action::Type(rest.to_string()),
        "console" => Action::Console(rest.to_string()),
        "fails" => {
            let (arguments, text) = rest.split_once(" => ").ok_or_else(|| format!("`{value}` lacks ` => TEXT`"))?;
            let arguments = arguments.split_whitespace().map(String::from).collect();
            Action::Fails { arguments, text: text.trim().to_string() }
        }
        _ => return Err(format!("unknown action {value:?} (patch, type, console or fails)")),
    })
}

fn parse(script: &str) -> Result<Expectations, String> {
    let mut kind = None;
    let mut expect = Vec::new();
    let mut reject = Vec::new();
    let mut steps: Vec<Step> = Vec::new();
    let mut first = Vec::new();
    for line in script.lines() {
        let Some((key, value)) = line.strip_prefix('#').and_then(|header| header.split_once(':')) else { continue };
        let value = value.trim().to_string();
        match key.trim() {
            "test" => kind = Some(Kind::Test(value)),
            "session" if value == "gdb" => kind = Some(Kind::Boot),
            "session" if value == "attach" => kind = Some(Kind::Attach),
            "session" => return Err(format!("unknown session {value:?} (gdb or attach)")),
            "expect" => expect.push(value),
            "reject" => reject.push(value),
            "on" => steps.push(Step { on: value, actions: Vec::new() }),
            "do" => {
                let step = steps.last_mut().ok_or_else(|| format!("`# do: {value}` before any `# on:`"))?;
                step.actions.push(parse_action(&value)?);
            }
            "first" => first.push(parse_action(&value)?),
            _ => {}
        }
    }
    let kind = kind.ok_or("no '# test:' or '# session:' line")?;
    if matches!(kind, Kind::Test(_)) && !steps.is_empty() {
        return Err("a '# test:' script cannot act ('# on:'): only a session can".into());
    }
    if kind != Kind::Attach && !first.is_empty() {
        return Err("only an attach session acts before gdb ('# first:')".into());
    }
    Ok(Expectations { kind, expect, reject, first, steps })
}

/// The first expectation missing from `output` (searched in order), if any.
fn missing<'a>(output: &str, expect: &'a [String]) -> Option<&'a str> {
    let mut rest = output;
    for text in expect {
        match rest.find(text.as_str()) {
            Some(at) => rest = &rest[at + text.len()..],
            None => return Some(text),
        }
    }
    None
}

/// Whether `output` is what the script expects.
fn judge(output: &str, expectations: &Expectations) -> Result<(), String> {
    if let Some(text) = missing(output, &expectations.expect) {
        return Err(format!("gdb output lacks '{text}' (in order)"));
    }
    match expectations.reject.iter().find(|text| output.contains(text.as_str())) {
        Some(text) => Err(format!("gdb output has '{text}'")),
        None => Ok(()),
    }
}

/// Runs every tests/gdb/*.gdb script and records one result each, then checks
/// that `--test` refuses a name that matches no test.
pub fn debugger_tests(options: &Options, tally: &mut Tally) -> Result<()> {
    let directory = workspace_root().join("tests/gdb");
    let mut scripts: Vec<_> = fs::read_dir(&directory)
        .with_context(|| format!("reading {}", directory.display()))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|extension| extension == "gdb"))
        .collect();
    scripts.sort();
    let selected = |name: &str| options.filter.as_ref().is_none_or(|filter| name.contains(filter.as_str()));
    if scripts.iter().any(|path| selected(&format!("gdb::{}", path.file_stem().unwrap_or_default().to_string_lossy())))
    {
        // Built here, so that the sessions' own builds have nothing to do (their steps have time limits).
        build::main(&build::Options { test: false })?;
        build::main(&build::Options { test: true })?;
    }
    for path in scripts {
        let name = format!("gdb::{}", path.file_stem().unwrap_or_default().to_string_lossy());
        if !selected(&name) {
            continue;
        }
        let script = fs::read_to_string(&path)?;
        let verdict = match parse(&script) {
            Err(error) => Err(format!("{}: {error}", path.display())),
            Ok(expectations) => {
                let output = match &expectations.kind {
                    Kind::Test(test) => test_session(test, &path),
                    Kind::Boot | Kind::Attach => live_session(&expectations, &path),
                };
                match output {
                    Err(error) => Err(format!("gdb session failed: {error:#}")),
                    Ok(output) => judge(&output, &expectations),
                }
            }
        };
        println!("test {name} ... {}", if verdict.is_ok() { "ok" } else { "FAILED" });
        tally.record(&name, &verdict);
    }
    let name = "gdb::unknown-test-is-an-error";
    if selected(name) {
        let verdict = unknown_test_is_an_error().map_err(|error| format!("{error:#}"));
        println!("test {name} ... {}", if verdict.is_ok() { "ok" } else { "FAILED" });
        tally.record(name, &verdict);
    }
    let name = "gdb::terminated-gdb-ends-its-qemu";
    if selected(name) {
        let verdict = terminated_gdb_ends_its_qemu().map_err(|error| format!("{error:#}"));
        println!("test {name} ... {}", if verdict.is_ok() { "ok" } else { "FAILED" });
        tally.record(name, &verdict);
    }
    // The sessions' sockets, locks and console log.
    let _ = fs::remove_dir_all(workspace_root().join(crate::end_to_end::channel_folder()));
    Ok(())
}

/// `cargo xtask gdb --test TEST --batch SCRIPT`; returns what it printed.
fn test_session(test: &str, script: &Path) -> Result<String> {
    let script = script.display().to_string();
    Session::spawn(&["gdb", "--test", test, "--batch", &script], true)?.rest()
}

/// Runs the session `expectations` describes with gdb running `script`,
/// acting at each step; returns what gdb printed.
fn live_session(expectations: &Expectations, script: &Path) -> Result<String> {
    for step in &expectations.steps {
        for action in step.actions.iter().chain(&expectations.first) {
            if let Action::Patch(arguments) = action
                && let [load, name] = arguments.as_slice()
                && load == "load"
            {
                // Built now, so that the load only sends it.
                patch_command(&["build", name])?;
            }
        }
    }
    let attach = expectations.kind == Kind::Attach;
    let mut console = if attach { Some(start_session()?) } else { None };
    for action in &expectations.first {
        act(action, &mut console)?;
    }
    let script = script.display().to_string();
    let arguments: &[&str] =
        if attach { &["gdb", "--attach", "--batch", &script] } else { &["gdb", "--batch", &script] };
    let mut gdb = Session::spawn(arguments, true)?;
    for step in &expectations.steps {
        gdb.wait_for(&step.on)?;
        for action in &step.actions {
            act(action, &mut console)?;
        }
    }
    let output = gdb.rest()?;
    if attach && let Some(run) = console.take() {
        // The kernel must still answer: it powers off when the input ends.
        run.finish().context("after gdb detached")?;
    }
    Ok(output)
}

fn act(action: &Action, console: &mut Option<Session>) -> Result<()> {
    match action {
        Action::Patch(arguments) => patch_command(&arguments.iter().map(String::as_str).collect::<Vec<_>>()),
        Action::Type(line) => console_of(console)?.type_line(line),
        Action::Console(text) => console_of(console)?.wait_for(text),
        Action::Fails { arguments, text } => {
            refused(&arguments.iter().map(String::as_str).collect::<Vec<_>>(), text, Some(REFUSAL_TIME)).map(drop)
        }
    }
}

/// The console of the session: `cargo xtask run`'s own, or `cargo xtask console`, started on first use.
fn console_of(console: &mut Option<Session>) -> Result<&mut Session> {
    if console.is_none() {
        *console = Some(Session::spawn(&["console"], false)?);
    }
    Ok(console.as_mut().expect("just started"))
}

/// `cargo xtask ARGUMENTS` as a separate process must fail, printing `text`
/// (within `limit`, if given); returns what it printed.
fn refused(arguments: &[&str], text: &str, limit: Option<Duration>) -> Result<String> {
    let start = Instant::now();
    let output = xtask()?
        .args(arguments)
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("running `cargo xtask {}`", arguments.join(" ")))?;
    let printed = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    println!("$ cargo xtask {}\n{}", arguments.join(" "), printed.trim_end());
    if output.status.success() || !printed.contains(text) {
        bail!("`cargo xtask {}` should have failed with `{text}`", arguments.join(" "));
    }
    if let Some(limit) = limit
        && start.elapsed() > limit
    {
        bail!(
            "`cargo xtask {}` took {:.1} s to refuse (at most {} s)",
            arguments.join(" "),
            start.elapsed().as_secs_f64(),
            limit.as_secs()
        );
    }
    Ok(printed)
}

/// `cargo xtask gdb --test NAME` with a NAME that no test has fails on the
/// terminal, naming the problem, before it boots anything.
fn unknown_test_is_an_error() -> Result<()> {
    let arguments = ["gdb", "--test", "no_such_kernel_test", "--batch", "tests/gdb/boot.gdb"];
    // It builds the test kernel to read its test names: no time limit.
    let printed = refused(&arguments, "error: no kernel test is named \"no_such_kernel_test\"", None)?;
    if printed.contains("$ qemu-system-ppc64") {
        bail!("it booted QEMU before refusing the name");
    }
    Ok(())
}

/// An interactive `cargo xtask gdb` (gdb reading its commands from standard
/// input) ended by SIGTERM while the kernel runs takes its QEMU with it, as
/// a closed terminal's SIGHUP does: QEMU runs in a process group of its own
/// there (Ctrl-C is gdb's), so nothing else would end it, and it would keep
/// the sockets and the kernel lock's place.
fn terminated_gdb_ends_its_qemu() -> Result<()> {
    let mut gdb = Session::spawn(&["gdb"], true)?;
    gdb.wait_for("Temporary breakpoint 1, ")?;
    gdb.type_line("continue")?;
    gdb.wait_for("Continuing.")?;
    let xtask = gdb.id();
    let qemu = children(xtask, "qemu-system-ppc").into_iter().next().context("no QEMU under `cargo xtask gdb`")?;
    let status = std::process::Command::new("kill").args(["-s", "TERM", &xtask.to_string()]).status()?;
    if !status.success() {
        bail!("could not send SIGTERM to `cargo xtask gdb` (pid {xtask})");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(qemu) {
        if Instant::now() > deadline {
            let _ = std::process::Command::new("kill").args(["-s", "KILL", &qemu.to_string()]).status();
            bail!("QEMU (pid {qemu}) still ran 10 s after `cargo xtask gdb` (pid {xtask}) was terminated");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// The processes whose parent is `parent` and whose name starts with `name`, from /proc.
fn children(parent: u32, name: &str) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
            // `PID (NAME) STATE PPID ...`; the name may hold spaces and parentheses.
            let Some((head, tail)) = stat.rsplit_once(") ") else { return false };
            let named = head.split_once(" (").is_some_and(|(_, comm)| comm.starts_with(name));
            named && tail.split_whitespace().nth(1) == Some(&parent.to_string())
        })
        .collect()
}

/// Whether process `pid` runs (exists and is not a zombie).
fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit_once(") ").is_some_and(|(_, tail)| !tail.starts_with('Z')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_and_ordered_expectations() {
        let script = "# test: kernel::x\n# expect: one\n# expect: two\n# reject: three\nbt\n";
        let parsed = parse(script).unwrap();
        assert_eq!(
            parsed,
            Expectations {
                kind: Kind::Test("kernel::x".into()),
                expect: vec!["one".into(), "two".into()],
                reject: vec!["three".into()],
                first: Vec::new(),
                steps: Vec::new(),
            }
        );
        assert_eq!(missing("one then two", &parsed.expect), None);
        assert_eq!(missing("two then one", &parsed.expect), Some("two"));
        assert_eq!(judge("one, two", &parsed), Ok(()));
        assert_eq!(judge("one, two, three", &parsed), Err("gdb output has 'three'".into()));
        assert!(parse("bt\n").is_err());
    }

    #[test]
    fn sessions_act_at_each_step() {
        let script = "# session: attach\n# on: === ready ===\n# do: patch load greeting\n# do: type hello\n\
                      # on: detached\n# do: console hello from\n";
        let parsed = parse(script).unwrap();
        assert_eq!(parsed.kind, Kind::Attach);
        assert_eq!(
            parsed.steps,
            [
                Step {
                    on: "=== ready ===".into(),
                    actions: vec![Action::Patch(vec!["load".into(), "greeting".into()]), Action::Type("hello".into())],
                },
                Step { on: "detached".into(), actions: vec![Action::Console("hello from".into())] },
            ]
        );
        assert_eq!(parse("# session: gdb\n").unwrap().kind, Kind::Boot);
        assert!(parse("# session: attach\n# do: type hello\n").unwrap_err().contains("before any"));
        assert!(parse("# session: gdb\n# on: x\n# do: dance\n").unwrap_err().contains("unknown action"));
        let fails =
            parse("# session: attach\n# on: x\n# do: fails gdb --batch b.gdb => a kernel is running\n").unwrap();
        assert_eq!(
            fails.steps[0].actions,
            [Action::Fails {
                arguments: vec!["gdb".into(), "--batch".into(), "b.gdb".into()],
                text: "a kernel is running".into()
            }]
        );
        assert!(parse("# test: x\n# on: y\n").unwrap_err().contains("only a session"));
        let first = parse("# session: attach\n# first: patch load greeting\n# first: console loaded\n").unwrap();
        assert_eq!(
            first.first,
            [Action::Patch(vec!["load".into(), "greeting".into()]), Action::Console("loaded".into())]
        );
        assert!(parse("# session: gdb\n# first: type hello\n").unwrap_err().contains("only an attach session"));
    }
}
