//! Shell commands that loaded modules add (`klp_shell_register`), run by the shell beside its own.
//!
//! A command is a name, a help line and a module function
//! `extern "C" fn(arguments, length, output)` that writes its output with
//! `klp_shell_write(output, ...)`; the shell prints it (`output_of` gives it
//! to tests). A module registers its commands in its init and unregisters
//! them in its exit.
//!
//! Concurrency: a caller takes the registry's lock, finds the command,
//! counts itself in (`running`) and releases the lock before calling the
//! handler (which may sleep); it counts itself out when the handler
//! returns. `unregister` removes the command under the lock, so no new
//! call starts, then waits (yielding) until `running` is zero: when the
//! module's exit returns, no thread is in or about to enter one of its
//! handlers, whatever preemption, interrupts or other CPUs do in between.
//! A handler that unregisters its own command would wait for itself: it
//! must not (the wait gives up and says so after `UNREGISTER_WAIT_MILLISECONDS`).
use crate::sync::Mutex;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicUsize, Ordering};

/// A module command's handler.
pub type Handler = extern "C" fn(arguments: *const u8, length: usize, output: *mut Output);

/// What a handler writes; the shell prints it.
pub struct Output {
    pub text: Vec<u8>,
}

struct Command {
    name: String,
    help: String,
    handler: Handler,
    /// Calls in progress.
    running: Arc<AtomicUsize>,
}

static COMMANDS: Mutex<Vec<Command>> = Mutex::new(Vec::new());

/// How long `unregister` waits for the calls in progress to return.
pub const UNREGISTER_WAIT_MILLISECONDS: u64 = 5_000;

/// Why a command was not registered.
#[derive(Debug, PartialEq, Eq)]
pub enum CommandError {
    /// Not one word of printable ASCII.
    BadName,
    /// A command of that name exists (built-in or another module's).
    Exists,
    /// No module command has that name.
    Unknown,
}

/// Adds command `name` (`builtin` says whether the shell has it already).
pub fn register(name: &str, help: &str, handler: Handler, builtin: bool) -> Result<(), CommandError> {
    if name.is_empty() || !name.bytes().all(|byte| byte.is_ascii_graphic()) {
        return Err(CommandError::BadName);
    }
    let mut commands = COMMANDS.lock();
    if builtin || commands.iter().any(|command| command.name == name) {
        return Err(CommandError::Exists);
    }
    commands.push(Command {
        name: String::from(name),
        help: String::from(help),
        handler,
        running: Arc::new(AtomicUsize::new(0)),
    });
    Ok(())
}

/// Removes command `name` and waits until no call of it is in progress.
pub fn unregister(name: &str) -> Result<(), CommandError> {
    let running = {
        let mut commands = COMMANDS.lock();
        let position = commands.iter().position(|command| command.name == name).ok_or(CommandError::Unknown)?;
        commands.remove(position).running
    };
    let deadline = crate::time::uptime_nanoseconds() + UNREGISTER_WAIT_MILLISECONDS * 1_000_000;
    while running.load(Ordering::Acquire) != 0 {
        if crate::time::uptime_nanoseconds() >= deadline {
            crate::println!("klp: module command '{name}' is still running after its removal");
            break;
        }
        crate::thread::yield_now();
    }
    Ok(())
}

/// Runs module command `name` with `arguments`; its output, or None if no module has that command.
pub fn output_of(name: &str, arguments: &str) -> Option<String> {
    let (handler, running) = {
        let commands = COMMANDS.lock();
        let command = commands.iter().find(|command| command.name == name)?;
        // Counted in under the lock: `unregister` either removed it before
        // (not found) or waits for this call.
        command.running.fetch_add(1, Ordering::AcqRel);
        (command.handler, command.running.clone())
    };
    let mut output = Output { text: Vec::new() };
    handler(arguments.as_ptr(), arguments.len(), &mut output);
    running.fetch_sub(1, Ordering::AcqRel);
    Some(String::from_utf8_lossy(&output.text).into_owned())
}

/// (name, help) of every module command, for `help`.
pub fn list() -> Vec<(String, String)> {
    COMMANDS.lock().iter().map(|command| (command.name.clone(), command.help.clone())).collect()
}
