//! The console's open input line: the shell's prompt and what has been typed, kept whole when other output breaks in.
//!
//! While the shell waits for a command, a message from another thread (the
//! patch channel's `klp: module ... loaded`, a test, a report) would land
//! after the prompt and leave the user typing on a line without one. The
//! console routes every write through [`InputLine`]: other output starts on a
//! line of its own, and once it ends its line, the prompt and the typing so
//! far are shown again below it (what readline's redisplay does).
//!
//! Each method takes `write`, which sends bytes to the terminal; the caller
//! holds the console lock across the call, so the bytes of one call are not
//! interleaved with another's. Only the shell's own calls (`open`, `push`,
//! `pop`, `close`) change the text; `other_output` only reads it, so a writer
//! that must not allocate (an interrupt report, a panic) never does here.

use alloc::string::String;

pub struct InputLine {
    /// The prompt and the typing after it.
    text: String,
    /// The shell is waiting for input: `text` is, or is owed, on screen.
    open: bool,
    /// Other output has started since `text` was last shown in full.
    broken: bool,
    /// That output has not ended its line yet.
    mid_line: bool,
}

impl InputLine {
    pub const fn new() -> Self {
        Self { text: String::new(), open: false, broken: false, mid_line: false }
    }

    /// The shell waits for a command: shows `prompt`.
    pub fn open(&mut self, prompt: &str, write: &mut dyn FnMut(&[u8])) {
        self.text.clear();
        self.text.push_str(prompt);
        self.open = true;
        self.broken = false;
        write(prompt.as_bytes());
    }

    /// A typed character, echoed.
    pub fn push(&mut self, typed: char, write: &mut dyn FnMut(&[u8])) {
        self.restore(write);
        self.text.push(typed);
        let mut encoded = [0; 4];
        write(typed.encode_utf8(&mut encoded).as_bytes());
    }

    /// A backspace over `prompt_length` bytes of prompt: erases the last typed
    /// character, if any, on screen too. Returns whether there was one.
    pub fn pop(&mut self, prompt_length: usize, write: &mut dyn FnMut(&[u8])) -> bool {
        if self.text.len() <= prompt_length {
            return false;
        }
        self.restore(write);
        self.text.pop();
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
    /// it goes on a line of its own, and when it ends its line the prompt and
    /// the typing are shown again.
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
        if self.broken && !self.mid_line {
            self.restore(write);
        }
    }

    /// Shows the input line again if other output broke into it.
    fn restore(&mut self, write: &mut dyn FnMut(&[u8])) {
        if self.open && self.broken {
            if self.mid_line {
                write(b"\n");
            }
            self.broken = false;
            self.mid_line = false;
            write(self.text.as_bytes());
        }
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
    use alloc::vec::Vec;

    /// Runs `steps` against one line and returns the screen's byte stream.
    fn screen(steps: impl FnOnce(&mut InputLine, &mut dyn FnMut(&[u8]))) -> String {
        let mut bytes = Vec::new();
        steps(&mut InputLine::new(), &mut |written: &[u8]| bytes.extend_from_slice(written));
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn a_message_while_typing_goes_on_its_own_line_and_the_prompt_comes_back() {
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
    fn a_message_in_pieces_is_one_line_and_the_prompt_returns_after_its_end() {
        let shown = screen(|line, write| {
            line.open("klp> ", write);
            line.other_output(b"klp: ", write);
            line.other_output(b"done\n", write);
            line.other_output(b"second\n", write);
        });
        assert_eq!(shown, "klp> \nklp: done\nklp> \nsecond\nklp> ");
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
    fn backspace_erases_typing_but_never_the_prompt() {
        let shown = screen(|line, write| {
            line.open("klp> ", write);
            line.push('a', write);
            assert!(line.pop(5, write));
            assert!(!line.pop(5, write));
            line.other_output(b"note\n", write);
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
