//! The patch channel: a second virtual terminal on which the host delivers and removes signed modules.
//!
//! `cargo xtask run` attaches a second spapr-vty (unit address
//! `CHANNEL_TERMINAL`) to a socket; `cargo xtask patch load NAME` sends a
//! numbered, checksummed LOAD request (`portable::channel`). A kernel thread
//! reads the terminal and gives the bytes to `portable::channel::Server`,
//! which decodes frames, has this file load or unload, and makes the REPLY
//! (carrying the request's id) that the thread writes back; each outcome is
//! also printed on the console. A broken frame is answered with an error and
//! the decoder resynchronises on the next magic; a frame cut short is given
//! up after `ABANDON_AFTER_NANOSECONDS` of silence, and answered too.
//!
//! Speed: QEMU's spapr-vty holds at most 16 input bytes, and takes more from
//! the socket only in its main loop, after the guest has read them with
//! H_GET_TERM_CHAR (16 bytes a call): about 40 us of host time per 16 bytes,
//! so about 400 KB/s at best. The listener used to sleep 20 ms whenever a
//! read found nothing, which with that refill delay was after almost every
//! read: 1 to 1.6 KB/s. While bytes are arriving it now reads again at once
//! (after letting other threads run), and sleeps only once the line has been
//! quiet for `BURST_NANOSECONDS`; a 64 KiB module takes 170-200 ms
//! (`cargo xtask bench`, channel_load_64k). Taking input by interrupt would
//! not lift the 16-bytes-per-refill limit, and the kernel has no external
//! interrupt (XICS) handling to build it on.
use crate::console::{read_terminal, write_terminal};
use crate::{println, thread, time};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use portable::channel::{Answer, Request, Server};

/// Unit address of the channel's virtual terminal (xtask's QEMU command uses the same constant).
pub const CHANNEL_TERMINAL: u64 = portable::channel::VTY_REG;
/// How long the listener sleeps between reads while the line is idle: the
/// delay before the first bytes of a request are seen.
const IDLE_POLL_MILLISECONDS: u64 = 20;
/// How long after the last byte received the listener keeps reading without sleeping.
const BURST_NANOSECONDS: u64 = 100_000_000;
/// How long the listener waits between two empty reads while receiving.
const PAUSE_NANOSECONDS: u64 = 10_000;
/// Silence after which an unfinished frame is given up (an interrupted `patch load`).
const ABANDON_AFTER_NANOSECONDS: u64 = 2_000_000_000;

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
    let mut server = Server::new();
    let mut buffer = [0u8; 16];
    let mut last_input = 0;
    loop {
        let Some(count) = read_terminal(CHANNEL_TERMINAL, &mut buffer) else {
            println!("klp: the patch channel terminal went away");
            return;
        };
        let now = time::uptime_nanoseconds();
        if count > 0 {
            last_input = now;
            send(server.receive(&buffer[..count], &mut carry_out));
            continue;
        }
        let quiet = now.saturating_sub(last_input);
        if quiet < BURST_NANOSECONDS {
            // Receiving: QEMU refills the terminal within microseconds, so read
            // again soon. Scheduling choice: this thread stays runnable and
            // yields before each new read, so every other ready thread (the
            // shell, tests) gets its turn first and keeps its full time
            // slice, and a busy thread still has the timer preempt it; only
            // idle time goes to polling, and only for BURST_NANOSECONDS after
            // the last byte. The short pause saves hcalls, each of which also
            // wakes QEMU's main loop: measured on a 64 KiB module, about 6,500
            // empty reads instead of 60,000 at the same rate (about 40 us per
            // 16 bytes either way). Longer pauses (50-400 us) cut the empty
            // reads further but made loads much slower whenever the host was
            // slow to refill.
            thread::yield_now();
            let until = time::uptime_nanoseconds() + PAUSE_NANOSECONDS;
            while time::uptime_nanoseconds() < until {
                core::hint::spin_loop();
            }
            continue;
        }
        if quiet >= ABANDON_AFTER_NANOSECONDS && !server.is_idle() {
            // A frame cut short must not swallow the next request forever.
            send(server.give_up(&mut carry_out));
        }
        thread::sleep_milliseconds(IDLE_POLL_MILLISECONDS);
    }
}

/// Prints each answer on the console and writes its REPLY frame to the host.
fn send(answers: Vec<Answer>) {
    for answer in answers {
        match answer.earlier {
            Some(earlier) => println!(
                "klp: the host asked what became of request {earlier}: {}: {}",
                if answer.ok { "ok" } else { "error" },
                answer.message
            ),
            None => println!("klp: {}", answer.message),
        }
        write_terminal(CHANNEL_TERMINAL, &answer.frame());
    }
}

/// Carries out one request; returns (ok, message for both ends).
fn carry_out(request: Request) -> (bool, String) {
    match request {
        Request::Load { name, module } => match super::load(module) {
            Ok(loaded) if super::is_target(&loaded) => (true, format!("target module '{loaded}' loaded, its init ran")),
            Ok(patch) => {
                let loaded = if patch == name {
                    format!("module '{name}' loaded, patch '{patch}' enabled")
                } else {
                    format!("module '{name}' loaded as patch '{patch}', enabled")
                };
                let details = crate::livepatch::list()
                    .into_iter()
                    .find(|summary| summary.name == patch)
                    .map_or_else(String::new, |summary| format!("; {}", summary.details()));
                (true, format!("{loaded}; {}{details}", transition_report(&patch)))
            }
            Err(error) => (false, format!("load {name}: {error}")),
        },
        Request::Unload { name } => match (super::is_target(name), super::unload(name)) {
            (true, Ok(())) => (true, format!("target module '{name}' unloaded (its exit ran)")),
            (false, Ok(())) => (true, format!("module '{name}' unloaded (its disable transition completed)")),
            (_, Err(error)) => (false, format!("unload {name}: {error}")),
        },
        Request::Identify => (true, format!("kernel {}", crate::build_id::describe())),
    }
}

/// Where patch `name`'s enable transition stands, for the reply: complete,
/// or in progress with the threads that block it.
fn transition_report(name: &str) -> String {
    match crate::livepatch::status() {
        Some(status) if status.patch == name => {
            let mut report = format!("transition in progress, blocked by {} threads", status.blocked.len());
            for blocked in &status.blocked {
                report.push_str(&format!("; {blocked}"));
            }
            report.push_str(&format!(" (the kernel retries; `klp status` or `klp force {name}` in its shell)"));
            report
        }
        _ => String::from("transition complete"),
    }
}
