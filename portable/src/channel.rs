//! The patch channel: numbered, checksummed frames that carry patch modules to the kernel and its answers back.
//!
//! `cargo xtask patch load|unload` and the kernel talk over a second virtual
//! terminal (QEMU `spapr-vty` at reg [`VTY_REG`], a unix socket on the host side).
//! Every message is one frame (format version [`VERSION`]):
//!
//! ```text
//! "KLPF"  version (u8)  kind (u8)  id (u32 LE)  length (u32 LE)  payload (length bytes)  CRC-32 (u32 LE)
//!         └───────────────────────── covered by the CRC-32 (IEEE) ─────────────────────┘
//! ```
//!
//! | kind | payload |
//! |---|---|
//! | [`Kind::Load`] | name length (u16 LE), name (UTF-8), the signed module |
//! | [`Kind::Unload`] | name (UTF-8) |
//! | [`Kind::Query`] | the id of an earlier request (u32 LE) |
//! | [`Kind::Reply`] | status (u8: 0 ok, 1 error), message (UTF-8) |
//! | [`Kind::Identify`] | none; the reply says `build-id HEX commit COMMIT[-dirty]` ([`crate::build_id`]) |
//!
//! **Ids.** The host numbers each request (any id but 0) and the kernel's
//! REPLY carries the id of the request it answers, so a host that finds a
//! reply to some earlier request on the line (one whose command timed out or
//! was interrupted) reports and discards it instead of taking it as its own
//! answer. A reply with id 0 answers nothing the kernel could attribute (a
//! frame broken before its id). The kernel ([`Server`]) remembers the outcome
//! of its last [`Outcomes::CAPACITY`] requests, including frames it gave up
//! as broken or cut off, and a QUERY asks for one of them by id: that is how
//! a host learns what became of a request whose reply it never saw.
//!
//! **Decoding.** [`FrameDecoder`] takes the stream a byte at a time. It skips
//! garbage up to the next magic, rejects other versions, oversized lengths,
//! unknown kinds and bad checksums, and after each rejection scans again the
//! bytes that followed the rejected magic, so a good frame swallowed by a
//! bogus header is still found. Scanning again is paid for with credit that
//! only fresh bytes earn ([`REPLAY_FACTOR`] each), so the decoder's work stays
//! linear in what it received: a sender who nests bogus headers inside each
//! other (each one's rejection would scan the rest again, quadratic work) gets
//! [`FrameError::TooManyRejections`] and the bytes it could not pay to scan
//! again are dropped. A frame cut off by the sender (an interrupted
//! `cargo xtask patch load`) is given up by [`FrameDecoder::flush`], which the
//! receiver calls once the line has been quiet for a while. Nothing here
//! panics on any input.
//!
//! **Versions.** Version 1 had neither the version byte nor the id: its frame
//! had the kind (1, 2 or 3) where the version byte is now. Its LOAD and REPLY
//! frames are therefore refused as versions 1 and 3; its UNLOAD frame reads as
//! version 2 and then fails the kind, length or checksum check (the CRC covers
//! different bytes), so a version-1 sender gets nothing carried out.

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// The channel terminal's unit address on QEMU's VIO bus (device tree node
/// `/vdevice/vty@71000010`), which is also its terminal number for
/// H_GET_TERM_CHAR and H_PUT_TERM_CHAR. QEMU 7.2 derives a VIO device's
/// interrupt from the low byte of this address, so 0x71000100 collides with the
/// console at 0x71000000 ("IRQ 4352 is not free"); 0x71000001 is the NVRAM.
pub const VTY_REG: u64 = 0x7100_0010;

/// The first bytes of every frame.
pub const MAGIC: [u8; 4] = *b"KLPF";

/// How many bytes the decoder may scan again per fresh byte received (see
/// [`FrameDecoder`]): enough for a good frame behind a few nested bogus headers.
pub const REPLAY_FACTOR: usize = 4;

/// The frame format this code reads and writes (the byte after the magic).
pub const VERSION: u8 = 2;

/// Magic, version, kind, id and length.
pub const HEADER_LENGTH: usize = 14;

/// The CRC-32 after the payload.
pub const CHECKSUM_LENGTH: usize = 4;

/// The largest payload a decoder accepts by default (a patch module is a few KiB).
pub const MAX_PAYLOAD: usize = 4 << 20;

/// Where the fields after the magic start.
const VERSION_AT: usize = 4;
const KIND_AT: usize = 5;
const ID_AT: usize = 6;
const LENGTH_AT: usize = 10;

/// What a frame asks for or answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Host to kernel: load (verify, link, enable) a signed module.
    Load = 1,
    /// Host to kernel: disable and unload a module by name.
    Unload = 2,
    /// Kernel to host: the outcome of the request whose id the frame carries.
    Reply = 3,
    /// Host to kernel: what became of an earlier request (by its id).
    Query = 4,
    /// Host to kernel: which kernel is this (its build id and source commit).
    Identify = 5,
}

impl Kind {
    pub fn from_byte(byte: u8) -> Option<Kind> {
        match byte {
            1 => Some(Kind::Load),
            2 => Some(Kind::Unload),
            3 => Some(Kind::Reply),
            4 => Some(Kind::Query),
            5 => Some(Kind::Identify),
            _ => None,
        }
    }
}

/// One decoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub kind: Kind,
    /// The request's id; in a REPLY, the id of the request it answers (0: none).
    pub id: u32,
    pub payload: Vec<u8>,
}

/// Why the decoder rejected what looked like the start of a frame. `id` is
/// what the header said, not checked by the CRC yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The byte after the magic is not [`VERSION`].
    UnsupportedVersion(u8),
    /// The kind byte is no [`Kind`].
    UnknownKind { kind: u8, id: u32 },
    /// The header announces a payload above the decoder's limit.
    TooLong { length: u32, limit: usize, id: u32 },
    /// The CRC-32 at the end does not match the frame.
    BadChecksum { received: u32, computed: u32, id: u32 },
    /// The stream went quiet in the middle of a frame (see [`FrameDecoder::flush`]);
    /// `id` is None when it stopped inside the header.
    Truncated { received: usize, expected: Option<usize>, id: Option<u32> },
    /// `last` was rejected too, but the decoder had no credit left to scan
    /// again the `dropped` bytes after its first byte, so it dropped them (a
    /// stream of broken frames nested in each other: see [`REPLAY_FACTOR`]).
    TooManyRejections { last: Box<FrameError>, dropped: usize },
}

