//! The host end of the patch channel: a unix socket to the kernel's second virtual terminal.
//!
//! `cargo xtask run` gives QEMU a second `spapr-vty` (reg 0x71000010) whose
//! other end is the socket [`SOCKET`]; the kernel reads frames
//! (`portable::channel`) from that terminal and answers each request with a
//! REPLY frame carrying the request's id.
//!
//! Each command numbers its request with a fresh random id and takes only the
//! reply with that id as its answer; any other reply on the line (the late
//! answer to an earlier command that timed out or was interrupted) is
//! reported in one line and discarded. Before sending, a command notes its
//! request in [`PENDING`] and removes the note when the reply arrives, so a
//! command that ends without its reply leaves the note behind: the next
//! command then asks the kernel (QUERY) what became of that request and
//! prints the answer before sending its own.
//!
//! Both files live in `target/kernel`, or in the folder the environment
//! variable [`FOLDER_VARIABLE`] names, as do the other files of the kernel
//! xtask boots for a user (gdb and console sockets, console log, lock files,
//! [`in_folder`]): the end-to-end and gdb tests give their `run`, `gdb`,
//! `console` and `patch` commands a folder of their own, so that they never
//! reach (or collide with) the kernel a user runs meanwhile.

use std::fs;
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

/// The requests sent to the kernel whose reply no command has seen yet, one per line.
pub const PENDING: &str = "target/kernel/patch-channel.pending";

/// Names a folder (relative to the workspace root) to hold the sockets, the
/// pending file, the console log and the lock files of the kernel instead of `target/kernel`.
pub const FOLDER_VARIABLE: &str = "XTASK_KERNEL_FOLDER";

/// [`SOCKET`], or its name in the folder [`FOLDER_VARIABLE`] names; relative
/// to the workspace root (QEMU runs there, and a unix socket's path must be short).
pub fn socket() -> PathBuf {
    in_folder(SOCKET)
}

/// `default` (a path under `target/kernel`), moved to the folder [`FOLDER_VARIABLE`] names if it is set.
pub fn in_folder(default: &str) -> PathBuf {
    moved(std::env::var_os(FOLDER_VARIABLE).as_deref().map(Path::new), default)
}

/// `default`, or its file name in `folder`.
fn moved(folder: Option<&Path>, default: &str) -> PathBuf {
    match folder {
        Some(folder) => folder.join(Path::new(default).file_name().expect("a file name")),
        None => PathBuf::from(default),
    }
}

/// The least time sending a frame is given, whatever the timeout.
const SEND_TIMEOUT: Duration = Duration::from_secs(1);

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
    workspace_root().join(socket())
}

/// A REPLY frame: the id of the request it answers, and the kernel's verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub request: u32,
    pub ok: bool,
    pub message: String,
}

impl Reply {
    fn verdict(&self) -> String {
        format!("{}: {}", if self.ok { "ok" } else { "error" }, self.message)
    }
}

/// A request sent to the kernel, as noted in [`PENDING`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sent {
    pub id: u32,
    /// What it asked, for the user (`LOAD greeting (1544 bytes)`).
    pub what: String,
}

/// The file of requests without a seen reply (see the module documentation).
pub struct PendingFile {
    path: PathBuf,
}

impl PendingFile {
    pub fn new(path: PathBuf) -> Self {
        PendingFile { path }
    }

    /// `cargo xtask run`'s file, next to its socket.
    pub fn default_file() -> Self {
        Self::new(workspace_root().join(in_folder(PENDING)))
    }

    /// The requests noted; a line that does not parse is ignored.
    pub fn read(&self) -> Vec<Sent> {
        let text = fs::read_to_string(&self.path).unwrap_or_default();
        text.lines()
            .filter_map(|line| {
                let (id, what) = line.split_once(' ')?;
                Some(Sent { id: id.parse().ok()?, what: what.to_string() })
            })
            .collect()
    }

    pub fn add(&self, sent: &Sent) -> Result<()> {
        let mut entries = self.read();
        entries.push(sent.clone());
        self.write(&entries)
    }

    pub fn remove(&self, id: u32) -> Result<()> {
        let mut entries = self.read();
        entries.retain(|entry| entry.id != id);
        self.write(&entries)
    }

