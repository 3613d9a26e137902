//! The hypervisor console: `print!`/`println!` through H_PUT_TERM_CHAR, input through H_GET_TERM_CHAR.
use crate::arch::hcall;
use crate::arch::percpu::smp_processor_id;
use crate::arch::registers::timebase;
use core::sync::atomic::{AtomicUsize, Ordering};
use macros::notrace;
use portable::input_line::{InputLine, LineWriter, terminal};
use spin::{Mutex, MutexGuard};

/// Virtual terminal number of the default spapr-vty (0 names the first one).
const TERMINAL: u64 = 0;

/// Serialises writers so lines from different threads and CPUs do not
/// interleave; taken through [`lock`], which records its owner.
static CONSOLE: Mutex<Console> = Mutex::new(Console { input: InputLine::new() });

/// No CPU: `CONSOLE_OWNER` and `REPORTER` when free.
const NOBODY: usize = usize::MAX;

/// The CPU that holds `CONSOLE`: set once it is taken, cleared before it is let go.
static CONSOLE_OWNER: AtomicUsize = AtomicUsize::new(NOBODY);

/// The CPU writing a report, from `begin_report` to `end_report` (or to the end of the machine).
static REPORTER: AtomicUsize = AtomicUsize::new(NOBODY);

/// How long a report waits for another CPU to let go of the console, or to
/// end its own report, before it breaks in.
const REPORT_WAIT_MILLISECONDS: u64 = 1000;

/// The console lock, held; records its owner CPU while it lives.
pub struct ConsoleGuard(MutexGuard<'static, Console>);

impl core::ops::Deref for ConsoleGuard {
    type Target = Console;
    fn deref(&self) -> &Console {
        &self.0
    }
}

impl core::ops::DerefMut for ConsoleGuard {
    fn deref_mut(&mut self) -> &mut Console {
        &mut self.0
    }
}

impl Drop for ConsoleGuard {
    #[inline(always)]
    fn drop(&mut self) {
        // Cleared before the mutex (a field, dropped after this) is let go.
        CONSOLE_OWNER.store(NOBODY, Ordering::Relaxed);
    }
}

/// Takes the console lock. Every holder keeps interrupts off while it holds
/// it and never sleeps or yields (so a report on another CPU waits for it
/// only as long as it writes).
#[notrace]
pub fn lock() -> ConsoleGuard {
    let guard = crate::sync::acquire(&CONSOLE);
    CONSOLE_OWNER.store(smp_processor_id(), Ordering::Relaxed);
    ConsoleGuard(guard)
}

/// Whether some context holds the console lock.
pub fn is_locked() -> bool {
    CONSOLE.is_locked()
}

/// The CPU that holds the console lock, if any.
pub fn owner() -> Option<usize> {
    Some(CONSOLE_OWNER.load(Ordering::Relaxed)).filter(|&cpu| cpu != NOBODY)
}

/// The hypervisor virtual terminal 0.
pub struct Console {
    /// The shell's prompt and typing while it waits: other output moves it below itself.
    input: InputLine,
}

/// Sends bytes to the terminal (what `InputLine` writes through, as a plain
/// function: `portable::input_line::terminal` lends it as its `write`, so no
/// closure shim of it is compiled here, with an ftrace site).
#[notrace]
fn to_terminal(bytes: &[u8]) {
    write_terminal(TERMINAL, bytes);
}

/// `to_terminal` as the `write` of `InputLine`'s methods.
macro_rules! to_terminal {
    () => {
        terminal(&mut (to_terminal as fn(&[u8])))
    };
}

impl Console {
    /// Writes all of `bytes`, 16 at a time, retrying while the hypervisor is
    /// busy; while the shell waits for input, on a line of its own with the
    /// prompt shown again after it.
    #[inline(always)]
    pub fn write_bytes(&mut self, bytes: &[u8]) {
        self.input.other_output(bytes, to_terminal!());
    }

    /// The console as a `core::fmt::Write` (implemented in `portable`: no ftrace site).
    #[inline(always)]
    pub fn writer(&mut self) -> LineWriter<'_> {
        LineWriter { line: &mut self.input, terminal: to_terminal }
    }
}

/// The shell's input path: shows `prompt` and waits for typing.
pub fn input_open(prompt: &str) {
    with_input(|input| input.open(prompt, to_terminal!()));
}

/// Echoes and keeps one typed character, or refuses it with a bell when the
/// line is full (`input_line::CAPACITY`); returns whether it was kept.
pub fn input_push(typed: char) -> bool {
    let mut kept = false;
    with_input(|input| kept = input.push(typed, to_terminal!()));
    kept
}

/// The shell found no input: shows the prompt and the typing again if other
/// output broke into them and has been quiet since the last call.
pub fn input_redisplay_if_quiet() {
    with_input(|input| {
        input.redisplay_if_quiet(to_terminal!());
    });
}

