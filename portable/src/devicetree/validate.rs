//! Checking a whole blob before the `fdt` crate reads it, since that crate panics on some malformed input.
//!
//! Beyond the format's own rules, the check rejects what the `fdt` crate
//! mishandles: NOP tokens (it skips them only in some places), a property
//! after a child node, non-UTF-8 names, `#address-cells`/`#size-cells` that
//! are not one word, nesting deeper than [`MAXIMUM_DEPTH`], and the inputs
//! that would send its alias lookup into endless recursion (property names
//! with `/`, alias values not starting with `/`). Trees written by Open
//! Firmware, QEMU or [`super::FdtWriter`] have none of these.

use super::padded;
use super::{BEGIN_NODE, DeviceTreeError, END, END_NODE, HEADER_SIZE, MAGIC, MAXIMUM_DEPTH, NOP, PROPERTY, VERSION};
use crate::bytes::big_endian_u32;

/// Checks `bytes` and returns the blob it starts with (as long as its header says).
pub(super) fn check(bytes: &[u8]) -> Result<&[u8], DeviceTreeError> {
    let blob = check_header(bytes)?;
    let structure = block(blob, 2, 9)?;
    let strings = block(blob, 3, 8)?;
    let reservations = header_word(blob, 4)? as usize;
    if reservations > blob.len() {
        return Err(DeviceTreeError::BlockOutOfBounds);
    }
    Walk::new(structure, strings).run()?;
    Ok(blob)
}

/// Header word number `index`.
fn header_word(bytes: &[u8], index: usize) -> Result<u32, DeviceTreeError> {
    big_endian_u32(bytes, index * 4).ok_or(DeviceTreeError::Truncated)
}

/// Checks magic, version and total size; returns the blob.
fn check_header(bytes: &[u8]) -> Result<&[u8], DeviceTreeError> {
    if bytes.len() < HEADER_SIZE {
        return Err(DeviceTreeError::Truncated);
    }
    if header_word(bytes, 0)? != MAGIC {
        return Err(DeviceTreeError::BadMagic);
    }
    let version = header_word(bytes, 5)?;
    if version < VERSION || header_word(bytes, 6)? > VERSION {
        return Err(DeviceTreeError::UnsupportedVersion(version));
    }
    let total_size = header_word(bytes, 1)? as usize;
    if total_size < HEADER_SIZE {
        return Err(DeviceTreeError::BlockOutOfBounds);
    }
    bytes.get(..total_size).ok_or(DeviceTreeError::Truncated)
}

/// The block whose offset and size are header words `offset_index` and `size_index`.
fn block(blob: &[u8], offset_index: usize, size_index: usize) -> Result<&[u8], DeviceTreeError> {
    let start = header_word(blob, offset_index)? as usize;
    let size = header_word(blob, size_index)? as usize;
    let end = start.checked_add(size).ok_or(DeviceTreeError::BlockOutOfBounds)?;
    blob.get(start..end).ok_or(DeviceTreeError::BlockOutOfBounds)
}

/// A pass over the structure block, token by token.
struct Walk<'a> {
    structure: &'a [u8],
    strings: &'a [u8],
    /// Offset of the next token.
    offset: usize,
    /// Nodes open; 0 before the root begins and after it ends.
    depth: usize,
    /// The root node has ended.
    root_ended: bool,
    /// The current node already had a child.
    after_child: bool,
    /// The current node is `/aliases`.
    in_aliases: bool,
}

impl<'a> Walk<'a> {
    fn new(structure: &'a [u8], strings: &'a [u8]) -> Self {
        Walk { structure, strings, offset: 0, depth: 0, root_ended: false, after_child: false, in_aliases: false }
    }

    /// Checks every token up to END.
    fn run(mut self) -> Result<(), DeviceTreeError> {
        loop {
            let token = self.word("structure block ends without an END token")?;
            match token {
                BEGIN_NODE => self.begin_node()?,
                END_NODE => self.end_node()?,
                PROPERTY => self.property()?,
                END if self.root_ended => return Ok(()),
                END => return Err(self.error("END token inside a node")),
                NOP => return Err(self.error("NOP token (not supported)")),
                _ => return Err(self.error("unknown token")),
            }
        }
    }