    fn write(&self, entries: &[Sent]) -> Result<()> {
        if entries.is_empty() {
            return match fs::remove_file(&self.path) {
                Err(error) if error.kind() != ErrorKind::NotFound => {
                    Err(error).with_context(|| format!("removing {}", self.path.display()))
                }
                _ => Ok(()),
            };
        }
        let text: String = entries.iter().map(|entry| format!("{} {}\n", entry.id, entry.what)).collect();
        fs::write(&self.path, text).with_context(|| format!("writing {}", self.path.display()))
    }
}

/// A fresh request id: random, never 0 (the kernel's "no request") and none of `taken`.
pub fn new_id(taken: &[Sent]) -> u32 {
    use std::hash::{BuildHasher, Hasher};
    loop {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u128(
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos(),
        );
        hasher.write_u32(std::process::id());
        let id = hasher.finish() as u32;
        if id != 0 && taken.iter().all(|entry| entry.id != id) {
            return id;
        }
    }
}

/// A byte stream whose reads and writes can time out (the socket; a socket pair in tests).
pub trait Transport: Read + Write {
    fn set_read_timeout_to(&mut self, timeout: Duration) -> std::io::Result<()>;
    fn set_write_timeout_to(&mut self, timeout: Duration) -> std::io::Result<()>;
}

impl Transport for UnixStream {
    fn set_read_timeout_to(&mut self, timeout: Duration) -> std::io::Result<()> {
        self.set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
    }

    fn set_write_timeout_to(&mut self, timeout: Duration) -> std::io::Result<()> {
        self.set_write_timeout(Some(timeout.max(Duration::from_millis(1))))
    }
}

/// What comes on the line besides the awaited reply.
#[derive(Debug, PartialEq, Eq)]
pub enum Stray {
    /// A reply to another request.
    Reply(Reply),
    /// A line about a frame that was skipped (not a reply, broken, malformed).
    Ignored(String),
}

/// One connection to the kernel: the stream and the decoder of what comes back.
pub struct Channel<S> {
    stream: S,
    decoder: FrameDecoder,
}

impl Channel<UnixStream> {
    /// Connects to the socket of the kernel that `cargo xtask run` (or `gdb`, or the bench) booted.
    pub fn connect(socket: &Path) -> Result<Self> {
        let stream = UnixStream::connect(socket).with_context(|| {
            format!("no kernel at {}: boot one with `cargo xtask run` (in another terminal) first", socket.display())
        })?;
        Ok(Channel::new(stream))
    }
}

impl<S: Transport> Channel<S> {
    pub fn new(stream: S) -> Self {
        Channel { stream, decoder: FrameDecoder::new() }
    }

    /// Writes `frame`, giving up at `deadline` (the frame is then cut off: the
    /// kernel abandons it after a silence and answers that it did).
    pub fn send(&mut self, frame: &[u8], deadline: Instant) -> Result<()> {
        let mut sent = 0;
        while sent < frame.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("the kernel took only {sent} of the frame's {} bytes in time", frame.len());
            }
            self.stream.set_write_timeout_to(left)?;
            match self.stream.write(&frame[sent..]) {
                Ok(0) => bail!("the patch channel closed while sending (did QEMU exit?)"),
                Ok(count) => sent += count,
                Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(error) if error.kind() == ErrorKind::Interrupted => {}
                Err(error) => return Err(error).context("sending the frame to the kernel"),
            }
        }
        Ok(())
    }

    /// Reads until the REPLY to request `id` arrives (None at `deadline`); every
    /// other reply, and a line about each frame that is not a reply, goes to `stray`.
    pub fn await_reply(&mut self, id: u32, deadline: Instant, stray: &mut dyn FnMut(Stray)) -> Result<Option<Reply>> {
        let mut buffer = [0; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.stream.set_read_timeout_to(left.min(Duration::from_millis(200)))?;
            let received = match self.stream.read(&mut buffer) {
                Ok(0) => bail!("the patch channel closed before the kernel replied (did QEMU exit?)"),
                Ok(count) => &buffer[..count],
                Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => &[][..],
                Err(error) if error.kind() == ErrorKind::Interrupted => continue,
                Err(error) => return Err(error).context("reading the kernel's reply"),
            };
            let mut results = Vec::new();
            self.decoder.push_bytes(received, |result| results.push(result));
            if received.is_empty() {
                // Quiet line: whatever was received is all there is for now.
                results.extend(std::iter::from_fn(|| self.decoder.flush()));
            }
            let mut answer = None;
            for result in results {
                let frame = match result {
                    Ok(frame) if frame.kind == Kind::Reply => frame,
                    Ok(frame) => {
                        stray(Stray::Ignored(format!("patch channel: unexpected {:?} frame ignored", frame.kind)));
                        continue;
                    }
                    Err(error) => {
                        stray(Stray::Ignored(format!("patch channel: {error}")));
                        continue;
                    }
                };
                let reply = match Message::parse(&frame) {
                    Ok(Message::Reply { ok, message }) => Reply { request: frame.id, ok, message: message.into() },
                    Ok(_) => unreachable!("a REPLY frame parses as a reply"),
                    Err(error) => {
                        stray(Stray::Ignored(format!(
                            "patch channel: malformed reply to request {} ignored: {error}",
                            frame.id
                        )));
                        continue;
                    }
                };
                if reply.request == id && answer.is_none() {
                    answer = Some(reply);
                } else {
                    stray(Stray::Reply(reply));
                }
            }
            if answer.is_some() {
                return Ok(answer);
            }
        }
    }
}

