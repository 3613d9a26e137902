//! Writing a flattened device tree into a caller's buffer, without allocating.
//!
//! While nodes and properties arrive, the structure block grows upward from
//! just after the header and the reservation map, and the strings block (each
//! property name once) grows downward from the end of the buffer. A property
//! records its name as a distance from the end of the buffer; [`FdtWriter::finish`]
//! turns those distances into offsets from the start of the strings block, moves
//! the strings block down to follow the structure block, and writes the header.

use super::{
    BEGIN_NODE, END, END_NODE, FdtError, HEADER_SIZE, LAST_COMPATIBLE_VERSION, MAGIC, MAXIMUM_DEPTH,
    MAXIMUM_NAME_LENGTH, PROPERTY, RESERVATION_ENTRY_SIZE, VERSION, padded,
};
use crate::bytes::big_endian_u32;

/// Where the structure block starts: after the header and an empty reservation map.
const STRUCTURE_START: usize = HEADER_SIZE + RESERVATION_ENTRY_SIZE;

/// Writes a flattened device tree (DTB version 17) into a borrowed buffer.
///
/// Call [`begin_node`](Self::begin_node) with an empty name for the root, then
/// for each node its properties, its children and [`end_node`](Self::end_node);
/// [`finish`](Self::finish) leaves the blob at the start of the buffer. Every
/// method checks its room first, so an error leaves what was written intact.
/// The buffer should be 8-byte aligned, as the format expects.
pub struct FdtWriter<'a> {
    buffer: &'a mut [u8],
    /// End of the structure block written so far.
    structure_end: usize,
    /// Start of the strings block, which runs to the end of the buffer.
    strings_start: usize,
    /// Nodes begun and not yet ended.
    depth: usize,
    /// The current node already has a child, so takes no more properties.
    after_child: bool,
    /// The root node has been begun.
    root_begun: bool,
}

impl<'a> FdtWriter<'a> {
    /// A writer that fills `buffer`, which it borrows until [`finish`](Self::finish).
    pub fn new(buffer: &'a mut [u8]) -> Self {
        let strings_start = buffer.len();
        FdtWriter {
            buffer,
            structure_end: STRUCTURE_START,
            strings_start,
            depth: 0,
            after_child: false,
            root_begun: false,
        }
    }

    /// Begins a node named `name` (with its unit address, as in `cpu@0`); the
    /// first node is the root, whose name is empty.
    pub fn begin_node(&mut self, name: &[u8]) -> Result<(), FdtError> {
        check_name(name)?;
        if self.depth == 0 && self.root_begun {
            return Err(FdtError::MultipleRoots);
        }
        if (self.depth == 0) != name.is_empty() {
            return Err(FdtError::InvalidName);
        }
        if self.depth >= MAXIMUM_DEPTH {
            return Err(FdtError::TooDeep);
        }
        self.reserve(4 + padded(name.len() + 1))?;
        self.put(&BEGIN_NODE.to_be_bytes())?;
        self.put(name)?;
        self.put_zeros(padded(name.len() + 1) - name.len())?;
        self.depth += 1;
        self.root_begun = true;
        self.after_child = false;
        Ok(())
    }

    /// Adds the property `name` with `value` (possibly empty) to the open node.
    pub fn property(&mut self, name: &[u8], value: &[u8]) -> Result<(), FdtError> {
        if self.depth == 0 {
            return Err(FdtError::PropertyOutsideNode);
        }
        if self.after_child {
            return Err(FdtError::PropertyAfterChild);
        }
        check_name(name)?;
        if name.is_empty() {
            return Err(FdtError::InvalidName);
        }
        let value_length = u32::try_from(value.len()).map_err(|_| FdtError::TooLarge)?;
        let existing = self.find_string(name);
        let string_room = if existing.is_some() { 0 } else { name.len() + 1 };
        self.reserve(padded(value.len()).saturating_add(12 + string_room))?;
        let position = match existing {
            Some(position) => position,
            None => self.add_string(name)?,
        };
        let distance = u32::try_from(self.buffer.len() - position).map_err(|_| FdtError::TooLarge)?;
        self.put(&PROPERTY.to_be_bytes())?;
        self.put(&value_length.to_be_bytes())?;
        self.put(&distance.to_be_bytes())?;
        self.put(value)?;
        self.put_zeros(padded(value.len()) - value.len())
    }

    /// Ends the node begun last.
    pub fn end_node(&mut self) -> Result<(), FdtError> {
        if self.depth == 0 {
            return Err(FdtError::UnbalancedNodes);
        }
        self.put(&END_NODE.to_be_bytes())?;
        self.depth -= 1;
        self.after_child = true;
        Ok(())
    }

