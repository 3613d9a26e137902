//! The host end of the patch channel: a unix socket to the kernel's second virtual terminal.
//!
//! `cargo xtask run` gives QEMU a second `spapr-vty` (reg 0x71000010) whose
//! other end is the socket [`SOCKET`]; the kernel reads frames
//! (`portable::channel`) from that terminal and answers each request with a
//! REPLY frame.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use portable::channel::{FrameDecoder, Kind, Message};

use crate::workspace_root;

/// The socket of `cargo xtask run`'s patch channel, relative to the workspace root.
pub const SOCKET: &str = "target/kernel/patch-channel.sock";

/// The QEMU options that add the patch channel with its socket at `socket`
/// (a path relative to where QEMU runs, short enough for a unix socket).
pub fn qemu_options(socket: &Path) -> [String; 4] {
    [
        "-chardev".into(),
        format!("socket,id=patchchannel,path={},server=on,wait=off", socket.display()),
        "-device".into(),
        format!("spapr-vty,chardev=patchchannel,reg={:#x}", portable::channel::VTY_REG),
    ]
}

/// The socket of `cargo xtask run`.
pub fn socket_path() -> PathBuf {
    workspace_root().join(SOCKET)
}

/// Sends `request` to the running kernel and prints its reply; exit status 0 if it succeeded.
pub fn request(request: &Message, timeout: Duration) -> Result<ExitCode> {
    let socket = socket_path();
    let frame = request.encode().map_err(|error| anyhow::anyhow!("{error}"))?;
    let mut stream = UnixStream::connect(&socket).with_context(|| {
        format!("no kernel at {}: boot one with `cargo xtask run` (in another terminal) first", socket.display())
    })?;
    let what = match request {
        Message::Load { name, module } => format!("LOAD {name} ({} bytes)", module.len()),
        Message::Unload { name } => format!("UNLOAD {name}"),
        Message::Reply { .. } => "REPLY".into(),
    };
    eprintln!("patch channel {}: sending {what}", crate::qemu::relative(&socket).display());
    stream.write_all(&frame).context("sending the frame to the kernel")?;
    let (ok, message) = await_reply(&mut stream, timeout)?;
    println!("kernel: {}: {message}", if ok { "ok" } else { "error" });
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Reads frames from `stream` until a REPLY arrives; fails after `timeout`.
pub fn await_reply(stream: &mut impl ReadWithTimeout, timeout: Duration) -> Result<(bool, String)> {
    let deadline = Instant::now() + timeout;
    let mut decoder = FrameDecoder::new();
    let mut buffer = [0; 4096];
    loop {
        let now = Instant::now();
        if now >= deadline {
            bail!("no reply from the kernel within {} s", timeout.as_secs());
        }
        stream.set_timeout((deadline - now).min(Duration::from_millis(200)))?;
        let received = match stream.read(&mut buffer) {
            Ok(0) => bail!("the patch channel closed before the kernel replied (did QEMU exit?)"),
            Ok(count) => &buffer[..count],
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => &[][..],
            Err(error) if error.kind() == ErrorKind::Interrupted => continue,
            Err(error) => return Err(error).context("reading the kernel's reply"),
        };
        let mut results: Vec<_> = received.iter().filter_map(|&byte| decoder.push(byte)).collect();
        if received.is_empty() {
            // Quiet line: whatever was received is all there is for now.
            results.extend(std::iter::from_fn(|| decoder.flush()));
        }
        for result in results {
            match result {
                Ok(frame) if frame.kind == Kind::Reply => match Message::parse(&frame) {
                    Ok(Message::Reply { ok, message }) => return Ok((ok, message.to_string())),
                    Ok(_) => unreachable!("a REPLY frame parses as a reply"),
                    Err(error) => eprintln!("patch channel: malformed reply ignored: {error}"),
                },
                Ok(frame) => eprintln!("patch channel: unexpected {:?} frame ignored", frame.kind),
                Err(error) => eprintln!("patch channel: {error}"),
            }
        }
    }
}

/// A byte stream whose reads can time out (the socket; an in-memory stream in tests).
pub trait ReadWithTimeout: Read {
    fn set_timeout(&mut self, timeout: Duration) -> std::io::Result<()>;
}

impl ReadWithTimeout for UnixStream {
    fn set_timeout(&mut self, timeout: Duration) -> std::io::Result<()> {
        self.set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portable::channel::encode;

    #[test]
    fn qemu_options_add_a_second_vty_on_the_socket() {
        assert_eq!(
            qemu_options(Path::new(SOCKET)).join(" "),
            "-chardev socket,id=patchchannel,path=target/kernel/patch-channel.sock,server=on,wait=off \
             -device spapr-vty,chardev=patchchannel,reg=0x71000010"
        );
    }

    #[test]
    fn a_reply_comes_back_over_a_socket_pair() {
        let (mut host, mut kernel) = UnixStream::pair().unwrap();
        let request = Message::Load { name: "ten", module: b"signed module" };
        host.write_all(&request.encode().unwrap()).unwrap();
        // The "kernel": reads the frame, answers with noise, a stray frame and the reply, split.
        let responder = std::thread::spawn(move || {
            let mut decoder = FrameDecoder::new();
            let mut byte = [0];
            let frame = loop {
                kernel.read_exact(&mut byte).unwrap();
                if let Some(result) = decoder.push(byte[0]) {
                    break result.unwrap();
                }
            };
            let Ok(Message::Load { name, module }) = Message::parse(&frame) else { panic!("not a load") };
            assert_eq!((name, module), ("ten", &b"signed module"[..]));
            let mut answer = b"noise".to_vec();
            answer.extend(encode(Kind::Unload, b"stray"));
            answer.extend(Message::Reply { ok: false, message: "ten: unknown symbol klp_demo_ten" }.encode().unwrap());
            for chunk in answer.chunks(5) {
                kernel.write_all(chunk).unwrap();
                std::thread::sleep(Duration::from_millis(1));
            }
            kernel
        });
        let reply = await_reply(&mut host, Duration::from_secs(10)).unwrap();
        assert_eq!(reply, (false, "ten: unknown symbol klp_demo_ten".to_string()));
        drop(responder.join().unwrap());
    }

    #[test]
    fn silence_times_out_and_a_closed_channel_fails_at_once() {
        let (mut host, kernel) = UnixStream::pair().unwrap();
        let start = Instant::now();
        let error = await_reply(&mut host, Duration::from_millis(300)).unwrap_err();
        assert!(error.to_string().contains("no reply"), "{error}");
        assert!(start.elapsed() < Duration::from_secs(5));
        drop(kernel);
        assert!(await_reply(&mut host, Duration::from_secs(10)).unwrap_err().to_string().contains("closed"));
    }
}
