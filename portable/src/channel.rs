//! The patch channel: checksummed frames that carry patch modules to the kernel over a byte stream.
//!
//! `cargo xtask patch load|unload` and the kernel talk over a second virtual
//! terminal (QEMU `spapr-vty` at reg [`VTY_REG`], a unix socket on the host side).
//! Every message is one frame:
//!
//! ```text
//! "KLPF"  kind (u8)  length (u32 LE)  payload (length bytes)  CRC-32 (u32 LE)
//!         └──────────── covered by the CRC-32 (IEEE) ────────┘
//! ```
//!
//! | kind | payload |
//! |---|---|
//! | [`Kind::Load`] | name length (u16 LE), name (UTF-8), the signed module |
//! | [`Kind::Unload`] | name (UTF-8) |
//! | [`Kind::Reply`] | status (u8: 0 ok, 1 error), message (UTF-8) |
//!
//! [`FrameDecoder`] takes the stream a byte at a time. It skips garbage up to the
//! next magic, rejects oversized lengths, unknown kinds and bad checksums, and
//! after each rejection scans again the bytes that followed the rejected magic,
//! so a good frame swallowed by a bogus header is still found. A frame cut off
//! by the sender (an interrupted `cargo xtask patch load`) is given up by
//! [`FrameDecoder::flush`], which the receiver calls once the line has been
//! quiet for a while. Nothing here panics on any input.

use alloc::collections::VecDeque;
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

/// Magic, kind and length.
pub const HEADER_LENGTH: usize = 9;

/// The CRC-32 after the payload.
pub const CHECKSUM_LENGTH: usize = 4;

/// The largest payload a decoder accepts by default (a patch module is a few KiB).
pub const MAX_PAYLOAD: usize = 4 << 20;

/// What a frame asks for or answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Host to kernel: load (verify, link, enable) a signed module.
    Load = 1,
    /// Host to kernel: disable and unload a module by name.
    Unload = 2,
    /// Kernel to host: the outcome of the last request.
    Reply = 3,
}

impl Kind {
    pub fn from_byte(byte: u8) -> Option<Kind> {
        match byte {
            1 => Some(Kind::Load),
            2 => Some(Kind::Unload),
            3 => Some(Kind::Reply),
            _ => None,
        }
    }
}

/// One decoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub kind: Kind,
    pub payload: Vec<u8>,
}

/// Why the decoder rejected what looked like the start of a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The byte after the magic is no [`Kind`].
    UnknownKind(u8),
    /// The header announces a payload above the decoder's limit.
    TooLong { length: u32, limit: usize },
    /// The CRC-32 at the end does not match the frame.
    BadChecksum { received: u32, computed: u32 },
    /// The stream went quiet in the middle of a frame (see [`FrameDecoder::flush`]).
    Truncated { received: usize, expected: Option<usize> },
}

impl fmt::Display for FrameError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::UnknownKind(kind) => write!(formatter, "unknown frame kind {kind}"),
            FrameError::TooLong { length, limit } => {
                write!(formatter, "frame payload of {length} bytes is over the limit of {limit} bytes")
            }
            FrameError::BadChecksum { received, computed } => {
                write!(formatter, "frame checksum mismatch: received {received:#010x}, computed {computed:#010x}")
            }
            FrameError::Truncated { received, expected: Some(expected) } => {
                write!(formatter, "frame cut off after {received} of {expected} bytes")
            }
            FrameError::Truncated { received, expected: None } => {
                write!(formatter, "frame cut off after {received} bytes, inside its header")
            }
        }
    }
}

/// The bytes of a frame of `kind` carrying `payload`. A payload longer than
/// `u32::MAX` bytes gets the length `u32::MAX`, which every decoder refuses.
pub fn encode(kind: Kind, payload: &[u8]) -> Vec<u8> {
    let length = u32::try_from(payload.len()).unwrap_or(u32::MAX).to_le_bytes();
    let mut frame = Vec::with_capacity(HEADER_LENGTH + payload.len() + CHECKSUM_LENGTH);
    frame.extend_from_slice(&MAGIC);
    frame.push(kind as u8);
    frame.extend_from_slice(&length);
    frame.extend_from_slice(payload);
    let mut crc = Crc32::new();
    crc.update(&[kind as u8]);
    crc.update(&length);
    crc.update(payload);
    frame.extend_from_slice(&crc.finish().to_le_bytes());
    frame
}