/// The outcome of [`exchange`].
#[derive(Debug)]
pub struct Exchanged {
    pub id: u32,
    pub reply: Reply,
    /// The frame's size and the time from its first byte sent to its reply read.
    pub bytes: usize,
    pub elapsed: Duration,
}

/// Sends `message` (described as `what`) and waits up to `timeout` for its
/// reply; first, asks what became of each request in `pending`. Lines for the
/// user (earlier requests' outcomes, discarded replies) go to `report`.
pub fn exchange<S: Transport>(
    channel: &mut Channel<S>,
    pending: &PendingFile,
    message: &Message,
    what: &str,
    timeout: Duration,
    report: &mut dyn FnMut(String),
) -> Result<Exchanged> {
    let deadline = Instant::now() + timeout;
    let send_deadline = Instant::now() + timeout.max(SEND_TIMEOUT);
    let mut earlier = Earlier { sent: pending.read(), pending };
    while let Some(sent) = earlier.sent.first().cloned() {
        let id = new_id(&earlier.sent);
        let query = Message::Query { request: sent.id }.encode(id).map_err(|error| anyhow::anyhow!("{error}"))?;
        channel.send(&query, send_deadline)?;
        let reply = channel.await_reply(id, deadline, &mut |stray| earlier.stray(stray, id, report))?;
        let Some(reply) = reply else {
            bail!(
                "no answer within {} s to the question what became of earlier request {} ({})",
                timeout.as_secs_f64(),
                sent.id,
                sent.what
            );
        };
        // Unless its late reply came first and was reported already.
        if earlier.take(sent.id).is_some() {
            report(format!("earlier request {} ({}), asked again: {}", sent.id, sent.what, reply.verdict()));
        }
    }
    let id = new_id(&pending.read());
    let frame = message.encode(id).map_err(|error| anyhow::anyhow!("{error}"))?;
    pending.add(&Sent { id, what: what.to_string() })?;
    let start = Instant::now();
    channel.send(&frame, send_deadline).with_context(|| {
        format!("request {id} ({what}): the next `cargo xtask patch` command reports what the kernel made of it")
    })?;
    let reply = channel.await_reply(id, deadline, &mut |stray| earlier.stray(stray, id, report))?;
    let elapsed = start.elapsed();
    let Some(reply) = reply else {
        bail!(
            "no reply to request {id} ({what}) within {} s: the kernel may still be receiving or carrying it out; \
             the next `cargo xtask patch` command reports what became of it",
            timeout.as_secs_f64()
        );
    };
    pending.remove(id)?;
    Ok(Exchanged { id, reply, bytes: frame.len(), elapsed })
}

/// The earlier requests whose outcome a command has not reported yet.
struct Earlier<'a> {
    sent: Vec<Sent>,
    pending: &'a PendingFile,
}

impl Earlier<'_> {
    /// Removes request `id` from the list and the pending file.
    fn take(&mut self, id: u32) -> Option<Sent> {
        let position = self.sent.iter().position(|sent| sent.id == id)?;
        let _ = self.pending.remove(id);
        Some(self.sent.remove(position))
    }

    /// Reports what came while awaiting request `awaited`: a late reply to an
    /// earlier request is its outcome; any other reply is stale.
    fn stray(&mut self, stray: Stray, awaited: u32, report: &mut dyn FnMut(String)) {
        match stray {
            Stray::Ignored(line) => report(line),
            Stray::Reply(reply) => match self.take(reply.request) {
                Some(sent) => {
                    report(format!("earlier request {} ({}), late reply: {}", sent.id, sent.what, reply.verdict()))
                }
                None => report(format!(
                    "patch channel: discarded a stale reply to request {} (this command's request is {awaited}): {}",
                    reply.request,
                    reply.verdict()
                )),
            },
        }
    }
}