impl FrameError {
    /// The request id the rejected frame's header gave, if it got that far.
    pub fn id(&self) -> Option<u32> {
        match self {
            FrameError::UnsupportedVersion(_) => None,
            FrameError::UnknownKind { id, .. }
            | FrameError::TooLong { id, .. }
            | FrameError::BadChecksum { id, .. } => Some(*id),
            FrameError::Truncated { id, .. } => *id,
            FrameError::TooManyRejections { last, .. } => last.id(),
        }
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::UnsupportedVersion(version) => {
                write!(formatter, "frame format version {version} is not supported (this end speaks version {VERSION})")
            }
            FrameError::UnknownKind { kind, .. } => write!(formatter, "unknown frame kind {kind}"),
            FrameError::TooLong { length, limit, .. } => {
                write!(formatter, "frame payload of {length} bytes is over the limit of {limit} bytes")
            }
            FrameError::BadChecksum { received, computed, .. } => {
                write!(formatter, "frame checksum mismatch: received {received:#010x}, computed {computed:#010x}")
            }
            FrameError::Truncated { received, expected: Some(expected), .. } => {
                write!(formatter, "frame cut off after {received} of {expected} bytes")
            }
            FrameError::Truncated { received, expected: None, .. } => {
                write!(formatter, "frame cut off after {received} bytes, inside its header")
            }
            FrameError::TooManyRejections { last, dropped } => write!(
                formatter,
                "{last}; after too many broken frames in a row the {dropped} bytes after it were dropped unread, \
                 not scanned again for a frame (send the request again)"
            ),
        }
    }
}

/// The bytes of a frame of `kind` and `id` carrying `payload`. A payload longer
/// than `u32::MAX` bytes gets the length `u32::MAX`, which every decoder refuses.
pub fn encode(kind: Kind, id: u32, payload: &[u8]) -> Vec<u8> {
    let length = u32::try_from(payload.len()).unwrap_or(u32::MAX).to_le_bytes();
    let mut frame = Vec::with_capacity(HEADER_LENGTH + payload.len() + CHECKSUM_LENGTH);
    frame.extend_from_slice(&MAGIC);
    frame.push(VERSION);
    frame.push(kind as u8);
    frame.extend_from_slice(&id.to_le_bytes());
    frame.extend_from_slice(&length);
    frame.extend_from_slice(payload);
    let checksum = crc32(&frame[VERSION_AT..]);
    frame.extend_from_slice(&checksum.to_le_bytes());
    frame
}

/// Turns a byte stream into frames; see the module documentation.
pub struct FrameDecoder {
    limit: usize,
    /// The candidate frame so far: part of the magic, or the magic and more.
    candidate: Vec<u8>,
    /// The candidate's kind, id and payload length, once its header is complete.
    header: Option<(Kind, u32, usize)>,
    /// CRC-32 of the candidate's bytes after the magic, up to the end of its payload.
    crc: Crc32,
    /// Bytes to scan before new input: those after a rejected frame's first byte.
    replay: VecDeque<u8>,
    /// How many more bytes rejections may queue to be scanned again: each
    /// fresh byte adds [`REPLAY_FACTOR`], up to `credit_limit`.
    credit: usize,
    credit_limit: usize,
    skipped: u64,
    scanned: u64,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    /// A decoder accepting payloads up to [`MAX_PAYLOAD`].
    pub fn new() -> Self {
        Self::with_limit(MAX_PAYLOAD)
    }

    /// A decoder accepting payloads up to `limit` bytes.
    pub fn with_limit(limit: usize) -> Self {
        FrameDecoder {
            limit,
            candidate: Vec::new(),
            header: None,
            crc: Crc32::new(),
            replay: VecDeque::new(),
            credit: 0,
            // A whole frame's worth, REPLAY_FACTOR times: what one message can ask for.
            credit_limit: REPLAY_FACTOR.saturating_mul(limit.saturating_add(HEADER_LENGTH + CHECKSUM_LENGTH)),
            skipped: 0,
            scanned: 0,
        }
    }

    /// Takes the next byte of the stream; returns a frame or a rejection when one is complete.
    ///
    /// At most one result comes out per call. After a rejection, bytes received
    /// earlier may still hold a frame: they are scanned on the following calls,
    /// by [`FrameDecoder::drain`], and by [`FrameDecoder::flush`].
    pub fn push(&mut self, byte: u8) -> Option<Result<Frame, FrameError>> {
        self.credit = self.credit.saturating_add(REPLAY_FACTOR).min(self.credit_limit);
        if self.replay.is_empty() {
            // The common case: nothing is waiting to be scanned again.
            return self.step(byte);
        }
        self.replay.push_back(byte);
        self.scan()
    }

    /// Pushes `bytes`, then scans what rejections left to scan again; gives
    /// each result to `each`. Afterwards only an unfinished frame remains.
    pub fn push_bytes(&mut self, bytes: &[u8], mut each: impl FnMut(Result<Frame, FrameError>)) {
        for &byte in bytes {
            if let Some(result) = self.push(byte) {
                each(result);
            }
        }
        while let Some(result) = self.drain() {
            each(result);
        }
    }

    /// The next result from bytes already received, without giving up an
    /// unfinished frame; None when there is none.
    pub fn drain(&mut self) -> Option<Result<Frame, FrameError>> {
        self.scan()
    }

    /// The line has been quiet: returns the next result from what was already
    /// received, giving up an unfinished frame as [`FrameError::Truncated`] (and
    /// scanning again what followed its first byte). Call until it returns `None`;
    /// the decoder is then idle.
    pub fn flush(&mut self) -> Option<Result<Frame, FrameError>> {
        if let Some(result) = self.scan() {
            return Some(result);
        }
        if self.candidate.len() > MAGIC.len() {
            let (expected, id) = match self.header {
                Some((_, id, length)) => (Some(HEADER_LENGTH + length + CHECKSUM_LENGTH), Some(id)),
                None => (None, None),
            };
            let error = FrameError::Truncated { received: self.candidate.len(), expected, id };
            return Some(Err(self.reject(error)));
        }
        self.skipped += self.candidate.len() as u64;
        self.candidate.clear();
        None
    }

    /// Bytes skipped so far: garbage between frames and the first byte of each rejected frame.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Bytes looked at so far, fresh and scanned again: the decoder's work,
    /// at most `1 + REPLAY_FACTOR` times the bytes received.
    pub fn scanned(&self) -> u64 {
        self.scanned
    }

    /// Whether the decoder holds no unfinished frame and nothing left to scan.
    pub fn is_idle(&self) -> bool {
        self.candidate.is_empty() && self.replay.is_empty()
    }

    /// Scans pending bytes until one completes a result or none are left.
    fn scan(&mut self) -> Option<Result<Frame, FrameError>> {
        while let Some(byte) = self.replay.pop_front() {
            if let Some(result) = self.step(byte) {
                return Some(result);
            }
        }
        None
    }