    /// A structure error at the current offset.
    fn error(&self, reason: &'static str) -> DeviceTreeError {
        DeviceTreeError::BadStructure { offset: self.offset, reason }
    }

    /// Reads the word at the current offset and moves past it.
    fn word(&mut self, reason: &'static str) -> Result<u32, DeviceTreeError> {
        let word = big_endian_u32(self.structure, self.offset).ok_or_else(|| self.error(reason))?;
        self.offset += 4;
        Ok(word)
    }

    /// Moves past `length` bytes and their padding; returns them.
    fn take(&mut self, length: usize, reason: &'static str) -> Result<&'a [u8], DeviceTreeError> {
        let structure = self.structure;
        let end = self.offset.checked_add(length).ok_or_else(|| self.error(reason))?;
        let bytes = structure.get(self.offset..end).ok_or_else(|| self.error(reason))?;
        self.offset = self.offset.saturating_add(padded(length));
        Ok(bytes)
    }

    /// Checks a node's name and nesting (its BEGIN_NODE token already read).
    fn begin_node(&mut self) -> Result<(), DeviceTreeError> {
        if self.root_ended {
            return Err(self.error("second root node"));
        }
        let rest = self.structure.get(self.offset..).unwrap_or(&[]);
        let name = before_nul(rest).ok_or_else(|| self.error("node name without NUL"))?;
        self.take(name.len() + 1, "node name runs past the block")?;
        let name = core::str::from_utf8(name).map_err(|_| self.error("node name not UTF-8"))?;
        if self.depth == 0 && !name.is_empty() {
            return Err(self.error("root node has a name"));
        }
        self.depth += 1;
        if self.depth > MAXIMUM_DEPTH {
            return Err(DeviceTreeError::TooDeep);
        }
        self.in_aliases = self.depth == 2 && name == "aliases";
        self.after_child = false;
        Ok(())
    }

    /// Checks that a node is open to end.
    fn end_node(&mut self) -> Result<(), DeviceTreeError> {
        if self.depth == 0 {
            return Err(self.error("END_NODE without a node"));
        }
        self.depth -= 1;
        self.root_ended = self.depth == 0;
        self.after_child = true;
        Ok(())
    }

    /// Checks a property's place, extent and name (its PROPERTY token already read).
    fn property(&mut self) -> Result<(), DeviceTreeError> {
        if self.depth == 0 {
            return Err(self.error("property outside any node"));
        }
        if self.after_child {
            return Err(self.error("property after a child node"));
        }
        let length = self.word("property header runs past the block")? as usize;
        let name_offset = self.word("property header runs past the block")? as usize;
        let value = self.take(length, "property value runs past the block")?;
        let name = self.property_name(name_offset)?;
        let is_cell_count = name == "#address-cells" || name == "#size-cells";
        if is_cell_count && value.len() != 4 {
            return Err(self.error("cell count not one word"));
        }
        if self.in_aliases && !value.starts_with(b"/") {
            return Err(self.error("alias not an absolute path"));
        }
        Ok(())
    }

    /// The property name at `name_offset` in the strings block.
    fn property_name(&self, name_offset: usize) -> Result<&'a str, DeviceTreeError> {
        let rest = self.strings.get(name_offset..).ok_or_else(|| self.error("property name outside strings block"))?;
        let name = before_nul(rest).ok_or_else(|| self.error("property name without NUL"))?;
        let name = core::str::from_utf8(name).map_err(|_| self.error("property name not UTF-8"))?;
        if name.contains('/') {
            return Err(self.error("property name contains '/'"));
        }
        Ok(name)
    }
}

/// The bytes before the first NUL; `None` without a NUL.
fn before_nul(bytes: &[u8]) -> Option<&[u8]> {
    let length = bytes.iter().position(|&byte| byte == 0)?;
    bytes.get(..length)
}