/// `cargo xtask patch load|unload`: sends `message` to the kernel of `cargo xtask run`
/// and prints its reply; exit status 0 if the kernel says ok.
pub fn request(message: &Message, what: &str, timeout: Duration) -> Result<ExitCode> {
    let socket = socket_path();
    let mut channel = Channel::connect(&socket)?;
    eprintln!("patch channel {}: sending {what}", crate::qemu::relative(&socket).display());
    let exchanged =
        exchange(&mut channel, &PendingFile::default_file(), message, what, timeout, &mut |line| println!("{line}"))
            .map_err(|error| match crate::gdb::session_holder() {
                // A kernel stopped under gdb reads nothing until gdb lets it go on.
                Some(gdb) => anyhow::anyhow!(
                    "{error:#}\n(is the kernel stopped under gdb? {} runs a gdb session on it: `continue` there)",
                    gdb.describe()
                ),
                None => error,
            })?;
    eprintln!("{}", timing(&exchanged));
    println!("kernel: {}", exchanged.reply.verdict());
    Ok(if exchanged.reply.ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// `reply to request N after T ms (B bytes sent: R KB/s)`, the rate only for
/// frames of 16 KiB or more (on a small one the kernel's wake-up latency is all
/// there is to see); the end-to-end test reads R.
pub fn timing(exchanged: &Exchanged) -> String {
    let seconds = exchanged.elapsed.as_secs_f64();
    let rate = if exchanged.bytes >= 16 << 10 {
        format!(": {:.0} KB/s", exchanged.bytes as f64 / 1000.0 / seconds.max(1e-9))
    } else {
        String::new()
    };
    format!(
        "patch channel: reply to request {} after {:.0} ms ({} bytes sent{rate})",
        exchanged.id,
        seconds * 1000.0,
        exchanged.bytes
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use portable::channel::{Answer, Request, Server, encode};

    #[test]
    fn the_folder_variable_moves_the_socket_and_the_pending_file() {
        assert_eq!(moved(None, SOCKET), Path::new(SOCKET));
        let folder = Some(Path::new("target/end-to-end/42"));
        assert_eq!(moved(folder, SOCKET), Path::new("target/end-to-end/42/patch-channel.sock"));
        assert_eq!(moved(folder, PENDING), Path::new("target/end-to-end/42/patch-channel.pending"));
    }

    #[test]
    fn qemu_options_add_a_second_vty_on_the_socket() {
        assert_eq!(
            qemu_options(Path::new(SOCKET)).join(" "),
            "-chardev socket,id=patchchannel,path=target/kernel/patch-channel.sock,server=on,wait=off \
             -device spapr-vty,chardev=patchchannel,reg=0x71000010"
        );
    }

    /// A pending file in a fresh temporary folder.
    fn pending_file(test: &str) -> PendingFile {
        let folder = std::env::temp_dir().join(format!("xtask-patch-channel-{test}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&folder);
        fs::create_dir_all(&folder).unwrap();
        PendingFile::new(folder.join("pending"))
    }

    /// The kernel's protocol (portable::channel::Server) on the other end of a
    /// socket pair: loads succeed unless the module is empty; `answer` decides
    /// which answers are written (false: lost, as when no host is connected).
    fn kernel(
        mut stream: UnixStream,
        mut answer: impl FnMut(&Answer) -> bool + Send + 'static,
    ) -> std::thread::JoinHandle<Vec<String>> {
        std::thread::spawn(move || {
            let mut server = Server::new();
            let mut log = Vec::new();
            let mut buffer = [0; 16];
            let mut carry_out = |request: Request| match request {
                Request::Load { name, module } => {
                    log.push(format!("load {name}"));
                    (
                        !module.is_empty(),
                        format!("module '{name}' {}", if module.is_empty() { "refused" } else { "loaded" }),
                    )
                }
                Request::Unload { name } => {
                    log.push(format!("unload {name}"));
                    (true, format!("module '{name}' unloaded"))
                }
                Request::Identify => {
                    log.push(String::from("identify"));
                    (true, String::from("kernel build-id 0123456789abcdef0123456789abcdef01234567 commit abc"))
                }
            };
            while let Ok(count @ 1..) = stream.read(&mut buffer) {
                for reply in server.receive(&buffer[..count], &mut carry_out) {
                    if answer(&reply) {
                        stream.write_all(&reply.frame()).unwrap();
                    }
                }
            }
            log
        })
    }

    #[test]
    fn a_reply_comes_back_over_a_socket_pair_past_noise_and_other_frames() {
        let (mut host, mut kernel) = UnixStream::pair().unwrap();
        let request = Message::Load { name: "ten", module: b"signed module" };
        host.write_all(&request.encode(77).unwrap()).unwrap();
        // The "kernel": reads the frame, answers with noise, a stray frame, a reply
        // to another request and its reply, split.
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
            assert_eq!((frame.id, name, module), (77, "ten", &b"signed module"[..]));
            let mut answer = b"noise".to_vec();
            answer.extend(encode(Kind::Unload, 5, b"stray"));
            answer.extend(Message::Reply { ok: true, message: "module 'old' loaded" }.encode(76).unwrap());
            answer
                .extend(Message::Reply { ok: false, message: "ten: unknown symbol klp_demo_ten" }.encode(77).unwrap());
            for chunk in answer.chunks(5) {
                kernel.write_all(chunk).unwrap();
                std::thread::sleep(Duration::from_millis(1));
            }
            kernel
        });
        let mut channel = Channel::new(host);
        let mut strays = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        let reply = channel.await_reply(77, deadline, &mut |stray| strays.push(stray)).unwrap();
        assert_eq!(reply, Some(Reply { request: 77, ok: false, message: "ten: unknown symbol klp_demo_ten".into() }));
        assert_eq!(
            strays,
            [
                Stray::Ignored("patch channel: unexpected Unload frame ignored".into()),
                Stray::Reply(Reply { request: 76, ok: true, message: "module 'old' loaded".into() }),
            ]
        );
        drop(responder.join().unwrap());
    }

    #[test]
    fn silence_times_out_and_a_closed_channel_fails_at_once() {
        let (host, kernel) = UnixStream::pair().unwrap();
        let mut channel = Channel::new(host);
        let start = Instant::now();
        let deadline = start + Duration::from_millis(300);
        assert_eq!(channel.await_reply(1, deadline, &mut |_| panic!()).unwrap(), None);
        assert!(start.elapsed() < Duration::from_secs(5));
        drop(kernel);
        let deadline = Instant::now() + Duration::from_secs(10);
        let error = channel.await_reply(1, deadline, &mut |_| panic!()).unwrap_err();
        assert!(error.to_string().contains("closed"), "{error}");
    }

    #[test]
    fn a_stale_reply_is_reported_and_discarded_not_taken_as_the_answer() {
        let pending = pending_file("stale");
        let (host, mut kernel_end) = UnixStream::pair().unwrap();
        // A reply to a request nobody waits for any more is already on the line.
        kernel_end
            .write_all(&Message::Reply { ok: true, message: "module 'old' loaded" }.encode(12345).unwrap())
            .unwrap();
        let kernel = kernel(kernel_end, |_| true);
        let mut channel = Channel::new(host);
        let mut lines = Vec::new();
        let request = Message::Unload { name: "greeting" };
        let exchanged =
            exchange(&mut channel, &pending, &request, "UNLOAD greeting", Duration::from_secs(10), &mut |line| {
                lines.push(line)
            })
            .unwrap();
        let reply = exchanged.reply;
        assert_eq!(
            (reply.request, reply.ok, reply.message.as_str()),
            (exchanged.id, true, "module 'greeting' unloaded")
        );
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].starts_with("patch channel: discarded a stale reply to request 12345"), "{lines:?}");
        assert!(lines[0].ends_with("ok: module 'old' loaded"), "{lines:?}");
        assert!(pending.read().is_empty());
        drop(channel);
        assert_eq!(kernel.join().unwrap(), ["unload greeting"]);
    }

    #[test]
    fn the_next_command_reports_what_became_of_a_request_whose_reply_was_lost() {
        let pending = pending_file("lost");
        // Command 1 sends a load and times out at once; the kernel's reply is
        // lost (as when nobody is connected any more when it is written).
        let (host, kernel_end) = UnixStream::pair().unwrap();
        let kernel =
            kernel(kernel_end, |answer| answer.earlier.is_some() || answer.message != "module 'greeting' loaded");
        let mut channel = Channel::new(host);
        let mut lines = Vec::new();
        let load = Message::Load { name: "greeting", module: b"MODULE" };
        let error = exchange(&mut channel, &pending, &load, "LOAD greeting (6 bytes)", Duration::ZERO, &mut |line| {
            lines.push(line)
        })
        .unwrap_err()
        .to_string();
        let noted = pending.read();
        assert_eq!(noted.len(), 1);
        assert_eq!(noted[0].what, "LOAD greeting (6 bytes)");
        assert!(
            error.starts_with(&format!("no reply to request {} (LOAD greeting (6 bytes)) within 0 s", noted[0].id))
        );
        // Command 2 (same kernel): asks about request 1 first, then unloads.
        let unload = Message::Unload { name: "greeting" };
        let second =
            exchange(&mut channel, &pending, &unload, "UNLOAD greeting", Duration::from_secs(10), &mut |line| {
                lines.push(line)
            })
            .unwrap();
        assert_eq!(
            lines,
            [format!(
                "earlier request {} (LOAD greeting (6 bytes)), asked again: ok: module 'greeting' loaded",
                noted[0].id
            )]
        );
        assert_eq!(second.reply.message, "module 'greeting' unloaded");
        assert!(pending.read().is_empty());
        drop(channel);
        assert_eq!(kernel.join().unwrap(), ["load greeting", "unload greeting"]);
    }

    #[test]
    fn a_late_reply_to_an_earlier_request_is_its_outcome() {
        let pending = pending_file("late");
        pending.add(&Sent { id: 500, what: "LOAD counter (9 bytes)".into() }).unwrap();
        pending.add(&Sent { id: 501, what: "UNLOAD ten".into() }).unwrap();
        let (host, mut kernel_end) = UnixStream::pair().unwrap();
        // The late reply to 500 arrives first; the kernel never saw 501.
        kernel_end
            .write_all(&Message::Reply { ok: false, message: "load counter: refused" }.encode(500).unwrap())
            .unwrap();
        let kernel = kernel(kernel_end, |_| true);
        let mut channel = Channel::new(host);
        let mut lines = Vec::new();
        let request = Message::Unload { name: "counter" };
        exchange(&mut channel, &pending, &request, "UNLOAD counter", Duration::from_secs(10), &mut |line| {
            lines.push(line)
        })
        .unwrap();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[0], "earlier request 500 (LOAD counter (9 bytes)), late reply: error: load counter: refused");
        assert!(
            lines[1].starts_with("earlier request 501 (UNLOAD ten), asked again: error: no record of request 501"),
            "{lines:?}"
        );
        assert!(pending.read().is_empty());
        drop(channel);
        assert_eq!(kernel.join().unwrap(), ["unload counter"]);
    }

    #[test]
    fn a_timed_out_request_stays_pending_and_says_so() {
        let pending = pending_file("timeout");
        let (host, kernel_end) = UnixStream::pair().unwrap();
        let mut channel = Channel::new(host);
        let request = Message::Unload { name: "greeting" };
        let error =
            exchange(&mut channel, &pending, &request, "UNLOAD greeting", Duration::from_millis(300), &mut |_| {})
                .unwrap_err()
                .to_string();
        assert!(error.starts_with("no reply to request "), "{error}");
        assert!(error.contains("the next `cargo xtask patch` command reports what became of it"), "{error}");
        let noted = pending.read();
        assert_eq!(noted.len(), 1);
        assert_eq!(noted[0].what, "UNLOAD greeting");
        assert!(error.contains(&noted[0].id.to_string()));
        drop(kernel_end);
    }

    #[test]
    fn pending_file_round_trips_and_ids_are_fresh() {
        let pending = pending_file("file");
        assert!(pending.read().is_empty());
        pending.add(&Sent { id: 1, what: "LOAD a (3 bytes)".into() }).unwrap();
        pending.add(&Sent { id: 2, what: "UNLOAD b".into() }).unwrap();
        assert_eq!(pending.read().iter().map(|sent| sent.id).collect::<Vec<_>>(), [1, 2]);
        pending.remove(1).unwrap();
        assert_eq!(pending.read(), [Sent { id: 2, what: "UNLOAD b".into() }]);
        pending.remove(2).unwrap();
        assert!(!pending.path.exists());
        let taken = [Sent { id: 5, what: String::new() }];
        let ids: Vec<u32> = (0..100).map(|_| new_id(&taken)).collect();
        assert!(ids.iter().all(|&id| id != 0 && id != 5));
        assert!(ids.windows(2).any(|pair| pair[0] != pair[1]));
    }
}
