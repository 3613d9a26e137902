//! The debugger phase of `cargo xtask test`: gdb batch sessions whose output must show what the scripts expect.
//!
//! Each `tests/gdb/NAME.gdb` starts with header comments: `# test: KTEST`
//! (the in-kernel test the kernel runs while gdb is attached) and
//! `# expect: TEXT` lines, which must appear in gdb's output in order.

use std::fs;

use anyhow::{Context, Result};

use crate::gdb::batch_output;
use crate::test::{Options, Tally};
use crate::workspace_root;

/// What a gdb script declares about itself.
#[derive(Debug, PartialEq)]
struct Expectations {
    test: String,
    expect: Vec<String>,
}

fn parse(script: &str) -> Option<Expectations> {
    let mut test = None;
    let mut expect = Vec::new();
    for line in script.lines() {
        if let Some(name) = line.strip_prefix("# test:") {
            test = Some(name.trim().to_string());
        } else if let Some(text) = line.strip_prefix("# expect:") {
            expect.push(text.trim().to_string());
        }
    }
    Some(Expectations { test: test?, expect })
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

/// Runs every tests/gdb/*.gdb script and records one result each.
pub fn debugger_tests(options: &Options, tally: &mut Tally) -> Result<()> {
    let directory = workspace_root().join("tests/gdb");
    let mut scripts: Vec<_> = fs::read_dir(&directory)
        .with_context(|| format!("reading {}", directory.display()))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|extension| extension == "gdb"))
        .collect();
    scripts.sort();
    for path in scripts {
        let name = format!("gdb::{}", path.file_stem().unwrap_or_default().to_string_lossy());
        if options.filter.as_ref().is_some_and(|filter| !name.contains(filter.as_str())) {
            continue;
        }
        let script = fs::read_to_string(&path)?;
        let verdict = match parse(&script) {
            None => Err(format!("{} has no '# test:' line", path.display())),
            Some(expectations) => match batch_output(&expectations.test, &path) {
                Err(error) => Err(format!("gdb session failed: {error:#}")),
                Ok(output) => {
                    println!("{output}");
                    match missing(&output, &expectations.expect) {
                        None => Ok(()),
                        Some(text) => Err(format!("gdb output lacks '{text}' (in order)")),
                    }
                }
            },
        };
        println!("test {name} ... {}", if verdict.is_ok() { "ok" } else { "FAILED" });
        tally.record(&name, &verdict);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_and_ordered_expectations() {
        let script = "# test: kernel::x\n# expect: one\n# expect: two\nbt\n";
        let parsed = parse(script).unwrap();
        assert_eq!(parsed, Expectations { test: "kernel::x".into(), expect: vec!["one".into(), "two".into()] });
        assert_eq!(missing("one then two", &parsed.expect), None);
        assert_eq!(missing("two then one", &parsed.expect), Some("two"));
        assert!(parse("bt\n").is_none());
    }
}
