//! The from-diff corpus end to end: each tests/from-diff/NAME.diff made into a patch for one running kernel, checked and unloaded, or refused with the kernel untouched.
//!
//! Part of the end-to-end phase of `cargo xtask test` (`end_to_end.rs` calls
//! [`run`]): one `cargo xtask run` boot for the whole corpus; for each case
//! `cargo xtask patch from-diff tests/from-diff/NAME.diff --load [--base REV]`
//! runs as a separate process on the tests' own patch channel, and the shell
//! commands of the case's header are typed into the kernel's console. The
//! header's format is in tests/from-diff/README.md; [`Case::parse`] reads it.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::end_to_end::{Session, patch_output, start_session};
use crate::test::{Options, Tally};
use crate::workspace_root;

/// Where the corpus lives, relative to the workspace root.
pub const CORPUS: &str = "tests/from-diff";

/// What `from-diff --load` must do with a case's diff.
#[derive(Debug, PartialEq)]
pub enum Expect {
    /// The patch loads; the `after` checks hold while it is loaded.
    Loads,
    /// The command fails, its output containing this text; nothing changes.
    Refused(String),
}

/// A shell command and a text its output must contain.
#[derive(Debug, PartialEq)]
pub struct Check {
    pub command: String,
    pub text: String,
}

/// One case of the corpus: its diff's header.
#[derive(Debug, PartialEq)]
pub struct Case {
    /// The diff's file stem: the patch's name.
    pub name: String,
    pub expect: Expect,
    /// `--base REV`, when given.
    pub base: Option<String>,
    pub before: Vec<Check>,
    pub after: Vec<Check>,
    /// Checked after the unload instead of `before`, when there are any.
    pub unloaded: Vec<Check>,
}

impl Case {
    /// Reads the header of `text`, the diff of case `name`: its lines before the first `diff --git`.
    pub fn parse(name: &str, text: &str) -> Result<Case> {
        let mut expect = None;
        let (mut base, mut before, mut after, mut unloaded) = (None, Vec::new(), Vec::new(), Vec::new());
        for (index, line) in text.lines().enumerate().take_while(|(_, line)| !line.starts_with("diff --git ")) {
            let number = index + 1;
            if line.trim().is_empty() {
                continue;
            }
            let Some(content) = line.strip_prefix('#') else {
                bail!("{name}.diff:{number}: a header line starts with `#`: {line:?}");
            };
            // `# key: value`; any other `#` line is a comment.
            let Some((key, value)) = content.trim_start().split_once(':') else { continue };
            if key.is_empty() || !key.chars().all(|character| character.is_ascii_alphabetic()) {
                continue;
            }
            let value = value.trim();
            let check = || -> Result<Check> {
                let (command, text) = value
                    .split_once("=>")
                    .with_context(|| format!("{name}.diff:{number}: `{key}` takes `COMMAND => TEXT`: {value:?}"))?;
                let (command, text) = (command.trim(), text.trim());
                if command.is_empty() || text.is_empty() {
                    bail!("{name}.diff:{number}: `{key}` needs a command and a text: {value:?}");
                }
                Ok(Check { command: command.to_string(), text: text.to_string() })
            };
            match key {
                "expect" if expect.is_some() => bail!("{name}.diff:{number}: a second `expect`"),
                "expect" if value == "loads" => expect = Some(Expect::Loads),
                "expect" => match value.strip_prefix("refused:").map(str::trim) {
                    Some(text) if !text.is_empty() => expect = Some(Expect::Refused(text.to_string())),
                    _ => bail!("{name}.diff:{number}: `expect` is `loads` or `refused: TEXT`, not {value:?}"),
                },
                "base" if base.is_some() => bail!("{name}.diff:{number}: a second `base`"),
                "base" if !value.is_empty() && !value.contains(char::is_whitespace) => base = Some(value.to_string()),
                "base" => bail!("{name}.diff:{number}: `base` takes one revision, not {value:?}"),
                "before" => before.push(check()?),
                "after" => after.push(check()?),
                "unloaded" => unloaded.push(check()?),
                _ => bail!("{name}.diff:{number}: unknown key `{key}` (expect, base, before, after, unloaded)"),
            }
        }
        if !text.lines().any(|line| line.starts_with("diff --git ")) {
            bail!("{name}.diff has no `diff --git` line");
        }
        let expect = expect.with_context(|| format!("{name}.diff says nothing of what to `expect`"))?;
        if matches!(expect, Expect::Refused(_)) && !(after.is_empty() && unloaded.is_empty()) {
            bail!("{name}.diff: a refused case has no `after` or `unloaded` checks");
        }
        Ok(Case { name: name.to_string(), expect, base, before, after, unloaded })
    }

    /// The test's name in `cargo xtask test`'s output and filter.
    pub fn test_name(&self) -> String {
        format!("from_diff::{}", self.name)
    }
}

