//! The hypervisor console: `print!`/`println!` through H_PUT_TERM_CHAR, input through H_GET_TERM_CHAR.
use crate::arch::hcall;
use macros::notrace;
use portable::input_line::InputLine;
use spin::Mutex;

/// Virtual terminal number of the default spapr-vty (0 names the first one).
const TERMINAL: u64 = 0;

/// Serialises writers so lines from different threads do not interleave.
pub static CONSOLE: Mutex<Console> = Mutex::new(Console { input: InputLine::new() });

/// The hypervisor virtual terminal 0.
pub struct Console {
    /// The shell's prompt and typing while it waits: other output moves it below itself.
    input: InputLine,
}

/// Sends bytes to the terminal (what `InputLine` writes through).
fn to_terminal(bytes: &[u8]) {
    write_terminal(TERMINAL, bytes);
}

impl Console {
    /// Writes all of `bytes`, 16 at a time, retrying while the hypervisor is
    /// busy; while the shell waits for input, on a line of its own with the
    /// prompt shown again after it.
    pub fn write_bytes(&mut self, bytes: &[u8]) {
        self.input.other_output(bytes, &mut to_terminal);
    }
}

/// The shell's input path: shows `prompt` and waits for typing.
pub fn input_open(prompt: &str) {
    with_input(|input| input.open(prompt, &mut to_terminal));
}

/// Echoes and keeps one typed character, or refuses it with a bell when the
/// line is full (`input_line::CAPACITY`); returns whether it was kept.
pub fn input_push(typed: char) -> bool {
    let mut kept = false;
    with_input(|input| kept = input.push(typed, &mut to_terminal));
    kept
}

/// The shell found no input: shows the prompt and the typing again if other
/// output broke into them and has been quiet since the last call.
pub fn input_redisplay_if_quiet() {
    with_input(|input| {
        input.redisplay_if_quiet(&mut to_terminal);
    });
}

/// Erases the last typed character, never the prompt of `prompt_length` bytes.
pub fn input_pop(prompt_length: usize) {
    with_input(|input| {
        input.pop(prompt_length, &mut to_terminal);
    });
}

/// Ends the typed line: output from here on is the command's.
pub fn input_close() {
    with_input(|input| input.close(&mut to_terminal));
}

fn with_input(action: impl FnOnce(&mut InputLine)) {
    let _guard = crate::arch::interrupts::disable();
    action(&mut CONSOLE.lock().input);
}

/// Makes the console usable for a report (an Oops, a BUG, a stack overflow,
/// a panic) whoever holds it, and starts the report at the left margin: the
/// idea of Linux's `bust_spinlocks(1)` and of the `zap_locks` its printk
/// once had, which re-initialised the console lock when an oops found it held.
///
/// Without this, a report taken while the console lock is held (a fault in
/// code called under it, an allocation failure that panics) would spin on
/// that lock forever, and the report would never appear. Who can hold it: every
/// holder keeps interrupts off while it does and never sleeps or yields, so
/// on this one CPU no other thread runs until it lets go. A holder is
/// therefore the very context that took the exception (or panicked), or a
/// report nested in it: neither writes to the console again, since a report
/// ends in killing the thread or stopping the machine. Unlocking is then
/// safe; the `InputLine` they left is whole (a fixed buffer and flags, no
/// allocation), at worst mid-write on screen, which `end_for_report` ends.
/// SMP must do more: the holder may be another CPU that will go on writing,
/// so wait for it a while before breaking the lock, as Linux's printk does.
#[notrace]
pub fn begin_report() {
    let _guard = crate::arch::interrupts::disable();
    if CONSOLE.is_locked() {
        // Safety: the holder is this context or one that never resumes (above).
        unsafe { CONSOLE.force_unlock() };
    }
    CONSOLE.lock().input.end_for_report(&mut to_terminal);
}

/// Writes all of `bytes` to virtual terminal `terminal` (its unit address, or
/// 0 for the first), 16 at a time, retrying while the hypervisor is busy.
/// Returns false if the hypervisor refuses the terminal.
#[notrace]
pub fn write_terminal(terminal: u64, bytes: &[u8]) -> bool {
    for chunk in bytes.chunks(16) {
        let mut packed = [0u8; 16];
        packed[..chunk.len()].copy_from_slice(chunk);
        // The bytes travel in r6/r7, packed big-endian.
        let high = u64::from_be_bytes(packed[..8].try_into().unwrap());
        let low = u64::from_be_bytes(packed[8..].try_into().unwrap());
        loop {
            let (status, _) = hcall::hcall(hcall::PUT_TERM_CHAR, [terminal, chunk.len() as u64, high, low, 0, 0]);
            if status == hcall::SUCCESS {
                break;
            }
            if status != hcall::BUSY {
                return false;
            }
        }
    }
    true
}

impl core::fmt::Write for Console {
    fn write_str(&mut self, text: &str) -> core::fmt::Result {
        self.write_bytes(text.as_bytes());
        Ok(())
    }
}

/// Reads whatever input is waiting, up to 16 bytes; returns how many were read.
#[notrace]
pub fn read(buffer: &mut [u8; 16]) -> usize {
    read_terminal(TERMINAL, buffer).unwrap_or(0)
}

/// Reads up to 16 waiting bytes from virtual terminal `terminal`; None if the
/// hypervisor refuses the terminal (it does not exist).
#[notrace]
pub fn read_terminal(terminal: u64, buffer: &mut [u8; 16]) -> Option<usize> {
    let (status, results) = hcall::hcall(hcall::GET_TERM_CHAR, [terminal, 0, 0, 0, 0, 0]);
    if status != hcall::SUCCESS {
        return None;
    }
    let count = (results[0] as usize).min(16);
    buffer[..8].copy_from_slice(&results[1].to_be_bytes());
    buffer[8..].copy_from_slice(&results[2].to_be_bytes());
    Some(count)
}

#[doc(hidden)]
pub fn print_arguments(arguments: core::fmt::Arguments) {
    use core::fmt::Write;
    // Interrupt handlers print too (reports, BUG): keep them out while we hold the lock.
    let _guard = crate::arch::interrupts::disable();
    let _ = CONSOLE.lock().write_fmt(arguments);
}

/// Prints to the hypervisor console.
#[macro_export]
macro_rules! print {
    ($($argument:tt)*) => ($crate::console::print_arguments(format_args!($($argument)*)));
}

/// Prints to the hypervisor console, with a newline.
#[macro_export]
macro_rules! println {
    () => ($crate::print!("\n"));
    ($($argument:tt)*) => ($crate::console::print_arguments(format_args!("{}\n", format_args!($($argument)*))));
}
