//! The console's open input line: the shell's prompt and what has been typed, kept whole when other output breaks in.
//!
//! While the shell waits for a command, a message from another thread (the
//! patch channel's `klp: module ... loaded`, a test, a report) would land
//! after the prompt and leave the user typing on a line without one. The
//! console routes every write through [`InputLine`]: other output starts on a
//! line of its own and marks the input line as owed; the prompt and the
//! typing so far are shown again only once output has gone quiet (the shell's
//! poll loop calls [`InputLine::redisplay_if_quiet`] each time it finds no
//! input), or at once when the user types. So a report printed line by line
//! stays in one piece, with the prompt after it, never between its lines
//! (what readline's redisplay does, lazily).
//!
//! Each method takes `write`, which sends bytes to the terminal; the caller
//! holds the console lock across the call, so the bytes of one call are not
//! interleaved with another's. The text lives in a fixed buffer of
//! [`CAPACITY`] bytes: nothing here allocates, so nothing under the console
//! lock can fail for want of memory; typing beyond the buffer is refused with
//! a bell. A report (an exception, a panic) calls [`InputLine::end_for_report`]
//! first, so that it starts at the left margin; the report itself never
//! redisplays the line.

/// How many bytes the prompt and the typing after it may hold together.
pub const CAPACITY: usize = 256;

/// What the terminal gets for refused typing: the bell.
pub const BELL: &[u8] = b"\x07";

pub struct InputLine {
    /// The prompt and the typing after it: the first `length` bytes.
    text: [u8; CAPACITY],
    length: usize,
    /// The shell is waiting for input: `text` is, or is owed, on screen.
    open: bool,
    /// Other output has started since `text` was last shown in full.
    broken: bool,
    /// That output has not ended its line yet.
    mid_line: bool,
    /// Other output came since the last [`InputLine::redisplay_if_quiet`].
    recent: bool,
}

impl InputLine {
    pub const fn new() -> Self {
        Self { text: [0; CAPACITY], length: 0, open: false, broken: false, mid_line: false, recent: false }
    }

    /// The shell waits for a command: shows `prompt` (cut to [`CAPACITY`] bytes).
    pub fn open(&mut self, prompt: &str, write: &mut dyn FnMut(&[u8])) {
        let prompt = &prompt.as_bytes()[..prompt.len().min(CAPACITY)];
        self.text[..prompt.len()].copy_from_slice(prompt);
        self.length = prompt.len();
        self.open = true;
        self.broken = false;
        write(prompt);
    }

    /// A typed character: echoed and kept, or, when the line is full,
    /// refused with a bell. Returns whether it was kept.
    pub fn push(&mut self, typed: char, write: &mut dyn FnMut(&[u8])) -> bool {
        self.restore(write);
        let mut encoded = [0; 4];
        let encoded = typed.encode_utf8(&mut encoded).as_bytes();
        let Some(room) = self.text.get_mut(self.length..self.length + encoded.len()) else {
            write(BELL);
            return false;
        };
        room.copy_from_slice(encoded);
        self.length += encoded.len();
        write(encoded);
        true
    }

    /// A backspace over `prompt_length` bytes of prompt: erases the last typed
    /// character, if any, on screen too. Returns whether there was one.
    pub fn pop(&mut self, prompt_length: usize, write: &mut dyn FnMut(&[u8])) -> bool {
        if self.length <= prompt_length {
            return false;
        }
        self.restore(write);
        // The last character's first byte: the one before its continuation bytes.
        self.length -= 1;
        while self.length > prompt_length && self.text[self.length] & 0xc0 == 0x80 {
            self.length -= 1;
        }
        write(b"\x08 \x08");
        true
    }

    /// The command line ends (Enter): the shell stops waiting; a newline ends the line on screen.
    pub fn close(&mut self, write: &mut dyn FnMut(&[u8])) {
        self.restore(write);
        self.open = false;
        write(b"\n");
    }

    /// Output from anyone but the shell's input path. While the shell waits,
    /// it goes on a line of its own; the input line is shown again later, by
    /// `redisplay_if_quiet` or the next keystroke.
    pub fn other_output(&mut self, bytes: &[u8], write: &mut dyn FnMut(&[u8])) {
        if bytes.is_empty() {
            return;
        }
        if self.open && !self.broken {
            self.broken = true;
            write(b"\n");
        }
        write(bytes);
        self.mid_line = !bytes.ends_with(b"\n");
        self.recent = true;
    }