/// Every case of the corpus, in the order of their names.
pub fn corpus() -> Result<Vec<(PathBuf, Case)>> {
    let folder = workspace_root().join(CORPUS);
    let mut paths: Vec<PathBuf> = fs::read_dir(&folder)
        .with_context(|| format!("reading {}", folder.display()))?
        .filter_map(|entry| Some(entry.ok()?.path()))
        .filter(|path| path.extension().is_some_and(|extension| extension == "diff"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let name = path.file_stem().and_then(|stem| stem.to_str()).context("a diff's name")?.to_string();
            let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            Ok((path, Case::parse(&name, &text)?))
        })
        .collect()
}

/// The cases whose test names contain the filter.
pub fn selected(options: &Options) -> Result<Vec<(PathBuf, Case)>> {
    let cases = corpus()?;
    Ok(cases
        .into_iter()
        .filter(|(_, case)| options.filter.as_ref().is_none_or(|filter| case.test_name().contains(filter.as_str())))
        .collect())
}

/// Runs `cases` against one booted kernel, recording each by name; a boot
/// that fails, or a kernel that does not power off cleanly, fails too.
pub fn run(cases: &[(PathBuf, Case)], tally: &mut Tally) {
    if cases.is_empty() {
        return;
    }
    let mut session = match start_session() {
        Ok(session) => session,
        Err(error) => {
            tally.record("from_diff::boot", &Err(format!("{error:#}")));
            return;
        }
    };
    for (path, case) in cases {
        let verdict = run_case(&mut session, path, case).map_err(|error| format!("{error:#}"));
        let outcome = match (&verdict, &case.expect) {
            (Err(_), _) => "FAILED",
            (Ok(()), Expect::Loads) => "ok (loaded, checked, unloaded)",
            (Ok(()), Expect::Refused(_)) => "ok (refused, kernel untouched)",
        };
        println!("\ntest {} ... {outcome}", case.test_name());
        tally.record(&case.test_name(), &verdict);
    }
    let verdict = session.finish().map_err(|error| format!("{error:#}"));
    if verdict.is_err() {
        tally.record("from_diff::boot", &verdict);
    }
}

/// One case: its checks, the command, the checks again.
fn run_case(session: &mut Session, path: &Path, case: &Case) -> Result<()> {
    checks(session, "before", &case.before)?;
    let list = session.shell("klp list")?;
    let diff = path.strip_prefix(workspace_root()).unwrap_or(path).display().to_string();
    let mut arguments = vec!["from-diff", diff.as_str(), "--load"];
    if let Some(base) = &case.base {
        arguments.extend(["--base", base]);
    }
    let started = std::time::Instant::now();
    let (success, output) = patch_output(&arguments)?;
    let seconds = started.elapsed().as_secs_f64();
    match &case.expect {
        Expect::Loads => {
            if !success {
                bail!("`cargo xtask patch {}` failed", arguments.join(" "));
            }
            // The benchmark: wall clock from the command to the kernel's reply, and the
            // module's size (against the hand-written sample where there is one).
            let size = |name: &str| std::fs::metadata(crate::patch::signed_path(name)).map(|meta| meta.len());
            let sample = match case.name.as_str() {
                "greeting-string" => {
                    size("greeting").map(|bytes| format!("; hand-written patches/greeting: {bytes} bytes"))
                }
                _ => Ok(String::new()),
            };
            println!(
                "\nfrom-diff {}: generated and loaded in {seconds:.1} s; module {} bytes signed{}",
                case.name,
                size(&case.name).map_or_else(|_| "?".to_string(), |bytes| bytes.to_string()),
                sample.unwrap_or_default()
            );
            session.wait_for(&format!("klp: module '{}' loaded", case.name))?;
            let loaded = checks(session, "after", &case.after);
            // Unloaded whatever the checks said, so that the next cases find the kernel as it was.
            let unload = patch_output(&["unload", &case.name]);
            loaded?;
            match unload? {
                (true, _) => session.wait_for(&format!("klp: module '{}' unloaded", case.name))?,
                (false, _) => bail!("`cargo xtask patch unload {}` failed", case.name),
            }
            match case.unloaded.is_empty() {
                true => checks(session, "before (again, after the unload)", &case.before),
                false => checks(session, "unloaded", &case.unloaded),
            }
        }
        Expect::Refused(text) => {
            if success {
                // Take it out again, so that the next cases find the kernel as it was.
                let _ = patch_output(&["unload", &case.name]);
                bail!("`cargo xtask patch {}` succeeded; expected a refusal saying {text:?}", arguments.join(" "));
            }
            if !output.contains(text.as_str()) {
                bail!("`cargo xtask patch {}` failed without saying {text:?}", arguments.join(" "));
            }
            let now = session.shell("klp list")?;
            if now != list || now.contains(&case.name) {
                bail!("`klp list` changed after the refusal:\nbefore:\n{list}\nafter:\n{now}");
            }
            checks(session, "before (again, after the refusal)", &case.before)
        }
    }
}