    /// Completes the blob at the start of the buffer and returns its total size.
    /// `boot_cpu_id` is the physical id of the CPU running the kernel.
    pub fn finish(mut self, boot_cpu_id: u32) -> Result<usize, FdtError> {
        if self.depth != 0 {
            return Err(FdtError::UnbalancedNodes);
        }
        if !self.root_begun {
            return Err(FdtError::MissingRoot);
        }
        self.put(&END.to_be_bytes())?;
        let strings_size = self.buffer.len() - self.strings_start;
        let total_size = self.structure_end + strings_size;
        let fits = |size: usize| u32::try_from(size).map_err(|_| FdtError::TooLarge);
        let header = [
            MAGIC,
            fits(total_size)?,
            STRUCTURE_START as u32,
            fits(self.structure_end)?,
            HEADER_SIZE as u32,
            VERSION,
            LAST_COMPATIBLE_VERSION,
            boot_cpu_id,
            fits(strings_size)?,
            fits(self.structure_end - STRUCTURE_START)?,
        ];
        self.relocate_names(strings_size);
        self.buffer.copy_within(self.strings_start.., self.structure_end);
        self.write_header(&header)?;
        Ok(total_size)
    }

    /// Fails unless `size` more bytes fit between the two blocks.
    fn reserve(&self, size: usize) -> Result<(), FdtError> {
        match self.structure_end.checked_add(size) {
            Some(end) if end <= self.strings_start => Ok(()),
            _ => Err(FdtError::BufferTooSmall),
        }
    }

    /// Appends `bytes` to the structure block.
    fn put(&mut self, bytes: &[u8]) -> Result<(), FdtError> {
        self.reserve(bytes.len())?;
        let end = self.structure_end + bytes.len();
        let target = self.buffer.get_mut(self.structure_end..end).ok_or(FdtError::BufferTooSmall)?;
        target.copy_from_slice(bytes);
        self.structure_end = end;
        Ok(())
    }

    /// Appends `count` (at most 4) zero bytes: a name's NUL and padding to a word.
    fn put_zeros(&mut self, count: usize) -> Result<(), FdtError> {
        let zeros = [0u8; 4];
        self.put(zeros.get(..count).unwrap_or(&zeros))
    }

    /// Where `name` already is in the strings block, if it is.
    fn find_string(&self, name: &[u8]) -> Option<usize> {
        let strings = self.buffer.get(self.strings_start..)?;
        let mut start = self.strings_start;
        for string in strings.split(|&byte| byte == 0) {
            if string == name {
                return Some(start);
            }
            start += string.len() + 1;
        }
        None
    }

    /// Prepends `name` and its NUL to the strings block; returns where it starts.
    fn add_string(&mut self, name: &[u8]) -> Result<usize, FdtError> {
        let start = self.strings_start.checked_sub(name.len() + 1).ok_or(FdtError::BufferTooSmall)?;
        if start < self.structure_end {
            return Err(FdtError::BufferTooSmall);
        }
        let target = self.buffer.get_mut(start..self.strings_start).ok_or(FdtError::BufferTooSmall)?;
        let (text, terminator) = target.split_at_mut(name.len());
        text.copy_from_slice(name);
        terminator.fill(0);
        self.strings_start = start;
        Ok(start)
    }

    /// Rewrites every property's name reference, a distance from the end of
    /// the buffer, as an offset from the start of the strings block.
    fn relocate_names(&mut self, strings_size: usize) {
        let mut offset = STRUCTURE_START;
        while offset < self.structure_end {
            offset = match big_endian_u32(self.buffer, offset) {
                Some(BEGIN_NODE) => offset + 4 + padded(self.name_length_at(offset + 4) + 1),
                Some(PROPERTY) => {
                    self.relocate_name_at(offset + 8, strings_size);
                    let value_length = big_endian_u32(self.buffer, offset + 4).unwrap_or(0) as usize;
                    offset + 12 + padded(value_length)
                }
                _ => offset + 4,
            };
        }
    }

    /// Length of the NUL-terminated node name at `offset`.
    fn name_length_at(&self, offset: usize) -> usize {
        let rest = self.buffer.get(offset..self.structure_end).unwrap_or(&[]);
        rest.iter().position(|&byte| byte == 0).unwrap_or(rest.len())
    }

    /// Turns the name distance stored at `offset` into a strings block offset.
    fn relocate_name_at(&mut self, offset: usize, strings_size: usize) {
        let distance = big_endian_u32(self.buffer, offset).unwrap_or(0) as usize;
        let name_offset = strings_size.saturating_sub(distance) as u32;
        if let Some(field) = self.buffer.get_mut(offset..offset + 4) {
            field.copy_from_slice(&name_offset.to_be_bytes());
        }
    }

    /// Writes the header words and the empty memory reservation map.
    fn write_header(&mut self, header: &[u32; 10]) -> Result<(), FdtError> {
        let start = self.buffer.get_mut(..STRUCTURE_START).ok_or(FdtError::BufferTooSmall)?;
        let (words, reservations) = start.split_at_mut(HEADER_SIZE);
        for (field, word) in words.chunks_exact_mut(4).zip(header) {
            field.copy_from_slice(&word.to_be_bytes());
        }
        reservations.fill(0);
        Ok(())
    }
}

/// Checks what every name must satisfy: not too long, no NUL, UTF-8, no `/`.
fn check_name(name: &[u8]) -> Result<(), FdtError> {
    if name.len() > MAXIMUM_NAME_LENGTH {
        return Err(FdtError::NameTooLong);
    }
    if name.contains(&0) {
        return Err(FdtError::NameContainsNul);
    }
    if core::str::from_utf8(name).is_err() || name.contains(&b'/') {
        return Err(FdtError::InvalidName);
    }
    Ok(())
}