    /// The shell found no input: if other output broke into the input line
    /// and none came since the last call (output has gone quiet for one poll
    /// interval), shows the prompt and the typing again. Returns whether it did.
    pub fn redisplay_if_quiet(&mut self, write: &mut dyn FnMut(&[u8])) -> bool {
        if core::mem::take(&mut self.recent) || !(self.open && self.broken) {
            return false;
        }
        self.restore(write);
        true
    }

    /// A report (exception, panic) is about to be written: ends whatever line
    /// is on screen, the input line or unfinished output, so that the report
    /// starts at the left margin. The input line stays owed (the shell, if it
    /// still runs, redisplays it once output is quiet); the report never shows it.
    pub fn end_for_report(&mut self, write: &mut dyn FnMut(&[u8])) {
        if (self.open && !self.broken) || self.mid_line {
            write(b"\n");
        }
        self.broken = self.open;
        self.mid_line = false;
        self.recent = true;
    }

    /// Shows the input line again if other output broke into it.
    fn restore(&mut self, write: &mut dyn FnMut(&[u8])) {
        if self.open && self.broken {
            if self.mid_line {
                write(b"\n");
            }
            self.broken = false;
            self.mid_line = false;
            write(&self.text[..self.length]);
        }
    }
}

/// A terminal as a plain function, lent to [`InputLine`]'s methods as
/// their `write`: the `dyn FnMut` adapter (the vtable and its call shims) is
/// compiled here, in `portable`, where no function has an ftrace site. The
/// kernel's fatal report paths, which other CPUs run, stay untraced so.
pub fn terminal(write: &mut fn(&[u8])) -> &mut dyn FnMut(&[u8]) {
    write
}

/// An [`InputLine`] and its terminal as a `core::fmt::Write`: formatted
/// output (`print!`, reports) goes through [`InputLine::other_output`].
/// Implemented here for the same reason as [`terminal`]: the `Write`
/// methods, compiled in `portable`, have no ftrace site.
pub struct LineWriter<'a> {
    pub line: &'a mut InputLine,
    pub terminal: fn(&[u8]),
}

impl LineWriter<'_> {
    /// Formats `arguments` to the terminal.
    pub fn write_arguments(&mut self, arguments: core::fmt::Arguments) -> core::fmt::Result {
        core::fmt::write(self, arguments)
    }
}

impl core::fmt::Write for LineWriter<'_> {
    fn write_str(&mut self, text: &str) -> core::fmt::Result {
        self.line.other_output(text.as_bytes(), terminal(&mut self.terminal));
        Ok(())
    }
}

impl Default for InputLine {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;
    use alloc::string::String;
    use alloc::vec::Vec;

    /// Runs `steps` against one line and returns the screen's byte stream.
    fn screen(steps: impl FnOnce(&mut InputLine, &mut dyn FnMut(&[u8]))) -> String {
        let mut bytes = Vec::new();
        steps(&mut InputLine::new(), &mut |written: &[u8]| bytes.extend_from_slice(written));
        String::from_utf8(bytes).unwrap()
    }

