//! The patch channel: a second virtual terminal on which the host delivers and removes signed modules.
//!
//! `cargo xtask run` attaches a second spapr-vty (unit address
//! `CHANNEL_TERMINAL`) to a socket; `cargo xtask patch load NAME` sends a
//! framed, checksummed LOAD request (`portable::channel`). A kernel thread
//! polls the terminal, decodes frames, loads or unloads, and answers with a
//! REPLY frame; the result is also printed on the console. A broken frame is
//! answered with an error and the decoder resynchronises on the next magic.
use crate::console::{read_terminal, write_terminal};
use crate::{println, thread};
use alloc::format;
use alloc::string::String;
use portable::channel::{FrameDecoder, Message};

/// Unit address of the channel's virtual terminal (xtask's QEMU command uses the same constant).
pub const CHANNEL_TERMINAL: u64 = portable::channel::VTY_REG;
/// How long the listener sleeps when no byte is waiting.
const POLL_MILLISECONDS: u64 = 20;
/// Empty polls after which an unfinished frame is given up (2 s of silence).
const ABANDON_AFTER_POLLS: u32 = 100;

/// Starts the listener if the machine has the channel terminal.
pub fn start(has_channel: bool) {
    if !has_channel {
        return;
    }
    match thread::spawn("klp-channel", listen) {
        Some(handle) => drop(handle),
        None => println!("klp: no memory for the patch channel thread"),
    }
}

fn listen() {
    let mut decoder = FrameDecoder::new();
    let mut buffer = [0u8; 16];
    let mut quiet_polls = 0;
    loop {
        let Some(count) = read_terminal(CHANNEL_TERMINAL, &mut buffer) else {
            println!("klp: the patch channel terminal went away");
            return;
        };
        if count == 0 {
            quiet_polls += 1;
            // A frame cut short (an interrupted `patch load`) must not swallow
            // the next request: after a long silence, give it up.
            if quiet_polls >= ABANDON_AFTER_POLLS && !decoder.is_idle() {
                while let Some(result) = decoder.flush() {
                    deliver(result);
                }
            }
            thread::sleep_milliseconds(POLL_MILLISECONDS);
            continue;
        }
        quiet_polls = 0;
        for &byte in &buffer[..count] {
            if let Some(result) = decoder.push(byte) {
                deliver(result);
            }
        }
    }
}

/// Answers one decoded frame (or decoding error).
fn deliver(result: Result<portable::channel::Frame, portable::channel::FrameError>) {
    match result {
        Ok(frame) => {
            let (ok, message) = match Message::parse(&frame) {
                Ok(message) => handle(message),
                Err(error) => (false, format!("bad request: {error}")),
            };
            reply(ok, &message);
        }
        Err(error) => reply(false, &format!("broken frame: {error}")),
    }
}

/// Carries out one request; returns (ok, message for both ends).
fn handle(message: Message) -> (bool, String) {
    let (ok, text) = match message {
        Message::Load { name, module } => match super::load(module) {
            Ok(patch) if patch == name => (true, format!("module '{name}' loaded, patch '{patch}' enabled")),
            Ok(patch) => (true, format!("module '{name}' loaded as patch '{patch}', enabled")),
            Err(error) => (false, format!("load {name}: {error}")),
        },
        Message::Unload { name } => match super::unload(name) {
            Ok(()) => (true, format!("module '{name}' unloaded")),
            Err(error) => (false, format!("unload {name}: {error}")),
        },
        Message::Reply { .. } => (false, String::from("the kernel takes requests, not replies")),
    };
    println!("klp: {text}");
    (ok, text)
}

fn reply(ok: bool, message: &str) {
    if let Ok(frame) = (Message::Reply { ok, message }).encode() {
        write_terminal(CHANNEL_TERMINAL, &frame);
    }
}