    /// Adds one byte to the candidate frame.
    fn step(&mut self, byte: u8) -> Option<Result<Frame, FrameError>> {
        self.scanned += 1;
        let position = self.candidate.len();
        if position < MAGIC.len() {
            // No proper prefix of "KLPF" ends with another prefix of it, so after a
            // mismatch only the current byte can start the magic again.
            if MAGIC.get(position) == Some(&byte) {
                self.candidate.push(byte);
            } else {
                self.skipped += position as u64;
                self.candidate.clear();
                if byte == MAGIC[0] {
                    self.candidate.push(byte);
                } else {
                    self.skipped += 1;
                }
            }
            return None;
        }
        self.candidate.push(byte);
        let Some((kind, id, payload_length)) = self.header else {
            // Version, kind, id and length bytes.
            if position == VERSION_AT {
                if byte != VERSION {
                    return Some(Err(self.reject(FrameError::UnsupportedVersion(byte))));
                }
                self.crc = Crc32::new();
            }
            self.crc.update(&[byte]);
            if self.candidate.len() < HEADER_LENGTH {
                return None;
            }
            let field = |at: usize| {
                let bytes = self.candidate.get(at..at + 4).and_then(|bytes| bytes.try_into().ok());
                u32::from_le_bytes(bytes.unwrap_or([0xff; 4]))
            };
            let (id, length) = (field(ID_AT), field(LENGTH_AT));
            let kind_byte = self.candidate.get(KIND_AT).copied().unwrap_or(0);
            let Some(kind) = Kind::from_byte(kind_byte) else {
                return Some(Err(self.reject(FrameError::UnknownKind { kind: kind_byte, id })));
            };
            if usize::try_from(length).map_or(true, |length| length > self.limit) {
                return Some(Err(self.reject(FrameError::TooLong { length, limit: self.limit, id })));
            }
            let length = length as usize;
            self.header = Some((kind, id, length));
            // Grows further as bytes come: a bogus header costs no big allocation.
            self.candidate.reserve(length.min(64 << 10) + CHECKSUM_LENGTH);
            return None;
        };
        let end_of_payload = HEADER_LENGTH + payload_length;
        if self.candidate.len() <= end_of_payload {
            self.crc.update(&[byte]);
            return None;
        }
        if self.candidate.len() < end_of_payload + CHECKSUM_LENGTH {
            return None;
        }
        let received = self.candidate.get(end_of_payload..).and_then(|bytes| bytes.try_into().ok());
        let received = u32::from_le_bytes(received.unwrap_or([0; 4]));
        let computed = self.crc.finish();
        if received != computed {
            return Some(Err(self.reject(FrameError::BadChecksum { received, computed, id })));
        }
        let mut payload = core::mem::take(&mut self.candidate);
        payload.truncate(end_of_payload);
        payload.drain(..HEADER_LENGTH);
        self.header = None;
        Some(Ok(Frame { kind, id, payload }))
    }

    /// Drops the candidate and queues everything after its first byte to be
    /// scanned again, if the credit pays for it; otherwise drops those bytes
    /// too and says so. Returns the error to report.
    fn reject(&mut self, error: FrameError) -> FrameError {
        let again = self.candidate.len().saturating_sub(1);
        self.header = None;
        self.skipped += 1;
        if again > self.credit {
            self.skipped += again as u64;
            self.candidate.clear();
            return FrameError::TooManyRejections { last: Box::new(error), dropped: again };
        }
        self.credit -= again;
        for &byte in self.candidate.iter().skip(1).rev() {
            self.replay.push_front(byte);
        }
        self.candidate.clear();
        error
    }
}

/// A decoded request or reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// Load the signed module `module` under `name`.
    Load { name: &'a str, module: &'a [u8] },
    /// Unload the module `name`.
    Unload { name: &'a str },
    /// What became of the earlier request `request`.
    Query { request: u32 },
    /// Which kernel this is.
    Identify,
    /// The outcome of a request, with a message for the user.
    Reply { ok: bool, message: &'a str },
}

/// Why a frame's payload does not make a [`Message`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayloadError {
    /// Shorter than its fixed fields or its name length.
    Short,
    /// Longer than its fixed fields (a QUERY holds exactly one id).
    Long,
    /// A name or message that is not UTF-8.
    NotUtf8,
    /// A name longer than 65535 bytes (encoding only) or empty.
    BadName,
    /// A reply status other than 0 (ok) or 1 (error).
    BadStatus(u8),
}

impl fmt::Display for PayloadError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PayloadError::Short => write!(formatter, "frame payload is too short"),
            PayloadError::Long => write!(formatter, "frame payload is too long"),
            PayloadError::NotUtf8 => write!(formatter, "frame payload text is not UTF-8"),
            PayloadError::BadName => write!(formatter, "module name is empty or longer than 65535 bytes"),
            PayloadError::BadStatus(status) => write!(formatter, "unknown reply status {status}"),
        }
    }
}

impl<'a> Message<'a> {
    /// Reads the message a frame carries.
    pub fn parse(frame: &'a Frame) -> Result<Message<'a>, PayloadError> {
        let text = |bytes: &'a [u8]| core::str::from_utf8(bytes).map_err(|_| PayloadError::NotUtf8);
        let payload = frame.payload.as_slice();
        match frame.kind {
            Kind::Load => {
                let (length, rest) = payload.split_first_chunk::<2>().ok_or(PayloadError::Short)?;
                let length = usize::from(u16::from_le_bytes(*length));
                let (name, module) = rest.split_at_checked(length).ok_or(PayloadError::Short)?;
                let name = text(name)?;
                if name.is_empty() {
                    return Err(PayloadError::BadName);
                }
                Ok(Message::Load { name, module })
            }
            Kind::Unload => {
                let name = text(payload)?;
                if name.is_empty() {
                    return Err(PayloadError::BadName);
                }
                Ok(Message::Unload { name })
            }
            Kind::Query => {
                let (request, rest) = payload.split_first_chunk::<4>().ok_or(PayloadError::Short)?;
                if !rest.is_empty() {
                    return Err(PayloadError::Long);
                }
                Ok(Message::Query { request: u32::from_le_bytes(*request) })
            }
            Kind::Identify if payload.is_empty() => Ok(Message::Identify),
            Kind::Identify => Err(PayloadError::Long),
            Kind::Reply => {
                let (status, message) = payload.split_first().ok_or(PayloadError::Short)?;
                let ok = match status {
                    0 => true,
                    1 => false,
                    other => return Err(PayloadError::BadStatus(*other)),
                };
                Ok(Message::Reply { ok, message: text(message)? })
            }
        }
    }

    /// The frame carrying this message as request `id` (for a reply: answering request `id`).
    pub fn encode(&self, id: u32) -> Result<Vec<u8>, PayloadError> {
        let mut payload = Vec::new();
        let kind = match *self {
            Message::Load { name, module } => {
                let length = u16::try_from(name.len()).map_err(|_| PayloadError::BadName)?;
                if name.is_empty() {
                    return Err(PayloadError::BadName);
                }
                payload.reserve(2 + name.len() + module.len());
                payload.extend_from_slice(&length.to_le_bytes());
                payload.extend_from_slice(name.as_bytes());
                payload.extend_from_slice(module);
                Kind::Load
            }
            Message::Unload { name } => {
                if name.is_empty() {
                    return Err(PayloadError::BadName);
                }
                payload.extend_from_slice(name.as_bytes());
                Kind::Unload
            }
            Message::Query { request } => {
                payload.extend_from_slice(&request.to_le_bytes());
                Kind::Query
            }
            Message::Identify => Kind::Identify,
            Message::Reply { ok, message } => {
                payload.push(if ok { 0 } else { 1 });
                payload.extend_from_slice(message.as_bytes());
                Kind::Reply
            }
        };
        Ok(encode(kind, id, &payload))
    }
}

/// What the kernel sends back: a REPLY to request `request`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The id of the request answered; 0 when the kernel could not tell (a frame broken before its id).
    pub request: u32,
    pub ok: bool,
    pub message: String,
    /// For the answer to a QUERY: the id of the earlier request whose outcome it repeats.
    pub earlier: Option<u32>,
}