    static WRITTEN: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());

    fn record(bytes: &[u8]) {
        WRITTEN.lock().unwrap().extend_from_slice(bytes);
    }

    #[test]
    fn the_line_writer_formats_through_other_output_and_the_plain_function() {
        let mut line = InputLine::new();
        let mut write: fn(&[u8]) = record;
        line.open("> ", terminal(&mut write));
        let mut writer = LineWriter { line: &mut line, terminal: record };
        writer.write_arguments(format_args!("value {}\n", 42)).unwrap();
        let shown = String::from_utf8(WRITTEN.lock().unwrap().clone()).unwrap();
        assert_eq!(shown, "> \nvalue 42\n");
    }

    #[test]
    fn a_message_while_typing_goes_on_its_own_line_and_the_prompt_comes_back_when_typing_resumes() {
        let shown = screen(|line, write| {
            line.open("klp> ", write);
            line.push('h', write);
            line.push('e', write);
            line.other_output(b"klp: module greeting loaded\n", write);
            line.push('l', write);
        });
        assert_eq!(shown, "klp> he\nklp: module greeting loaded\nklp> hel");
    }

    #[test]
    fn a_message_in_pieces_stays_whole_and_the_prompt_returns_once_output_is_quiet() {
        let shown = screen(|line, write| {
            line.open("klp> ", write);
            line.other_output(b"klp: ", write);
            line.other_output(b"done\n", write);
            // The shell polls between two lines of one report: output is not quiet yet.
            assert!(!line.redisplay_if_quiet(write));
            line.other_output(b"second\n", write);
            assert!(!line.redisplay_if_quiet(write));
            // A whole poll interval without output: the prompt comes back, once.
            assert!(line.redisplay_if_quiet(write));
            assert!(!line.redisplay_if_quiet(write));
        });
        assert_eq!(shown, "klp> \nklp: done\nsecond\nklp> ");
    }

    #[test]
    fn an_unfinished_message_is_ended_and_followed_by_the_prompt_before_the_next_echo() {
        let shown = screen(|line, write| {
            line.open("klp> ", write);
            line.other_output(b"partial", write);
            line.push('x', write);
        });
        assert_eq!(shown, "klp> \npartial\nklp> x");
    }

    #[test]
    fn an_unfinished_message_is_ended_before_the_quiet_redisplay() {
        let shown = screen(|line, write| {
            line.open("klp> ", write);
            line.push('x', write);
            line.other_output(b"partial", write);
            line.redisplay_if_quiet(write);
            line.redisplay_if_quiet(write);
        });
        assert_eq!(shown, "klp> x\npartial\nklp> x");
    }

    #[test]
    fn typing_beyond_the_capacity_is_refused_with_a_bell_and_the_line_stays_as_it_was() {
        let shown = screen(|line, write| {
            line.open("klp> ", write);
            for _ in 5..CAPACITY {
                assert!(line.push('a', write));
            }
            assert!(!line.push('b', write));
            assert!(!line.push('\u{e9}', write));
            line.other_output(b"note\n", write);
            assert!(line.pop(5, write));
            line.push('c', write);
        });
        let full = format!("klp> {}", "a".repeat(CAPACITY - 5));
        assert_eq!(shown, format!("{full}\x07\x07\nnote\n{full}\x08 \x08c"));
    }

    #[test]
    fn backspace_erases_a_whole_character() {
        let shown = screen(|line, write| {
            line.open("> ", write);
            line.push('a', write);
            line.push('\u{e9}', write);
            assert!(line.pop(2, write));
            line.other_output(b"note\n", write);
            line.push('b', write);
        });
        assert_eq!(shown, "> a\u{e9}\x08 \x08\nnote\n> ab");
    }

    #[test]
    fn a_report_starts_at_the_left_margin_and_never_shows_the_prompt() {
        let shown = screen(|line, write| {
            line.open("klp> ", write);
            line.push('x', write);
            line.end_for_report(write);
            line.other_output(b"Oops: program check\n", write);
            line.other_output(b"NIP: 0\n", write);
        });
        assert_eq!(shown, "klp> x\nOops: program check\nNIP: 0\n");
        let shown = screen(|line, write| {
            line.other_output(b"half a line", write);
            line.end_for_report(write);
            line.other_output(b"kernel panicked\n", write);
        });
        assert_eq!(shown, "half a line\nkernel panicked\n");
        // The shell resumes after a report that ended a half-written line: one newline, not two.
        let shown = screen(|line, write| {
            line.open("klp> ", write);
            line.other_output(b"half", write);
            line.end_for_report(write);
            line.push('x', write);
        });
        assert_eq!(shown, "klp> \nhalf\nklp> x");
    }

    #[test]
    fn backspace_erases_typing_but_never_the_prompt() {
        let shown = screen(|line, write| {
            line.open("klp> ", write);
            line.push('a', write);
            assert!(line.pop(5, write));
            assert!(!line.pop(5, write));
            line.other_output(b"note\n", write);
            line.redisplay_if_quiet(write);
            line.redisplay_if_quiet(write);
        });
        assert_eq!(shown, "klp> a\x08 \x08\nnote\nklp> ");
    }

    #[test]
    fn output_between_commands_is_left_alone() {
        let shown = screen(|line, write| {
            line.open("klp> ", write);
            line.push('x', write);
            line.close(write);
            line.other_output(b"command output\n", write);
            line.open("klp> ", write);
        });
        assert_eq!(shown, "klp> x\ncommand output\nklp> ");
    }
}