/// Types each check's command; its output must contain the check's text.
fn checks(session: &mut Session, what: &str, checks: &[Check]) -> Result<()> {
    for check in checks {
        let output = session.shell(&check.command)?;
        if !output.contains(&check.text) {
            bail!("{what}: `{}` printed {:?}, not {:?}", check.command, output.trim_end(), check.text);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIFF: &str = "diff --git a/kernel/src/demo.rs b/kernel/src/demo.rs\n--- a/kernel/src/demo.rs\n";

    fn check(command: &str, text: &str) -> Check {
        Check { command: command.into(), text: text.into() }
    }

    #[test]
    fn reads_a_header() {
        let text = format!(
            "# A comment: with a colon after words.\n# expect: loads\n# base: HEAD~1\n\
             # before: demo ticket => ticket() = 0\n# after: demo ticket => ticket() = 1001\n\
             # after: klp list => a => b\n# unloaded: demo ticket => ticket() = 2\n{DIFF}# before: x => y\n"
        );
        let case = Case::parse("local-static", &text).unwrap();
        assert_eq!(
            case,
            Case {
                name: "local-static".into(),
                expect: Expect::Loads,
                base: Some("HEAD~1".into()),
                before: vec![check("demo ticket", "ticket() = 0")],
                after: vec![check("demo ticket", "ticket() = 1001"), check("klp list", "a => b")],
                unloaded: vec![check("demo ticket", "ticket() = 2")],
            }
        );
        assert_eq!(case.test_name(), "from_diff::local-static");
        let refused = Case::parse("notrace", &format!("# expect: refused: no ftrace site\n{DIFF}")).unwrap();
        assert_eq!(refused.expect, Expect::Refused("no ftrace site".into()));
        assert_eq!((refused.base, refused.before.len()), (None, 0));
    }

    #[test]
    fn refuses_a_bad_header() {
        let error = |header: &str| format!("{:#}", Case::parse("case", &format!("{header}{DIFF}")).unwrap_err());
        assert!(error("").contains("nothing of what to `expect`"));
        assert!(error("# expect: loads\n# expect: loads\n").contains("a second `expect`"));
        assert!(error("# expect: fails\n").contains("`loads` or `refused: TEXT`"));
        assert!(error("# expect: refused:\n").contains("`loads` or `refused: TEXT`"));
        assert!(error("# expect: loads\n# afterward: hello => x\n").contains("case.diff:2: unknown key `afterward`"));
        assert!(error("# expect: loads\n# after: hello\n").contains("takes `COMMAND => TEXT`"));
        assert!(error("# expect: loads\n# after:  => x\n").contains("needs a command and a text"));
        assert!(error("# expect: loads\n# base: a b\n").contains("one revision"));
        assert!(error("# expect: loads\n# base: a\n# base: b\n").contains("a second `base`"));
        assert!(error("# expect: refused: x\n# after: hello => y\n").contains("no `after` or `unloaded`"));
        assert!(error("expect: loads\n").contains("case.diff:1: a header line starts with `#`"));
        let no_diff = Case::parse("case", "# expect: loads\n").unwrap_err();
        assert!(format!("{no_diff:#}").contains("no `diff --git` line"));
    }

    /// Every diff of the corpus has a header that parses; it applies to the
    /// source here unless it expects git's refusal (a change to the lines a
    /// diff touches needs it made again); the README's table names exactly
    /// the corpus's cases.
    #[test]
    fn the_corpus_parses_applies_and_its_readme_lists_every_case() {
        let cases = corpus().unwrap();
        for (path, case) in &cases {
            let applies = crate::command("git").args(["apply", "--check"]).arg(path).output().unwrap().status.success();
            let refused_by_git = case.expect == Expect::Refused("patch does not apply".into());
            assert_eq!(applies, !refused_by_git, "{}: `git apply --check` applies: {applies}", case.name);
        }
        let names: Vec<&str> = cases.iter().map(|(_, case)| case.name.as_str()).collect();
        assert!(names.contains(&"greeting-string") && names.contains(&"base-mismatch"), "{names:?}");
        let readme = fs::read_to_string(workspace_root().join(CORPUS).join("README.md")).unwrap();
        let mut listed: Vec<&str> = readme
            .lines()
            .filter_map(|line| line.strip_prefix("| ")?.split_once(" |").map(|(name, _)| name))
            .filter(|name| *name != "case")
            .collect();
        listed.sort();
        assert_eq!(listed, names, "tests/from-diff/README.md's table vs the diffs");
    }
}