/// Erases the last typed character, never the prompt of `prompt_length` bytes.
pub fn input_pop(prompt_length: usize) {
    with_input(|input| {
        input.pop(prompt_length, to_terminal!());
    });
}

/// Ends the typed line: output from here on is the command's.
pub fn input_close() {
    with_input(|input| input.close(to_terminal!()));
}

fn with_input(action: impl FnOnce(&mut InputLine)) {
    let _guard = crate::arch::interrupts::disable();
    action(&mut lock().input);
}

/// Makes the console usable for a report (an Oops, a BUG, a stack overflow,
/// a panic) whoever holds it, one report at a time, and starts the report at
/// the left margin: the idea of Linux's `bust_spinlocks(1)` and of the
/// `zap_locks` its printk once had, which re-initialised the console lock
/// when an oops found it held.
///
/// Without this, a report taken while the console lock is held (a fault in
/// code called under it, an allocation failure that panics) would spin on
/// that lock forever, and the report would never appear. Who holds it:
/// every holder keeps interrupts off while it does and never sleeps or
/// yields, so on its CPU nothing else runs until it lets go. If the holder
/// is this CPU, it is the very context that took the exception (or
/// panicked), or a report nested in it: neither writes to the console again,
/// since a report ends in killing the thread or stopping the machine, so the
/// lock is broken at once; the `InputLine` they left is whole (a fixed buffer
/// and flags, no allocation), at worst mid-write on screen, which
/// `end_for_report` ends. If the holder is another CPU, it is writing and
/// will let go: the report waits for it (conferring its time, interrupts
/// off) up to `REPORT_WAIT_MILLISECONDS`, and only then breaks the lock,
/// saying so. Reports from two CPUs are serialised the same way (`REPORTER`):
/// the second waits for the first to end (`end_report`, or the machine stops).
#[notrace]
pub fn begin_report() {
    let _guard = crate::arch::interrupts::disable();
    let me = smp_processor_id();
    let take_report = || match REPORTER.compare_exchange(NOBODY, me, Ordering::Acquire, Ordering::Relaxed) {
        Ok(_) => true,
        // A report nested in this CPU's own report (a fault while reporting).
        Err(holder) => holder == me,
    };
    let mut broken = None;
    if !take_report() {
        let holder = REPORTER.load(Ordering::Relaxed);
        if !wait_bounded(take_report) {
            REPORTER.store(me, Ordering::Relaxed);
            broken = Some(("report", holder));
        }
    }
    if CONSOLE.is_locked() {
        if CONSOLE_OWNER.load(Ordering::Relaxed) == me {
            // Safety: the holder is this CPU's context being reported, or one
            // under it: it never writes again (above).
            unsafe { CONSOLE.force_unlock() };
        } else {
            let holder = CONSOLE_OWNER.load(Ordering::Relaxed);
            if !wait_bounded(|| !CONSOLE.is_locked()) {
                // Safety: the holder, on another CPU, kept the console past the
                // bound: taken to be stuck (as Linux's printk decides). If it
                // writes again the two reports' lines may mix; nothing under
                // the lock allocates, so no memory is shared wrongly but the
                // `InputLine`'s flags.
                unsafe { CONSOLE.force_unlock() };
                broken = Some(("console", holder));
            }
        }
    }
    let mut console = lock();
    console.input.end_for_report(to_terminal!());
    if let Some((what, holder)) = broken {
        let _ = console.writer().write_arguments(format_args!(
            "console: CPU {me} broke into the {what} lock CPU {holder} held for over {REPORT_WAIT_MILLISECONDS} ms\n"
        ));
    }
}

/// Ends this CPU's report when the kernel goes on after it (the reported
/// thread was killed): a report on another CPU no longer waits for it.
#[notrace]
pub fn end_report() {
    let me = smp_processor_id();
    let _ = REPORTER.compare_exchange(me, NOBODY, Ordering::Release, Ordering::Relaxed);
}

/// Waits, interrupts as they are, until `done()` holds or
/// `REPORT_WAIT_MILLISECONDS` have passed, conferring this CPU's time to the
/// others between tries; returns whether `done()` held.
#[notrace]
fn wait_bounded(mut done: impl FnMut() -> bool) -> bool {
    let deadline = timebase() + crate::time::milliseconds_to_timebase(REPORT_WAIT_MILLISECONDS);
    loop {
        if done() {
            return true;
        }
        if timebase() >= deadline {
            return false;
        }
        crate::arch::smp::confer();
    }
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
#[notrace]
pub fn print_arguments(arguments: core::fmt::Arguments) {
    // Interrupt handlers print too (reports, BUG): keep them out while we hold the lock.
    let _guard = crate::arch::interrupts::disable();
    let _ = lock().writer().write_arguments(arguments);
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