impl Answer {
    /// The REPLY frame.
    pub fn frame(&self) -> Vec<u8> {
        encode(Kind::Reply, self.request, &[&[u8::from(!self.ok)], self.message.as_bytes()].concat())
    }
}

/// The outcomes of the last [`Outcomes::CAPACITY`] requests, by id, for QUERY.
#[derive(Default)]
pub struct Outcomes {
    /// Oldest first.
    entries: VecDeque<Answer>,
}

impl Outcomes {
    /// How many outcomes are kept.
    pub const CAPACITY: usize = 16;

    /// Keeps `answer` (unless it answers no request), forgetting the oldest beyond the capacity.
    pub fn record(&mut self, answer: &Answer) {
        if answer.request == 0 {
            return;
        }
        if self.entries.len() == Self::CAPACITY {
            self.entries.pop_front();
        }
        self.entries.push_back(answer.clone());
    }

    /// The latest outcome of request `request`.
    pub fn find(&self, request: u32) -> Option<&Answer> {
        self.entries.iter().rev().find(|answer| answer.request == request)
    }
}

/// A request the kernel carries out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request<'a> {
    Load {
        name: &'a str,
        module: &'a [u8],
    },
    Unload {
        name: &'a str,
    },
    /// The handler answers with the kernel's `build-id HEX commit COMMIT[-dirty]`.
    Identify,
}

/// The kernel's side of the protocol, without the terminal: bytes in, answers
/// out, each request carried out by the caller's handler (which returns ok and
/// a message). Every frame gets exactly one answer, in the order frames
/// arrived; QUERY is answered from [`Outcomes`].
#[derive(Default)]
pub struct Server {
    decoder: FrameDecoder,
    outcomes: Outcomes,
}

impl Server {
    pub fn new() -> Self {
        Self::default()
    }

    /// A server whose decoder accepts payloads up to `limit` bytes.
    pub fn with_limit(limit: usize) -> Self {
        Server { decoder: FrameDecoder::with_limit(limit), outcomes: Outcomes::default() }
    }

    /// Takes received bytes; returns the answers to the frames they completed.
    pub fn receive(&mut self, bytes: &[u8], handle: &mut impl FnMut(Request) -> (bool, String)) -> Vec<Answer> {
        let mut results = Vec::new();
        self.decoder.push_bytes(bytes, |result| results.push(result));
        results.into_iter().map(|result| self.answer(result, handle)).collect()
    }

    /// The line has been quiet: gives up an unfinished frame (and answers what
    /// rescanning its bytes finds).
    pub fn give_up(&mut self, handle: &mut impl FnMut(Request) -> (bool, String)) -> Vec<Answer> {
        let results: Vec<_> = core::iter::from_fn(|| self.decoder.flush()).collect();
        results.into_iter().map(|result| self.answer(result, handle)).collect()
    }

    /// Whether no frame is half received.
    pub fn is_idle(&self) -> bool {
        self.decoder.is_idle()
    }

    fn answer(
        &mut self,
        result: Result<Frame, FrameError>,
        handle: &mut impl FnMut(Request) -> (bool, String),
    ) -> Answer {
        let frame = match result {
            Ok(frame) => frame,
            Err(error) => {
                let message = match error.id() {
                    Some(id) => format!("request {id} arrived broken ({error}); nothing was done"),
                    None => format!("a broken frame arrived ({error}); nothing was done"),
                };
                let answer = Answer { request: error.id().unwrap_or(0), ok: false, message, earlier: None };
                self.outcomes.record(&answer);
                return answer;
            }
        };
        let (ok, message) = match Message::parse(&frame) {
            Ok(Message::Load { name, module }) => handle(Request::Load { name, module }),
            Ok(Message::Unload { name }) => handle(Request::Unload { name }),
            Ok(Message::Identify) => handle(Request::Identify),
            Ok(Message::Query { request }) => {
                let (ok, message) = match self.outcomes.find(request) {
                    Some(outcome) => (outcome.ok, outcome.message.clone()),
                    None => (
                        false,
                        format!(
                            "no record of request {request}: it never arrived whole, or more than {} requests came after it, or the kernel restarted since",
                            Outcomes::CAPACITY
                        ),
                    ),
                };
                // Answering a query is not an outcome to remember.
                return Answer { request: frame.id, ok, message, earlier: Some(request) };
            }
            Ok(Message::Reply { .. }) => (false, String::from("the kernel takes requests, not replies")),
            Err(error) => (false, format!("bad request: {error}")),
        };
        let answer = Answer { request: frame.id, ok, message, earlier: None };
        self.outcomes.record(&answer);
        answer
    }
}

/// CRC-32 as in Ethernet, zlib and PNG (reflected polynomial 0xEDB88320).
#[derive(Clone, Copy, Debug)]
pub struct Crc32(u32);

/// The CRC of every byte value, computed at compile time.
const CRC_TABLE: [u32; 256] = {
    let mut table = [0; 256];
    let mut index = 0;
    while index < 256 {
        let mut crc = index as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
            bit += 1;
        }
        table[index] = crc;
        index += 1;
    }
    table
};

impl Default for Crc32 {
    fn default() -> Self {
        Self::new()
    }
}

impl Crc32 {
    pub const fn new() -> Self {
        Crc32(0xFFFF_FFFF)
    }

    pub fn update(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = CRC_TABLE[usize::from((self.0 as u8) ^ byte)] ^ (self.0 >> 8);
        }
    }

    pub fn finish(&self) -> u32 {
        !self.0
    }
}

