//! What modules log (`klp_log`, Linux's pr_info): printed on the console and kept, the last `LOG_LINES` lines, for `klp log` and the tests.
use crate::sync::Mutex;
use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;

/// How many lines are kept.
pub const LOG_LINES: usize = 64;

static LINES: Mutex<VecDeque<String>> = Mutex::new(VecDeque::new());

/// Prints `line` and keeps it (the oldest line goes when `LOG_LINES` are kept).
pub fn log(line: &str) {
    crate::println!("{line}");
    let mut lines = LINES.lock();
    if lines.len() == LOG_LINES {
        lines.pop_front();
    }
    lines.push_back(String::from(line));
}

/// The kept lines, oldest first.
pub fn lines() -> Vec<String> {
    LINES.lock().iter().cloned().collect()
}

/// Forgets every kept line (tests start from an empty log).
pub fn clear() {
    let mut lines = LINES.lock();
    lines.clear();
    lines.shrink_to_fit();
}
