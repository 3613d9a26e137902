//! `trace`: records a function_graph trace of shell commands and draws it as a flame graph and a Perfetto trace.
//!
//! Boots the normal kernel, types `trace graph GLOB`, the given commands,
//! `trace off` and `trace dump`, and turns the dumped `graph-event` lines
//! into a flame graph SVG (inferno) and a Chrome trace-event JSON file that
//! Perfetto and chrome://tracing open.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};

use anyhow::{Context, Result, bail};
use serde_json::json;

use crate::workspace_root;

#[derive(clap::Args)]
pub struct Options {
    /// Functions to trace (a glob over kernel function names).
    #[arg(long, default_value = "kernel::*")]
    pub functions: String,
    /// Write a flame graph SVG here.
    #[arg(long, value_name = "OUT.svg")]
    pub flamegraph: Option<PathBuf>,
    /// Write a Chrome trace-event JSON file (Perfetto, chrome://tracing) here.
    #[arg(long, value_name = "OUT.json")]
    pub perfetto: Option<PathBuf>,
    /// Shell commands to trace (default: threads, mem, hello).
    #[arg(last = true)]
    pub commands: Vec<String>,
}

/// One function_graph event as the kernel dumps it.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub entry: bool,
    pub thread: u64,
    pub depth: u32,
    pub time_nanoseconds: u64,
    pub duration_nanoseconds: u64,
    pub name: String,
}

/// Parses `graph-event E|X CPU THREAD DEPTH TIME DURATION NAME`.
pub fn parse_event(line: &str) -> Option<Event> {
    let mut words = line.trim().strip_prefix("graph-event ")?.splitn(7, ' ');
    let entry = match words.next()? {
        "E" => true,
        "X" => false,
        _ => return None,
    };
    let _cpu: u32 = words.next()?.parse().ok()?;
    Some(Event {
        entry,
        thread: words.next()?.parse().ok()?,
        depth: words.next()?.parse().ok()?,
        time_nanoseconds: words.next()?.parse().ok()?,
        duration_nanoseconds: words.next()?.parse().ok()?,
        name: words.next()?.to_string(),
    })
}

/// Folded stacks (`thread-N;outer;inner SELF_NANOSECONDS`), the flame graph input:
/// each call's time minus its traced callees' time.
pub fn folded(events: &[Event]) -> Vec<String> {
    let mut stacks: BTreeMap<u64, Vec<(String, u64)>> = BTreeMap::new();
    let mut totals: BTreeMap<String, u64> = BTreeMap::new();
    for event in events {
        let stack = stacks.entry(event.thread).or_default();
        if event.entry {
            stack.push((event.name.clone(), 0));
            continue;
        }
        // An exit without its entry (the trace began inside a call) is skipped.
        if stack.last().is_none_or(|(name, _)| *name != event.name) {
            continue;
        }
        let (_, children) = stack.pop().expect("checked");
        let path: Vec<&str> = stack.iter().map(|(name, _)| name.as_str()).collect();
        let key = format!(
            "thread-{};{}",
            event.thread,
            path.iter().chain([&event.name.as_str()]).copied().collect::<Vec<_>>().join(";")
        );
        *totals.entry(key).or_default() += event.duration_nanoseconds.saturating_sub(children);
        if let Some((_, parent_children)) = stack.last_mut() {
            *parent_children += event.duration_nanoseconds;
        }
    }
    totals.into_iter().filter(|(_, time)| *time > 0).map(|(stack, time)| format!("{stack} {time}")).collect()
}

/// The Chrome trace-event JSON: a B/E pair per call, times in microseconds.
pub fn trace_events(events: &[Event]) -> serde_json::Value {
    let events: Vec<_> = events
        .iter()
        .map(|event| {
            json!({
                "name": event.name,
                "ph": if event.entry { "B" } else { "E" },
                "ts": event.time_nanoseconds as f64 / 1000.0,
                "pid": 1,
                "tid": event.thread,
            })
        })
        .collect();
    json!({ "traceEvents": events, "displayTimeUnit": "ns" })
}

pub fn main(options: &Options) -> Result<ExitCode> {
    let commands = if options.commands.is_empty() {
        vec!["threads".to_string(), "mem".to_string(), "hello".to_string()]
    } else {
        options.commands.clone()
    };
    let mut input = format!("trace graph {}\n", options.functions);
    for command in &commands {
        input.push_str(command);
        input.push('\n');
    }
    input.push_str("trace off\ntrace dump\n");
    let mut run = Command::new(std::env::current_exe()?);
    run.arg("run").current_dir(workspace_root()).stdin(Stdio::piped()).stdout(Stdio::piped());
    let mut child = run.spawn().context("starting `cargo xtask run`")?;
    child.stdin.take().expect("piped").write_all(input.as_bytes())?;
    let output = child.wait_with_output()?;
    let console = String::from_utf8_lossy(&output.stdout);
    let events: Vec<Event> = console.lines().filter_map(parse_event).collect();
    if events.is_empty() {
        print!("{console}");
        bail!("the kernel dumped no graph events: does '{}' match traced functions?", options.functions);
    }
    println!("{} function_graph events from {} command(s)", events.len(), commands.len());
    if let Some(path) = &options.flamegraph {
        let lines = folded(&events);
        let mut svg = Vec::new();
        let mut flame = inferno::flamegraph::Options::default();
        flame.title = format!("klp: {}", commands.join(", "));
        flame.count_name = "ns".into();
        inferno::flamegraph::from_lines(&mut flame, lines.iter().map(String::as_str), &mut svg)
            .context("drawing the flame graph")?;
        fs::write(path, svg).with_context(|| format!("writing {}", path.display()))?;
        println!("flame graph: {}", path.display());
    }
    if let Some(path) = &options.perfetto {
        fs::write(path, serde_json::to_vec_pretty(&trace_events(&events))?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("trace events: {} (open in https://ui.perfetto.dev or chrome://tracing)", path.display());
    }
    if options.flamegraph.is_none() && options.perfetto.is_none() {
        console.lines().filter(|line| line.starts_with("graph-event")).for_each(|line| println!("{line}"));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(entry: bool, name: &str, time: u64, duration: u64) -> Event {
        Event { entry, thread: 0, depth: 0, time_nanoseconds: time, duration_nanoseconds: duration, name: name.into() }
    }

    #[test]
    fn parses_dump_lines() {
        let parsed = parse_event("graph-event X 0 3 1 12000 500 kernel::shell::mem").unwrap();
        assert_eq!(
            parsed,
            Event {
                entry: false,
                thread: 3,
                depth: 1,
                time_nanoseconds: 12000,
                duration_nanoseconds: 500,
                name: "kernel::shell::mem".into()
            }
        );
        assert!(parse_event("klp> threads").is_none());
        assert!(parse_event("graph-event Q 0 0 0 0 0 x").is_none());
    }

    #[test]
    fn folds_self_time() {
        let events =
            [event(true, "a", 0, 0), event(true, "b", 10, 0), event(false, "b", 40, 30), event(false, "a", 100, 100)];
        assert_eq!(folded(&events), ["thread-0;a 70", "thread-0;a;b 30"]);
        let json = trace_events(&events);
        assert_eq!(json["traceEvents"].as_array().unwrap().len(), 4);
        assert_eq!(json["traceEvents"][1]["ph"], "B");
    }
}