/// The CRC-32 of `bytes`.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = Crc32::new();
    crc.update(bytes);
    crc.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    /// Feeds `bytes` one at a time, then flushes; returns every result in order.
    fn decode_all(decoder: &mut FrameDecoder, bytes: &[u8]) -> Vec<Result<Frame, FrameError>> {
        let mut results: Vec<_> = bytes.iter().filter_map(|&byte| decoder.push(byte)).collect();
        while let Some(result) = decoder.flush() {
            results.push(result);
        }
        assert!(decoder.is_idle());
        results
    }

    fn frames(results: &[Result<Frame, FrameError>]) -> Vec<Frame> {
        results.iter().filter_map(|result| result.clone().ok()).collect()
    }

    fn frame(kind: Kind, id: u32, payload: &[u8]) -> Frame {
        Frame { kind, id, payload: payload.to_vec() }
    }

    /// A header of `kind` and `id` announcing `length` payload bytes.
    fn header(kind: u8, id: u32, length: u32) -> Vec<u8> {
        [&MAGIC[..], &[VERSION, kind], &id.to_le_bytes(), &length.to_le_bytes()].concat()
    }

    /// xorshift64*: a fixed-seed generator, so the random tests are repeatable.
    struct Random(u64);

    impl Random {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, bound: usize) -> usize {
            (self.next() % bound as u64) as usize
        }

        fn bytes(&mut self, length: usize) -> Vec<u8> {
            (0..length).map(|_| self.next() as u8).collect()
        }

        /// Fewer than `bound` random bytes.
        fn some_bytes(&mut self, bound: usize) -> Vec<u8> {
            let length = self.below(bound);
            self.bytes(length)
        }
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
        let mut split = Crc32::new();
        split.update(b"1234");
        split.update(b"56789");
        assert_eq!(split.finish(), 0xCBF4_3926);
    }

    #[test]
    fn encodes_the_documented_layout() {
        let bytes = encode(Kind::Unload, 0x0102_0304, b"ten");
        assert_eq!(&bytes[..4], b"KLPF");
        assert_eq!(bytes[4], VERSION);
        assert_eq!(bytes[4], 2);
        assert_eq!(bytes[5], 2);
        assert_eq!(&bytes[6..10], &[4, 3, 2, 1]);
        assert_eq!(&bytes[10..14], &3u32.to_le_bytes());
        assert_eq!(&bytes[14..17], b"ten");
        assert_eq!(&bytes[17..], &crc32(&[2, 2, 4, 3, 2, 1, 3, 0, 0, 0, b't', b'e', b'n']).to_le_bytes());
        assert_eq!(bytes.len(), HEADER_LENGTH + 3 + CHECKSUM_LENGTH);
        // A reply's status byte: 0 ok, 1 error.
        let answer = Answer { request: 9, ok: false, message: "no".to_string(), earlier: None };
        assert_eq!(answer.frame(), encode(Kind::Reply, 9, b"\x01no"));
        assert_eq!(answer.frame(), Message::Reply { ok: false, message: "no" }.encode(9).unwrap());
    }

    #[test]
    fn frames_round_trip_with_their_ids() {
        let mut decoder = FrameDecoder::new();
        let module: Vec<u8> = (0..=255).cycle().take(5000).collect();
        let messages = [
            (1, Message::Load { name: "counter", module: &module }),
            (u32::MAX, Message::Unload { name: "counter" }),
            (0x8000_0001, Message::Query { request: 0xdead_beef }),
            (7, Message::Reply { ok: true, message: "counter: loaded, 1 function replaced" }),
            (0, Message::Reply { ok: false, message: "" }),
        ];
        let stream: Vec<u8> = messages.iter().flat_map(|(id, message)| message.encode(*id).unwrap()).collect();
        let results = decode_all(&mut decoder, &stream);
        assert_eq!(results.len(), messages.len());
        for (result, (id, message)) in results.iter().zip(&messages) {
            let frame = result.as_ref().unwrap();
            assert_eq!(frame.id, *id);
            assert_eq!(Message::parse(frame).unwrap(), *message);
        }
        assert_eq!(decoder.skipped(), 0);
        // An empty payload is a frame too.
        assert_eq!(decode_all(&mut decoder, &encode(Kind::Reply, 3, &[])), [Ok(frame(Kind::Reply, 3, &[]))]);
    }

    #[test]
    fn garbage_before_a_frame_is_skipped() {
        let mut decoder = FrameDecoder::new();
        let mut stream = b"boot noise KLP KL K\x00KLPKLPF".to_vec();
        // "KLPF" followed by 'K': no version, rejected, then the real frame is found.
        stream.extend_from_slice(&encode(Kind::Unload, 5, b"greeting"));
        let results = decode_all(&mut decoder, &stream);
        assert_eq!(results, [Err(FrameError::UnsupportedVersion(b'K')), Ok(frame(Kind::Unload, 5, b"greeting"))]);
        assert!(decoder.skipped() > 20);
    }

    #[test]
    fn other_versions_are_refused_and_version_1_frames_are_never_carried_out() {
        // Version 1: "KLPF", kind, length, payload, CRC of kind..payload (no version, no id).
        let version_1 = |kind: u8, payload: &[u8]| {
            let body = [&[kind][..], &(payload.len() as u32).to_le_bytes(), payload].concat();
            [&MAGIC[..], &body, &crc32(&body).to_le_bytes()].concat()
        };
        let mut decoder = FrameDecoder::new();
        let load = version_1(1, b"\x08\x00greetingMODULE");
        assert_eq!(decode_all(&mut decoder, &load), [Err(FrameError::UnsupportedVersion(1))]);
        let reply = version_1(3, b"\x00loaded");
        assert_eq!(decode_all(&mut decoder, &reply), [Err(FrameError::UnsupportedVersion(3))]);
        for name in ["greeting", "ten", "a", "xy", "abcd", "counter"] {
            let results = decode_all(&mut decoder, &version_1(2, name.as_bytes()));
            assert!(frames(&results).is_empty(), "{name}: {results:?}");
        }
        let mut future = encode(Kind::Unload, 1, b"x");
        future[VERSION_AT] = 3;
        assert_eq!(decode_all(&mut decoder, &future), [Err(FrameError::UnsupportedVersion(3))]);
        assert!(FrameError::UnsupportedVersion(3).to_string().contains("version 3 is not supported"));
    }

    #[test]
    fn split_delivery_gives_the_frame_on_its_last_byte() {
        let mut decoder = FrameDecoder::new();
        let bytes = encode(Kind::Load, 77, b"\x03\x00tenMODULE");
        for (index, &byte) in bytes.iter().enumerate() {
            let result = decoder.push(byte);
            if index + 1 < bytes.len() {
                assert_eq!(result, None, "byte {index}");
                assert!(!decoder.is_idle());
            } else {
                let frame = result.unwrap().unwrap();
                assert_eq!(frame.id, 77);
                assert_eq!(Message::parse(&frame).unwrap(), Message::Load { name: "ten", module: b"MODULE" });
            }
        }
        assert!(decoder.is_idle());
    }

    /// Headers nested in each other, each announcing a payload that ends where
    /// the stream ends, none with a good checksum: without a bound, each
    /// rejection scans the rest again (16 KiB, 1,100 headers: some 10 million
    /// steps). The decoder does at most `1 + REPLAY_FACTOR` steps per byte,
    /// says why it dropped the rest, and decodes the next good frame.
    #[test]
    fn nested_broken_frames_cost_linear_work_and_an_error_that_says_so() {
        const TOTAL: usize = 16 << 10;
        const NESTED: usize = 1100;
        let mut stream = Vec::with_capacity(TOTAL);
        for id in 0..NESTED {
            let length = TOTAL - stream.len() - HEADER_LENGTH - CHECKSUM_LENGTH;
            stream.extend(header(Kind::Unload as u8, id as u32 + 1, length as u32));
        }
        stream.resize(TOTAL, b'x');
        let good = Message::Unload { name: "ten" }.encode(7777).unwrap();
        let mut server = Server::new();
        let mut log = Vec::new();
        let mut answers = server.receive(&stream, &mut handler(&mut log));
        answers.extend(server.receive(&good, &mut handler(&mut log)));
        let work = server.decoder.scanned();
        let received = (stream.len() + good.len()) as u64;
        assert!(work <= (1 + REPLAY_FACTOR as u64) * received, "{work} steps for {received} bytes");
        let gave_up = answers.iter().find(|answer| answer.message.contains("too many broken frames"));
        let gave_up = gave_up.expect("an answer says why the rest was dropped");
        assert!(!gave_up.ok && gave_up.request != 0, "{gave_up:?}");
        assert!(gave_up.message.contains("frame checksum mismatch"), "{}", gave_up.message);
        assert_eq!(answers.last(), Some(&answer(7777, true, "unload ten: done")));
        assert_eq!(log, ["unload ten"]);
    }

    #[test]
    fn bad_checksum_is_rejected_with_its_id_and_the_next_frame_still_decodes() {
        let mut decoder = FrameDecoder::new();
        let mut bad = encode(Kind::Unload, 41, b"counter");
        let last = bad.len() - 1;
        bad[HEADER_LENGTH + 1] ^= 0x20;
        let computed = crc32(&bad[VERSION_AT..last - 3]);
        let mut stream = bad.clone();
        stream.extend_from_slice(&encode(Kind::Unload, 42, b"ten"));
        let results = decode_all(&mut decoder, &stream);
        let received = u32::from_le_bytes(bad[last - 3..].try_into().unwrap());
        assert_eq!(
            results,
            [Err(FrameError::BadChecksum { received, computed, id: 41 }), Ok(frame(Kind::Unload, 42, b"ten"))]
        );
        assert!(results[0].as_ref().unwrap_err().to_string().contains("checksum mismatch"));
        // The CRC covers the header: a changed id or kind is caught too.
        for at in [VERSION_AT + 1, ID_AT, ID_AT + 3] {
            let mut changed = encode(Kind::Unload, 41, b"counter");
            changed[at] ^= 0x01;
            let results = decode_all(&mut decoder, &changed);
            assert!(frames(&results).is_empty(), "byte {at}: {results:?}");
        }
    }

    #[test]
    fn unknown_kind_and_oversize_length_are_rejected_at_the_header_with_its_id() {
        let mut decoder = FrameDecoder::with_limit(100);
        let mut stream = header(9, 12, 1);
        stream.extend_from_slice(&header(Kind::Load as u8, 13, 101));
        stream.extend_from_slice(&encode(Kind::Unload, 14, b"x"));
        let results = decode_all(&mut decoder, &stream);
        assert_eq!(
            results,
            [
                Err(FrameError::UnknownKind { kind: 9, id: 12 }),
                Err(FrameError::TooLong { length: 101, limit: 100, id: 13 }),
                Ok(frame(Kind::Unload, 14, b"x")),
            ]
        );
        assert_eq!(results[0].as_ref().unwrap_err().id(), Some(12));
        assert_eq!(results[1].as_ref().unwrap_err().id(), Some(13));
        // The default limit: 4 MiB passes the header check, one byte more does not.
        let mut decoder = FrameDecoder::new();
        assert_eq!(header(1, 1, MAX_PAYLOAD as u32).iter().find_map(|&byte| decoder.push(byte)), None);
        let mut decoder = FrameDecoder::new();
        assert_eq!(
            header(1, 1, MAX_PAYLOAD as u32 + 1).iter().find_map(|&byte| decoder.push(byte)),
            Some(Err(FrameError::TooLong { length: MAX_PAYLOAD as u32 + 1, limit: MAX_PAYLOAD, id: 1 }))
        );
        let mut decoder = FrameDecoder::new();
        assert_eq!(
            header(1, 2, u32::MAX).iter().find_map(|&byte| decoder.push(byte)),
            Some(Err(FrameError::TooLong { length: u32::MAX, limit: MAX_PAYLOAD, id: 2 }))
        );
    }

    #[test]
    fn truncated_frame_is_given_up_on_flush_with_its_id() {
        let mut decoder = FrameDecoder::new();
        let whole = encode(Kind::Reply, 31, b"\x00loaded");
        let cut = &whole[..whole.len() - 3];
        assert!(cut.iter().all(|&byte| decoder.push(byte).is_none()));
        let error = FrameError::Truncated { received: cut.len(), expected: Some(whole.len()), id: Some(31) };
        assert_eq!(decoder.flush(), Some(Err(error.clone())));
        assert_eq!(error.id(), Some(31));
        assert_eq!(decoder.flush(), None);
        // A frame cut inside its header: no id yet.
        assert!(whole[..9].iter().all(|&byte| decoder.push(byte).is_none()));
        let error = FrameError::Truncated { received: 9, expected: None, id: None };
        assert_eq!(decoder.flush(), Some(Err(error.clone())));
        assert_eq!(error.id(), None);
        assert!(error.to_string().contains("inside its header"));
        assert_eq!(decoder.flush(), None);
        // Afterwards the decoder works as new.
        assert_eq!(decode_all(&mut decoder, &whole), [Ok(frame(Kind::Reply, 31, b"\x00loaded"))]);
    }

    #[test]
    fn frame_swallowed_by_a_truncated_one_is_recovered() {
        // An interrupted sender left half a LOAD; the next complete frame is read as
        // its payload until the line goes quiet, then found again by rescanning.
        let mut decoder = FrameDecoder::new();
        let interrupted = encode(Kind::Load, 1, &[7; 300]);
        let mut stream = interrupted[..100].to_vec();
        stream.extend_from_slice(&encode(Kind::Unload, 2, b"greeting"));
        let results = decode_all(&mut decoder, &stream);
        assert_eq!(results.len(), 2);
        assert!(matches!(results[0], Err(FrameError::Truncated { expected: Some(318), id: Some(1), .. })));
        assert_eq!(results[1], Ok(frame(Kind::Unload, 2, b"greeting")));
        // The same when the next frame is long enough to complete the bogus one.
        let mut stream = interrupted[..100].to_vec();
        stream.extend_from_slice(&encode(Kind::Load, 3, &[9; 400]));
        let results = decode_all(&mut decoder, &stream);
        assert!(matches!(results[0], Err(FrameError::BadChecksum { id: 1, .. })));
        assert_eq!(frames(&results), [frame(Kind::Load, 3, &[9; 400])]);
    }

    #[test]
    fn push_bytes_gives_a_frame_found_by_rescanning_without_waiting_for_a_flush() {
        // The cut LOAD is completed (bad checksum) by the last byte of the next
        // frame; that frame is found again in the same call, not 2 s later at
        // the flush.
        let mut decoder = FrameDecoder::new();
        let mut stream = encode(Kind::Load, 1, &[7; 500])[..100].to_vec();
        stream.extend_from_slice(&encode(Kind::Load, 3, &[9; 400]));
        assert_eq!(stream.len(), HEADER_LENGTH + 500 + CHECKSUM_LENGTH);
        let mut results = Vec::new();
        decoder.push_bytes(&stream, |result| results.push(result));
        assert!(matches!(results[0], Err(FrameError::BadChecksum { id: 1, .. })));
        assert_eq!(frames(&results), [frame(Kind::Load, 3, &[9; 400])]);
        // Nothing is left over for a flush to find.
        assert!(decoder.is_idle());
    }

    #[test]
    fn payload_errors_are_reported() {
        let parse = |kind, payload: &[u8]| Message::parse(&frame(kind, 1, payload)).map(|_| ());
        assert_eq!(parse(Kind::Load, b"\x05\x00abc"), Err(PayloadError::Short));
        assert_eq!(parse(Kind::Load, b"\x05"), Err(PayloadError::Short));
        assert_eq!(parse(Kind::Load, b"\x00\x00module"), Err(PayloadError::BadName));
        assert_eq!(parse(Kind::Load, b"\x02\x00\xff\xfemodule"), Err(PayloadError::NotUtf8));
        assert_eq!(parse(Kind::Unload, b""), Err(PayloadError::BadName));
        assert_eq!(parse(Kind::Query, b"\x01\x02\x03"), Err(PayloadError::Short));
        assert_eq!(parse(Kind::Query, b"\x01\x02\x03\x04\x05"), Err(PayloadError::Long));
        assert_eq!(parse(Kind::Reply, b""), Err(PayloadError::Short));
        assert_eq!(parse(Kind::Reply, b"\x02why"), Err(PayloadError::BadStatus(2)));
        let reply = frame(Kind::Reply, 1, b"\x01no such module");
        assert_eq!(Message::parse(&reply), Ok(Message::Reply { ok: false, message: "no such module" }));
        let long = "n".repeat(70_000);
        assert_eq!(Message::Load { name: &long, module: &[] }.encode(1), Err(PayloadError::BadName));
        assert_eq!(Message::Unload { name: "" }.encode(1), Err(PayloadError::BadName));
    }

    #[test]
    fn random_streams_never_panic_and_keep_every_intact_frame() {
        let mut random = Random(0x5eed_1234_abcd_0001);
        for round in 0..300 {
            let mut decoder = FrameDecoder::with_limit(2048);
            let mut stream = Vec::new();
            let mut intact = Vec::new();
            for _ in 0..random.below(8) {
                // Garbage, sometimes with a magic (and the version) in it.
                let mut garbage = random.some_bytes(40);
                if random.below(3) == 0 {
                    let at = random.below(garbage.len() + 1);
                    let magic: &[u8] = if random.below(2) == 0 { &MAGIC } else { b"KLPF\x02" };
                    garbage.splice(at..at, magic.iter().copied());
                }
                stream.extend_from_slice(&garbage);
                let kind = [Kind::Load, Kind::Unload, Kind::Reply, Kind::Query][random.below(4)];
                let id = random.next() as u32;
                let payload = random.some_bytes(600);
                let mut bytes = encode(kind, id, &payload);
                match random.below(5) {
                    // Flip a bit, cut the frame short, or leave it intact.
                    0 => {
                        let at = random.below(bytes.len());
                        bytes[at] ^= 1 << random.below(8);
                    }
                    1 => bytes.truncate(random.below(bytes.len())),
                    _ => intact.push(frame(kind, id, &payload)),
                }
                stream.extend_from_slice(&bytes);
            }
            let results = decode_all(&mut decoder, &stream);
            assert_eq!(frames(&results), intact, "round {round}");
            // Fed in chunks through push_bytes, the same frames come out.
            let mut decoder = FrameDecoder::with_limit(2048);
            let mut chunked = Vec::new();
            for chunk in stream.chunks(1 + random.below(40)) {
                decoder.push_bytes(chunk, |result| chunked.push(result));
            }
            chunked.extend(core::iter::from_fn(|| decoder.flush()));
            assert_eq!(frames(&chunked), intact, "round {round}, chunked");
        }
        // Pure noise, dense with magics, versions and small lengths: no panic, no frame.
        let mut decoder = FrameDecoder::with_limit(64);
        for _ in 0..200_000 {
            let byte = match random.below(7) {
                0..=3 => b"KLPF"[random.below(4)],
                4 => random.below(5) as u8,
                5 => VERSION,
                _ => random.next() as u8,
            };
            if let Some(Ok(frame)) = decoder.push(byte) {
                // A random frame with a valid CRC is possible but must then really be one.
                assert!(frame.payload.len() <= 64);
            }
        }
        while decoder.flush().is_some() {}
        assert!(decoder.is_idle());
    }

    #[test]
    fn byte_by_byte_and_chunked_delivery_agree() {
        let mut random = Random(42);
        let mut stream = random.bytes(50);
        for length in [0, 1, 17, 999] {
            stream.extend_from_slice(&encode(Kind::Load, length as u32, &random.bytes(length)));
            stream.extend_from_slice(&random.some_bytes(30));
        }
        let expected = decode_all(&mut FrameDecoder::new(), &stream);
        assert_eq!(frames(&expected).len(), 4);
        // Delivery in chunks with flushes only at the end gives the same results.
        let mut decoder = FrameDecoder::new();
        let mut results = Vec::new();
        for chunk in stream.chunks(7) {
            results.extend(chunk.iter().filter_map(|&byte| decoder.push(byte)));
        }
        while let Some(result) = decoder.flush() {
            results.push(result);
        }
        assert_eq!(results, expected);
    }

    fn answer(request: u32, ok: bool, message: &str) -> Answer {
        Answer { request, ok, message: message.to_string(), earlier: None }
    }

    #[test]
    fn outcomes_keep_the_latest_of_the_last_sixteen_requests() {
        let mut outcomes = Outcomes::default();
        outcomes.record(&answer(0, false, "unattributed"));
        assert_eq!(outcomes.find(0), None);
        for request in 1..=20 {
            outcomes.record(&answer(request, true, &request.to_string()));
        }
        assert_eq!(outcomes.find(4), None);
        assert_eq!(outcomes.find(5).map(|outcome| outcome.message.as_str()), Some("5"));
        assert_eq!(outcomes.find(20).map(|outcome| outcome.message.as_str()), Some("20"));
        outcomes.record(&answer(20, false, "again"));
        assert_eq!(outcomes.find(20), Some(&answer(20, false, "again")));
        assert_eq!(outcomes.find(5), None);
    }

    /// A handler that loads any module whose name is not "bad" and records what it was asked.
    fn handler(log: &mut Vec<String>) -> impl FnMut(Request) -> (bool, String) + '_ {
        |request| match request {
            Request::Load { name, module } => {
                log.push(format!("load {name} {}", module.len()));
                (name != "bad", format!("load {name}: {}", if name == "bad" { "refused" } else { "done" }))
            }
            Request::Unload { name } => {
                log.push(format!("unload {name}"));
                (true, format!("unload {name}: done"))
            }
            Request::Identify => {
                log.push(String::from("identify"));
                (true, String::from("build-id 0123456789abcdef0123456789abcdef01234567 commit abc"))
            }
        }
    }

    #[test]
    fn server_answers_identify_with_what_the_handler_says_of_the_kernel() {
        let mut server = Server::new();
        let mut log = Vec::new();
        let request = Message::Identify.encode(41).unwrap();
        assert_eq!(Message::parse(&frame(Kind::Identify, 41, b"")), Ok(Message::Identify));
        assert_eq!(Message::parse(&frame(Kind::Identify, 41, b"x")), Err(PayloadError::Long));
        let answers = server.receive(&request, &mut handler(&mut log));
        assert_eq!(answers, [answer(41, true, "build-id 0123456789abcdef0123456789abcdef01234567 commit abc")]);
        assert_eq!(log, ["identify"]);
        // The reply carries the id the host reads back.
        let mut frames = Vec::new();
        FrameDecoder::new().push_bytes(&answers[0].frame(), |result| frames.push(result.unwrap()));
        let reply = Message::parse(&frames[0]).unwrap();
        let Message::Reply { message, .. } = reply else { panic!("not a reply: {reply:?}") };
        assert_eq!(
            crate::build_id::find_in(message),
            crate::build_id::BuildId::parse("0123456789abcdef0123456789abcdef01234567")
        );
    }

    #[test]
    fn server_answers_each_request_with_its_id_in_order() {
        let mut server = Server::new();
        let mut log = Vec::new();
        let mut stream = Message::Load { name: "ten", module: b"MODULE" }.encode(0x1234_5678).unwrap();
        stream.extend(Message::Load { name: "bad", module: b"" }.encode(2).unwrap());
        stream.extend(Message::Unload { name: "ten" }.encode(1).unwrap());
        let (first, rest) = stream.split_at(20);
        assert_eq!(server.receive(first, &mut handler(&mut log)), []);
        assert!(!server.is_idle());
        let answers = server.receive(rest, &mut handler(&mut log));
        assert_eq!(
            answers,
            [
                answer(0x1234_5678, true, "load ten: done"),
                answer(2, false, "load bad: refused"),
                answer(1, true, "unload ten: done")
            ]
        );
        assert_eq!(log, ["load ten 6", "load bad 0", "unload ten"]);
        assert!(server.is_idle());
        // A REPLY sent to the kernel and a malformed request are answered, not carried out.
        let mut stream = Message::Reply { ok: true, message: "hi" }.encode(5).unwrap();
        stream.extend(encode(Kind::Unload, 6, b"\xff"));
        let answers = server.receive(&stream, &mut handler(&mut log));
        assert_eq!(
            answers,
            [
                answer(5, false, "the kernel takes requests, not replies"),
                answer(6, false, "bad request: frame payload text is not UTF-8"),
            ]
        );
        assert_eq!(log.len(), 3);
    }

    #[test]
    fn server_answers_a_query_from_the_outcomes_it_remembers() {
        let mut server = Server::new();
        let mut log = Vec::new();
        let mut stream = Message::Load { name: "bad", module: b"" }.encode(7).unwrap();
        stream.extend(Message::Query { request: 7 }.encode(8).unwrap());
        stream.extend(Message::Query { request: 99 }.encode(9).unwrap());
        // A query is not itself an outcome: asking about the query finds nothing.
        stream.extend(Message::Query { request: 8 }.encode(10).unwrap());
        let answers = server.receive(&stream, &mut handler(&mut log));
        assert_eq!(answers.len(), 4);
        assert_eq!(answers[0], answer(7, false, "load bad: refused"));
        assert_eq!(answers[1], Answer { earlier: Some(7), ..answer(8, false, "load bad: refused") });
        assert_eq!((answers[2].request, answers[2].ok, answers[2].earlier), (9, false, Some(99)));
        assert!(answers[2].message.starts_with("no record of request 99: it never arrived whole"));
        assert!(answers[3].message.starts_with("no record of request 8"));
        assert_eq!(log, ["load bad 0"]);
    }

    #[test]
    fn server_answers_a_cut_frame_under_its_id_and_still_serves_the_next_request() {
        // An interrupted `patch load` (request 5) then the next command's unload (6):
        // the unload is swallowed by the cut frame until the line goes quiet.
        let mut server = Server::new();
        let mut log = Vec::new();
        let mut stream = Message::Load { name: "ten", module: &[1; 200] }.encode(5).unwrap()[..90].to_vec();
        stream.extend(Message::Unload { name: "ten" }.encode(6).unwrap());
        assert_eq!(server.receive(&stream, &mut handler(&mut log)), []);
        let answers = server.give_up(&mut handler(&mut log));
        assert_eq!(answers.len(), 2);
        assert_eq!(answers[0].request, 5);
        assert_eq!(
            answers[0].message,
            "request 5 arrived broken (frame cut off after 111 of 223 bytes); nothing was done"
        );
        assert_eq!(answers[1], answer(6, true, "unload ten: done"));
        assert_eq!(log, ["unload ten"]);
        assert!(server.is_idle());
        // What became of request 5 can be asked afterwards.
        let answers = server.receive(&Message::Query { request: 5 }.encode(7).unwrap(), &mut handler(&mut log));
        assert_eq!(answers, [Answer { earlier: Some(5), ..answers[0].clone() }]);
        assert!(answers[0].message.starts_with("request 5 arrived broken (frame cut off"));
        // A frame broken before its id is answered with id 0 and not remembered.
        let mut other_version = Message::Unload { name: "ten" }.encode(8).unwrap();
        other_version[VERSION_AT] = 1;
        let answers = server.receive(&other_version, &mut handler(&mut log));
        assert_eq!(answers.first().map(|answer| (answer.request, answer.ok)), Some((0, false)));
        assert!(answers[0].message.starts_with("a broken frame arrived (frame format version 1 is not supported"));
        assert!(answers.iter().all(|answer| !answer.ok));
        assert_eq!(log, ["unload ten"]);
    }
}
