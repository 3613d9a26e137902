//! The kernel's identity: its build id and source commit, as xtask writes them into the image's `.klp_build_id` section.
//!
//! The section is a fixed-size reservation (all zeros until xtask fills it
//! after linking, see xtask/src/build_id.rs and docs/modules.md "Build ids"):
//!
//! ```text
//! "klp-bid1"            8 bytes: format and version
//! build id              20 bytes: SHA-256 of the image's loadable contents (this section zeroed), truncated
//! dirty                 1 byte: 1 when the work tree had uncommitted changes, else 0
//! commit length         1 byte: N, at most CAPACITY - 30
//! commit                N bytes: `git rev-parse HEAD` (ASCII), or "unknown" outside a git tree
//! zeros                 up to CAPACITY
//! ```

use core::fmt;

/// The section that the linker script reserves.
pub const SECTION: &str = ".klp_build_id";

/// The bytes reserved for it.
pub const CAPACITY: usize = 128;

/// The length of a build id in bytes (as GNU's SHA-1 build-id: 40 hex digits).
pub const ID_LENGTH: usize = 20;

/// The first bytes of a filled section.
pub const MAGIC: [u8; 8] = *b"klp-bid1";

/// Where the commit's text starts.
const COMMIT_AT: usize = MAGIC.len() + ID_LENGTH + 2;

/// The longest commit text that fits.
pub const MAX_COMMIT: usize = CAPACITY - COMMIT_AT;

/// A kernel image's build id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BuildId(pub [u8; ID_LENGTH]);

impl BuildId {
    /// Reads 40 hexadecimal digits (either case); `None` for anything else.
    pub fn parse(text: &str) -> Option<BuildId> {
        let digits = text.as_bytes();
        if digits.len() != 2 * ID_LENGTH {
            return None;
        }
        let mut id = [0; ID_LENGTH];
        for (byte, pair) in id.iter_mut().zip(digits.chunks_exact(2)) {
            let high = char::from(pair[0]).to_digit(16)?;
            let low = char::from(pair[1]).to_digit(16)?;
            *byte = (high * 16 + low) as u8;
        }
        Some(BuildId(id))
    }
}

/// Lowercase hexadecimal, 40 digits.
impl fmt::Display for BuildId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|byte| write!(formatter, "{byte:02x}"))
    }
}

/// What a filled section says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BuildInfo<'a> {
    pub id: BuildId,
    /// The source commit the image was built from.
    pub commit: &'a str,
    /// Whether the work tree had changes not in that commit.
    pub dirty: bool,
}

impl BuildInfo<'_> {
    /// The section's bytes; `None` when the commit text is longer than [`MAX_COMMIT`] or not printable ASCII.
    pub fn encode(&self) -> Option<[u8; CAPACITY]> {
        let commit = self.commit.as_bytes();
        if commit.len() > MAX_COMMIT || !commit.iter().all(u8::is_ascii_graphic) {
            return None;
        }
        let mut bytes = [0; CAPACITY];
        bytes[..MAGIC.len()].copy_from_slice(&MAGIC);
        bytes[MAGIC.len()..MAGIC.len() + ID_LENGTH].copy_from_slice(&self.id.0);
        bytes[COMMIT_AT - 2] = u8::from(self.dirty);
        bytes[COMMIT_AT - 1] = commit.len() as u8;
        bytes[COMMIT_AT..COMMIT_AT + commit.len()].copy_from_slice(commit);
        Some(bytes)
    }

    /// Reads a section; `None` when it is not filled (zeros) or malformed.
    pub fn parse(bytes: &[u8]) -> Option<BuildInfo<'_>> {
        if bytes.len() < COMMIT_AT || bytes[..MAGIC.len()] != MAGIC {
            return None;
        }
        let id = BuildId(bytes[MAGIC.len()..MAGIC.len() + ID_LENGTH].try_into().ok()?);
        let dirty = match bytes[COMMIT_AT - 2] {
            0 => false,
            1 => true,
            _ => return None,
        };
        let length = usize::from(bytes[COMMIT_AT - 1]);
        let commit = bytes.get(COMMIT_AT..COMMIT_AT + length)?;
        if !commit.iter().all(u8::is_ascii_graphic) {
            return None;
        }
        Some(BuildInfo { id, commit: core::str::from_utf8(commit).ok()?, dirty })
    }
}

/// `build-id HEX commit COMMIT[-dirty]`: how the kernel names itself (boot line, shell, patch channel).
impl fmt::Display for BuildInfo<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "build-id {} commit {}{}", self.id, self.commit, if self.dirty { "-dirty" } else { "" })
    }
}

/// Reads the build id from a line that [`BuildInfo`]'s `Display` wrote (anywhere in `text`).
pub fn find_in(text: &str) -> Option<BuildId> {
    let after = text.split("build-id ").nth(1)?;
    BuildId::parse(after.get(..2 * ID_LENGTH)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: [u8; ID_LENGTH] =
        [0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0x10, 0x32, 0x54, 0x76, 0x98, 0xba, 0xdc, 0xfe, 0, 1, 2, 0xff];

    #[test]
    fn a_filled_section_reads_back() {
        let info = BuildInfo { id: BuildId(ID), commit: "6221328c0ffee", dirty: true };
        let bytes = info.encode().unwrap();
        assert_eq!(&bytes[..8], b"klp-bid1");
        assert_eq!(BuildInfo::parse(&bytes), Some(info));
        let text = alloc::format!("{info}");
        assert_eq!(text, "build-id 0123456789abcdef1032547698badcfe000102ff commit 6221328c0ffee-dirty");
        assert_eq!(find_in(&alloc::format!("klp: kernel {text}\n")), Some(BuildId(ID)));
    }

    #[test]
    fn a_zeroed_or_broken_section_is_not_read() {
        assert_eq!(BuildInfo::parse(&[0; CAPACITY]), None);
        let mut bytes = BuildInfo { id: BuildId(ID), commit: "abc", dirty: false }.encode().unwrap();
        bytes[COMMIT_AT - 2] = 2;
        assert_eq!(BuildInfo::parse(&bytes), None);
        bytes[COMMIT_AT - 2] = 0;
        bytes[COMMIT_AT - 1] = (CAPACITY - COMMIT_AT + 1) as u8;
        assert_eq!(BuildInfo::parse(&bytes), None);
    }

    #[test]
    fn a_commit_too_long_or_with_spaces_is_not_encoded() {
        let long = "a".repeat(MAX_COMMIT + 1);
        assert!(BuildInfo { id: BuildId(ID), commit: &long, dirty: false }.encode().is_none());
        assert!(BuildInfo { id: BuildId(ID), commit: &long[1..], dirty: false }.encode().is_some());
        assert!(BuildInfo { id: BuildId(ID), commit: "a b", dirty: false }.encode().is_none());
    }

    #[test]
    fn hex_ids_parse_in_either_case_and_nothing_else() {
        let id = BuildId::parse("0123456789ABCDEF1032547698badcfe000102ff").unwrap();
        assert_eq!(id, BuildId(ID));
        assert_eq!(BuildId::parse("0123456789abcdef1032547698badcfe000102f"), None);
        assert_eq!(BuildId::parse("0123456789abcdef1032547698badcfe000102ff0"), None);
        assert_eq!(BuildId::parse("g123456789abcdef1032547698badcfe000102ff"), None);
        assert_eq!(BuildId::parse("+123456789abcdef1032547698badcfe000102ff"), None);
    }
}