/// Turns a byte stream into frames; see the module documentation.
pub struct FrameDecoder {
    limit: usize,
    /// The candidate frame so far: part of the magic, or the magic and more.
    candidate: Vec<u8>,
    /// The candidate's kind, once read.
    kind: Option<Kind>,
    /// The candidate's payload length, once its header is complete.
    payload_length: Option<usize>,
    /// CRC-32 of the candidate's kind, length and payload so far.
    crc: Crc32,
    /// Bytes to scan before new input: those after a rejected frame's first byte.
    replay: VecDeque<u8>,
    skipped: u64,
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
            kind: None,
            payload_length: None,
            crc: Crc32::new(),
            replay: VecDeque::new(),
            skipped: 0,
        }
    }

    /// Takes the next byte of the stream; returns a frame or a rejection when one is complete.
    ///
    /// At most one result comes out per call. After a rejection, bytes received
    /// earlier may still hold a frame: they are scanned on the following calls,
    /// and [`FrameDecoder::flush`] scans what is left when no more input comes.
    pub fn push(&mut self, byte: u8) -> Option<Result<Frame, FrameError>> {
        self.replay.push_back(byte);
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
            let expected = self.payload_length.map(|length| HEADER_LENGTH + length + CHECKSUM_LENGTH);
            let error = FrameError::Truncated { received: self.candidate.len(), expected };
            self.reject();
            return Some(Err(error));
        }
        self.skipped += self.candidate.len() as u64;
        self.candidate.clear();
        None
    }

    /// Bytes skipped so far: garbage between frames and the first byte of each rejected frame.
    pub fn skipped(&self) -> u64 {
        self.skipped
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
        if position == MAGIC.len() {
            let Some(kind) = Kind::from_byte(byte) else {
                self.reject();
                return Some(Err(FrameError::UnknownKind(byte)));
            };
            self.kind = Some(kind);
            self.crc = Crc32::new();
        }
        let Some(payload_length) = self.payload_length else {
            // Kind and length bytes.
            self.crc.update(&[byte]);
            if self.candidate.len() == HEADER_LENGTH {
                let length = self.candidate.get(5..HEADER_LENGTH).and_then(|bytes| bytes.try_into().ok());
                let length = u32::from_le_bytes(length.unwrap_or([0xff; 4]));
                if usize::try_from(length).map_or(true, |length| length > self.limit) {
                    self.reject();
                    return Some(Err(FrameError::TooLong { length, limit: self.limit }));
                }
                let length = length as usize;
                self.payload_length = Some(length);
                // Grows further as bytes come: a bogus header costs no big allocation.
                self.candidate.reserve(length.min(64 << 10) + CHECKSUM_LENGTH);
            }
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
        let kind = self.kind;
        match kind {
            Some(kind) if received == computed => {
                let mut payload = core::mem::take(&mut self.candidate);
                payload.truncate(end_of_payload);
                payload.drain(..HEADER_LENGTH);
                self.kind = None;
                self.payload_length = None;
                Some(Ok(Frame { kind, payload }))
            }
            _ => {
                self.reject();
                Some(Err(FrameError::BadChecksum { received, computed }))
            }
        }
    }

    /// Drops the candidate and queues everything after its first byte to be scanned again.
    fn reject(&mut self) {
        for &byte in self.candidate.iter().skip(1).rev() {
            self.replay.push_front(byte);
        }
        self.candidate.clear();
        self.kind = None;
        self.payload_length = None;
        self.skipped += 1;
    }
}

