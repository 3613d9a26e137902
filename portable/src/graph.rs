//! Rendering function-graph events in the layout of Linux's `function_graph` tracer.
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

/// Entry into or exit from a traced function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Entry,
    Exit,
}

/// One event, with the function already named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphLine<'a> {
    pub kind: Kind,
    pub name: &'a str,
    /// Call depth (0 = outermost traced call of its thread).
    pub depth: u32,
    pub thread: u64,
    pub cpu: u32,
    /// For exits: nanoseconds since the matching entry.
    pub duration_nanoseconds: u64,
}

/// The two header lines Linux prints.
pub const HEADER: [&str; 2] =
    ["# CPU  DURATION                  FUNCTION CALLS", "# |     |   |                     |   |   |   |"];

fn duration(nanoseconds: u64, show: bool) -> String {
    if show { format!("{}.{:03} us", nanoseconds / 1000, nanoseconds % 1000) } else { String::new() }
}

/// Renders events as Linux does: a call with no traced callee becomes one
/// line `name();` with its duration; others open `name() {` and close `}`
/// with the duration. A change of thread prints a separator line. With
/// `show_durations` false the duration column is blank (for golden tests).
pub fn render(events: &[GraphLine], show_durations: bool) -> Vec<String> {
    let mut lines = Vec::new();
    let mut thread = None;
    let mut index = 0;
    while index < events.len() {
        let event = &events[index];
        if thread != Some(event.thread) {
            if thread.is_some() {
                lines.push(format!(" {}) ------ thread {} ------", event.cpu, event.thread));
            }
            thread = Some(event.thread);
        }
        let indent = "  ".repeat(event.depth as usize);
        let leaf = events.get(index + 1).filter(|next| {
            event.kind == Kind::Entry
                && next.kind == Kind::Exit
                && next.name == event.name
                && next.depth == event.depth
                && next.thread == event.thread
        });
        let line = match (event.kind, leaf) {
            (Kind::Entry, Some(exit)) => {
                index += 1;
                let time = duration(exit.duration_nanoseconds, show_durations);
                format!(" {}) {:>10}    |  {indent}{}();", event.cpu, time, event.name)
            }
            (Kind::Entry, None) => format!(" {}) {:>10}    |  {indent}{}() {{", event.cpu, "", event.name),
            (Kind::Exit, _) => {
                let time = duration(event.duration_nanoseconds, show_durations);
                format!(" {}) {:>10}    |  {indent}}} /* {} */", event.cpu, time, event.name)
            }
        };
        lines.push(line);
        index += 1;
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: Kind, name: &'static str, depth: u32, duration_nanoseconds: u64) -> GraphLine<'static> {
        GraphLine { kind, name, depth, thread: 1, cpu: 0, duration_nanoseconds }
    }

    #[test]
    fn leaves_fold_and_nesting_indents() {
        let events = [
            event(Kind::Entry, "a", 0, 0),
            event(Kind::Entry, "b", 1, 0),
            event(Kind::Exit, "b", 1, 500),
            event(Kind::Entry, "c", 1, 0),
            event(Kind::Entry, "d", 2, 0),
            event(Kind::Exit, "d", 2, 200),
            event(Kind::Exit, "c", 1, 1000),
            event(Kind::Exit, "a", 0, 3000),
        ];
        let expected = [
            " 0)               |  a() {",
            " 0)   0.500 us    |    b();",
            " 0)               |    c() {",
            " 0)   0.200 us    |      d();",
            " 0)   1.000 us    |    } /* c */",
            " 0)   3.000 us    |  } /* a */",
        ];
        assert_eq!(render(&events, true), expected);
        let blank = render(&events, false);
        assert_eq!(blank[1], " 0)               |    b();");
    }

    #[test]
    fn thread_changes_are_marked() {
        let mut other = event(Kind::Entry, "x", 0, 0);
        other.thread = 2;
        let mut other_exit = event(Kind::Exit, "x", 0, 10);
        other_exit.thread = 2;
        let lines = render(&[event(Kind::Entry, "a", 0, 0), other, other_exit, event(Kind::Exit, "a", 0, 5)], true);
        assert_eq!(lines.len(), 5, "{lines:?}");
        assert!(lines[1].contains("thread 2"));
        assert!(lines[2].contains("x();"));
        assert!(lines[3].contains("thread 1"));
    }
}