/// A decoded request or reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// Load the signed module `module` under `name`.
    Load { name: &'a str, module: &'a [u8] },
    /// Unload the module `name`.
    Unload { name: &'a str },
    /// The outcome of a request, with a message for the user.
    Reply { ok: bool, message: &'a str },
}

/// Why a frame's payload does not make a [`Message`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayloadError {
    /// Shorter than its fixed fields or its name length.
    Short,
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

    /// The frame carrying this message.
    pub fn encode(&self) -> Result<Vec<u8>, PayloadError> {
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
            Message::Reply { ok, message } => {
                payload.push(if ok { 0 } else { 1 });
                payload.extend_from_slice(message.as_bytes());
                Kind::Reply
            }
        };
        Ok(encode(kind, &payload))
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

    fn frame(kind: Kind, payload: &[u8]) -> Frame {
        Frame { kind, payload: payload.to_vec() }
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
        let bytes = encode(Kind::Unload, b"ten");
        assert_eq!(&bytes[..4], b"KLPF");
        assert_eq!(bytes[4], 2);
        assert_eq!(&bytes[5..9], &3u32.to_le_bytes());
        assert_eq!(&bytes[9..12], b"ten");
        assert_eq!(&bytes[12..], &crc32(&[2, 3, 0, 0, 0, b't', b'e', b'n']).to_le_bytes());
        assert_eq!(bytes.len(), HEADER_LENGTH + 3 + CHECKSUM_LENGTH);
    }

    #[test]
    fn frames_round_trip() {
        let mut decoder = FrameDecoder::new();
        let module: Vec<u8> = (0..=255).cycle().take(5000).collect();
        let messages = [
            Message::Load { name: "counter", module: &module },
            Message::Unload { name: "counter" },
            Message::Reply { ok: true, message: "counter: loaded, 1 function replaced" },
            Message::Reply { ok: false, message: "" },
        ];
        let stream: Vec<u8> = messages.iter().flat_map(|message| message.encode().unwrap()).collect();
        let results = decode_all(&mut decoder, &stream);
        assert_eq!(results.len(), messages.len());
        for (result, message) in results.iter().zip(&messages) {
            let frame = result.as_ref().unwrap();
            assert_eq!(Message::parse(frame).unwrap(), *message);
        }
        assert_eq!(decoder.skipped(), 0);
        // An empty payload is a frame too.
        assert_eq!(decode_all(&mut decoder, &encode(Kind::Reply, &[])), [Ok(frame(Kind::Reply, &[]))]);
    }

    #[test]
    fn garbage_before_a_frame_is_skipped() {
        let mut decoder = FrameDecoder::new();
        let mut stream = b"boot noise KLP KL K\x00KLPKLPF".to_vec();
        // "KLPF" followed by kind 0: rejected, then the real frame is found.
        stream.extend_from_slice(&encode(Kind::Unload, b"greeting"));
        let results = decode_all(&mut decoder, &stream);
        assert_eq!(results, [Err(FrameError::UnknownKind(b'K')), Ok(frame(Kind::Unload, b"greeting"))]);
        assert!(decoder.skipped() > 20);
    }

    #[test]
    fn split_delivery_gives_the_frame_on_its_last_byte() {
        let mut decoder = FrameDecoder::new();
        let bytes = encode(Kind::Load, b"\x03\x00tenMODULE");
        for (index, &byte) in bytes.iter().enumerate() {
            let result = decoder.push(byte);
            if index + 1 < bytes.len() {
                assert_eq!(result, None, "byte {index}");
                assert!(!decoder.is_idle());
            } else {
                let frame = result.unwrap().unwrap();
                assert_eq!(Message::parse(&frame).unwrap(), Message::Load { name: "ten", module: b"MODULE" });
            }
        }
        assert!(decoder.is_idle());
    }

    #[test]
    fn bad_checksum_is_rejected_and_the_next_frame_still_decodes() {
        let mut decoder = FrameDecoder::new();
        let mut bad = encode(Kind::Unload, b"counter");
        let last = bad.len() - 1;
        bad[10] ^= 0x20;
        let computed = crc32(&bad[4..last - 3]);
        let mut stream = bad.clone();
        stream.extend_from_slice(&encode(Kind::Unload, b"ten"));
        let results = decode_all(&mut decoder, &stream);
        let received = u32::from_le_bytes(bad[last - 3..].try_into().unwrap());
        assert_eq!(results, [Err(FrameError::BadChecksum { received, computed }), Ok(frame(Kind::Unload, b"ten"))]);
        assert!(results[0].as_ref().unwrap_err().to_string().contains("checksum mismatch"));
    }

    #[test]
    fn oversize_length_is_rejected_at_the_header() {
        let mut decoder = FrameDecoder::with_limit(100);
        let mut stream = b"KLPF\x01".to_vec();
        stream.extend_from_slice(&101u32.to_le_bytes());
        stream.extend_from_slice(&encode(Kind::Unload, b"x"));
        let results = decode_all(&mut decoder, &stream);
        assert_eq!(results, [Err(FrameError::TooLong { length: 101, limit: 100 }), Ok(frame(Kind::Unload, b"x"))]);
        // The default limit: 4 MiB passes the header check, one byte more does not.
        let mut decoder = FrameDecoder::new();
        let header = |length: u32| [&b"KLPF\x01"[..], &length.to_le_bytes()].concat();
        assert_eq!(header(MAX_PAYLOAD as u32).iter().find_map(|&byte| decoder.push(byte)), None);
        let mut decoder = FrameDecoder::new();
        assert_eq!(
            header(u32::MAX).iter().find_map(|&byte| decoder.push(byte)),
            Some(Err(FrameError::TooLong { length: u32::MAX, limit: MAX_PAYLOAD }))
        );
    }

    #[test]
    fn truncated_frame_is_given_up_on_flush() {
        let mut decoder = FrameDecoder::new();
        let whole = encode(Kind::Reply, b"\x00loaded");
        let cut = &whole[..whole.len() - 3];
        assert!(cut.iter().all(|&byte| decoder.push(byte).is_none()));
        assert_eq!(
            decoder.flush(),
            Some(Err(FrameError::Truncated { received: cut.len(), expected: Some(whole.len()) }))
        );
        assert_eq!(decoder.flush(), None);
        // A frame cut inside its header.
        assert!(b"KLPF\x03\x07".iter().all(|&byte| decoder.push(byte).is_none()));
        assert_eq!(decoder.flush(), Some(Err(FrameError::Truncated { received: 6, expected: None })));
        assert_eq!(decoder.flush(), None);
        // Afterwards the decoder works as new.
        assert_eq!(decode_all(&mut decoder, &whole), [Ok(frame(Kind::Reply, b"\x00loaded"))]);
    }

    #[test]
    fn frame_swallowed_by_a_truncated_one_is_recovered() {
        // An interrupted sender left half a LOAD; the next complete frame is read as
        // its payload until the line goes quiet, then found again by rescanning.
        let mut decoder = FrameDecoder::new();
        let interrupted = encode(Kind::Load, &[7; 300]);
        let mut stream = interrupted[..100].to_vec();
        stream.extend_from_slice(&encode(Kind::Unload, b"greeting"));
        let results = decode_all(&mut decoder, &stream);
        assert_eq!(results.len(), 2);
        assert!(matches!(results[0], Err(FrameError::Truncated { expected: Some(313), .. })));
        assert_eq!(results[1], Ok(frame(Kind::Unload, b"greeting")));
        // The same when the next frame is long enough to complete the bogus one.
        let mut stream = interrupted[..100].to_vec();
        stream.extend_from_slice(&encode(Kind::Load, &[9; 400]));
        let results = decode_all(&mut decoder, &stream);
        assert!(matches!(results[0], Err(FrameError::BadChecksum { .. })));
        assert_eq!(frames(&results), [frame(Kind::Load, &[9; 400])]);
    }

    #[test]
    fn payload_errors_are_reported() {
        let parse = |kind, payload: &[u8]| Message::parse(&frame(kind, payload)).map(|_| ());
        assert_eq!(parse(Kind::Load, b"\x05\x00abc"), Err(PayloadError::Short));
        assert_eq!(parse(Kind::Load, b"\x05"), Err(PayloadError::Short));
        assert_eq!(parse(Kind::Load, b"\x00\x00module"), Err(PayloadError::BadName));
        assert_eq!(parse(Kind::Load, b"\x02\x00\xff\xfemodule"), Err(PayloadError::NotUtf8));
        assert_eq!(parse(Kind::Unload, b""), Err(PayloadError::BadName));
        assert_eq!(parse(Kind::Reply, b""), Err(PayloadError::Short));
        assert_eq!(parse(Kind::Reply, b"\x02why"), Err(PayloadError::BadStatus(2)));
        let reply = frame(Kind::Reply, b"\x01no such module");
        assert_eq!(Message::parse(&reply), Ok(Message::Reply { ok: false, message: "no such module" }));
        let long = "n".repeat(70_000);
        assert_eq!(Message::Load { name: &long, module: &[] }.encode(), Err(PayloadError::BadName));
        assert_eq!(Message::Unload { name: "" }.encode(), Err(PayloadError::BadName));
    }

    #[test]
    fn random_streams_never_panic_and_keep_every_intact_frame() {
        let mut random = Random(0x5eed_1234_abcd_0001);
        for round in 0..300 {
            let mut decoder = FrameDecoder::with_limit(2048);
            let mut stream = Vec::new();
            let mut intact = Vec::new();
            for _ in 0..random.below(8) {
                // Garbage, sometimes with a magic in it.
                let mut garbage = random.some_bytes(40);
                if random.below(3) == 0 {
                    let at = random.below(garbage.len() + 1);
                    garbage.splice(at..at, MAGIC);
                }
                stream.extend_from_slice(&garbage);
                let kind = [Kind::Load, Kind::Unload, Kind::Reply][random.below(3)];
                let payload = random.some_bytes(600);
                let mut bytes = encode(kind, &payload);
                match random.below(5) {
                    // Flip a bit, cut the frame short, or leave it intact.
                    0 => {
                        let at = random.below(bytes.len());
                        bytes[at] ^= 1 << random.below(8);
                    }
                    1 => bytes.truncate(random.below(bytes.len())),
                    _ => intact.push(frame(kind, &payload)),
                }
                stream.extend_from_slice(&bytes);
            }
            let results = decode_all(&mut decoder, &stream);
            assert_eq!(frames(&results), intact, "round {round}");
        }
        // Pure noise, dense with magics and small lengths: no panic, no frame.
        let mut decoder = FrameDecoder::with_limit(64);
        for _ in 0..200_000 {
            let byte = match random.below(6) {
                0..=3 => b"KLPF"[random.below(4)],
                4 => random.below(4) as u8,
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
            stream.extend_from_slice(&encode(Kind::Load, &random.bytes(length)));
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
}
