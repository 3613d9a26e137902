//! The function notes format: what the kernel's DWARF says about its functions, for the livepatch core.
//!
//! The kernel cannot read its own DWARF, so xtask reads it after linking
//! and writes two facts per function into the reserved section
//! `.kernel_function_notes`, the way it fills `.kernel_symbols`:
//!
//! - where the function has **inlined copies**: the functions (by global
//!   entry) whose machine code holds its body, from every
//!   `DW_TAG_inlined_subroutine` whose `DW_AT_abstract_origin` is the
//!   function. A live patch reaches only the calls that go through the
//!   function's own entry site, never those copies, so the livepatch core
//!   refuses to replace a function that has any, unless the patch says it
//!   knows. A function inlined everywhere has no entry of its own
//!   (`function` is `None`): its name alone, and where it went;
//! - the **signature** of each `#[livepatchable]` function (parameter names
//!   and types, result type, as DWARF spells them), which `klp patchable`
//!   prints.
//!
//! Layout (all little-endian):
//! ```text
//! header   magic "KFNT" u32 | count u32 | callers_offset u32 | strings_offset u32 | used_bytes u32 | 0 u32
//! entries  count x { function u64 (0: no out-of-line copy) | name u32 | signature u32 (NONE: none)
//!                    | first_caller u32 | caller_count u32 }, sorted by function, then name
//! callers  u64 each: the global entries of the functions holding the copies, per entry sorted
//! strings  each preceded by its length as a u16; name and signature are offsets into this area
//! ```

use crate::bytes::{little_endian_u32, little_endian_u64};

/// First word of a filled table.
pub const MAGIC: u32 = u32::from_le_bytes(*b"KFNT");
const HEADER_SIZE: usize = 24;
const ENTRY_SIZE: usize = 24;
const CALLER_SIZE: usize = 8;
/// The string offset that stands for "no signature".
const NONE: u32 = u32::MAX;

/// What the notes say about one function.
#[derive(Debug, Clone, Copy)]
pub struct Note<'a> {
    /// The function's global entry; `None` when it has no out-of-line copy (inlined everywhere).
    pub function: Option<u64>,
    /// Its name as the kernel symbol table spells it (demangled, no hash).
    pub name: &'a str,
    /// `fn NAME(PARAMETER: TYPE, ...) -> TYPE`, for `#[livepatchable]` functions.
    pub signature: Option<&'a str>,
    callers: &'a [u8],
}

impl<'a> Note<'a> {
    /// The global entries of the functions that hold inlined copies of this one, sorted.
    pub fn callers(&self) -> impl Iterator<Item = u64> + 'a {
        self.callers.chunks_exact(CALLER_SIZE).map(|bytes| u64::from_le_bytes(bytes.try_into().unwrap_or([0; 8])))
    }

    /// Whether any function holds an inlined copy of this one.
    pub fn is_inlined(&self) -> bool {
        !self.callers.is_empty()
    }
}

/// A read-only view of an encoded table.
#[derive(Clone, Copy)]
pub struct FunctionNotes<'a> {
    bytes: &'a [u8],
    count: usize,
    callers_offset: usize,
    strings_offset: usize,
}

impl<'a> FunctionNotes<'a> {
    /// Checks the header; `None` if the table was never filled or is malformed.
    pub fn parse(bytes: &'a [u8]) -> Option<Self> {
        if little_endian_u32(bytes, 0)? != MAGIC {
            return None;
        }
        let count = little_endian_u32(bytes, 4)? as usize;
        let callers_offset = little_endian_u32(bytes, 8)? as usize;
        let strings_offset = little_endian_u32(bytes, 12)? as usize;
        let used = little_endian_u32(bytes, 16)? as usize;
        let entries_end = count.checked_mul(ENTRY_SIZE)?.checked_add(HEADER_SIZE)?;
        if used > bytes.len()
            || entries_end > callers_offset
            || callers_offset > strings_offset
            || strings_offset > used
        {
            return None;
        }
        Some(FunctionNotes { bytes: &bytes[..used], count, callers_offset, strings_offset })
    }

    /// Number of functions with a note.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn string(&self, offset: u32) -> Option<&'a str> {
        let start = self.strings_offset.checked_add(offset as usize)?;
        let length = u16::from_le_bytes(self.bytes.get(start..start.checked_add(2)?)?.try_into().ok()?) as usize;
        core::str::from_utf8(self.bytes.get(start + 2..start + 2 + length)?).ok()
    }

    /// The note at `index`, in (function, name) order; `None` past the end or when malformed.
    pub fn get(&self, index: usize) -> Option<Note<'a>> {
        if index >= self.count {
            return None;
        }
        let entry = HEADER_SIZE + index * ENTRY_SIZE;
        let function = little_endian_u64(self.bytes, entry)?;
        let name = self.string(little_endian_u32(self.bytes, entry + 8)?)?;
        let signature = match little_endian_u32(self.bytes, entry + 12)? {
            NONE => None,
            offset => Some(self.string(offset)?),
        };
        let first = little_endian_u32(self.bytes, entry + 16)? as usize;
        let count = little_endian_u32(self.bytes, entry + 20)? as usize;
        let start = self.callers_offset.checked_add(first.checked_mul(CALLER_SIZE)?)?;
        let end = start.checked_add(count.checked_mul(CALLER_SIZE)?)?;
        if end > self.strings_offset {
            return None;
        }
        let callers = self.bytes.get(start..end)?;
        Some(Note { function: (function != 0).then_some(function), name, signature, callers })
    }

    /// Every note, in (function, name) order: the functions inlined everywhere first.
    pub fn iter(&self) -> impl Iterator<Item = Note<'a>> + '_ {
        (0..self.count).filter_map(|index| self.get(index))
    }

    /// The note of the function whose global entry is `function`.
    pub fn at(&self, function: u64) -> Option<Note<'a>> {
        // Binary search for the first entry at or after `function`.
        let (mut low, mut high) = (0, self.count);
        while low < high {
            let middle = low + (high - low) / 2;
            if little_endian_u64(self.bytes, HEADER_SIZE + middle * ENTRY_SIZE)? < function {
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        self.get(low).filter(|note| note.function == Some(function) && function != 0)
    }

    /// The notes of the functions named `name` (with and without an out-of-line copy).
    pub fn named<'b>(&'b self, name: &'b str) -> impl Iterator<Item = Note<'a>> + 'b {
        self.iter().filter(move |note| note.name == name)
    }
}

/// One function's note, to encode.
#[cfg(any(test, feature = "std"))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteInput {
    /// Global entry, `None` when the function has no out-of-line copy.
    pub function: Option<u64>,
    pub name: String,
    pub signature: Option<String>,
    /// Global entries of the functions holding inlined copies (any order, duplicates allowed).
    pub callers: Vec<u64>,
}

/// Encodes `notes` (any order) into a table; `None` if it exceeds `capacity`.
/// Equal strings are stored once.
#[cfg(any(test, feature = "std"))]
pub fn encode(notes: &[NoteInput], capacity: usize) -> Option<Vec<u8>> {
    use std::collections::BTreeMap;
    let mut sorted: Vec<&NoteInput> = notes.iter().collect();
    sorted.sort_by(|left, right| {
        (left.function.unwrap_or(0), &left.name).cmp(&(right.function.unwrap_or(0), &right.name))
    });
    let mut strings = Vec::new();
    let mut offsets: BTreeMap<String, u32> = BTreeMap::new();
    let mut intern = |text: &str, strings: &mut Vec<u8>| -> u32 {
        let text = &text[..text.floor_char_boundary(u16::MAX as usize)];
        *offsets.entry(text.to_string()).or_insert_with(|| {
            let offset = strings.len() as u32;
            strings.extend_from_slice(&(text.len() as u16).to_le_bytes());
            strings.extend_from_slice(text.as_bytes());
            offset
        })
    };
    let (mut entries, mut callers) = (Vec::new(), Vec::new());
    for note in sorted {
        let mut own: Vec<u64> = note.callers.clone();
        own.sort_unstable();
        own.dedup();
        entries.extend_from_slice(&note.function.unwrap_or(0).to_le_bytes());
        entries.extend_from_slice(&intern(&note.name, &mut strings).to_le_bytes());
        let signature = note.signature.as_deref().map_or(NONE, |signature| intern(signature, &mut strings));
        entries.extend_from_slice(&signature.to_le_bytes());
        entries.extend_from_slice(&((callers.len() / CALLER_SIZE) as u32).to_le_bytes());
        entries.extend_from_slice(&(own.len() as u32).to_le_bytes());
        own.iter().for_each(|caller| callers.extend_from_slice(&caller.to_le_bytes()));
    }
    let callers_offset = HEADER_SIZE + entries.len();
    let strings_offset = callers_offset + callers.len();
    let used = strings_offset + strings.len();
    if used > capacity || used > u32::MAX as usize {
        return None;
    }
    let mut table = Vec::with_capacity(used);
    for word in
        [MAGIC, (entries.len() / ENTRY_SIZE) as u32, callers_offset as u32, strings_offset as u32, used as u32, 0]
    {
        table.extend_from_slice(&word.to_le_bytes());
    }
    table.extend_from_slice(&entries);
    table.extend_from_slice(&callers);
    table.extend_from_slice(&strings);
    Some(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(function: Option<u64>, name: &str, signature: Option<&str>, callers: &[u64]) -> NoteInput {
        NoteInput {
            function,
            name: name.to_string(),
            signature: signature.map(str::to_string),
            callers: callers.to_vec(),
        }
    }

    fn sample() -> Vec<u8> {
        encode(
            &[
                note(Some(0x400300), "kernel::shell::greeting", Some("fn kernel::shell::greeting() -> &str"), &[]),
                note(Some(0x400100), "kernel::memory::usage", None, &[0x400900, 0x400200, 0x400900]),
                note(None, "kernel::time::ticks", None, &[0x400500]),
                note(Some(0x400200), "klp_demo_ten", Some("fn klp_demo_ten(a: u64) -> u64"), &[0x400600]),
            ],
            4096,
        )
        .unwrap()
    }

    #[test]
    fn round_trip_in_address_order_with_the_inlined_everywhere_first() {
        let bytes = sample();
        let notes = FunctionNotes::parse(&bytes).unwrap();
        assert_eq!(notes.len(), 4);
        let names: Vec<_> = notes.iter().map(|note| (note.function, note.name)).collect();
        assert_eq!(
            names,
            [
                (None, "kernel::time::ticks"),
                (Some(0x400100), "kernel::memory::usage"),
                (Some(0x400200), "klp_demo_ten"),
                (Some(0x400300), "kernel::shell::greeting")
            ]
        );
        let usage = notes.at(0x400100).unwrap();
        assert_eq!(usage.callers().collect::<Vec<_>>(), [0x400200, 0x400900], "sorted, each caller once");
        assert!(usage.is_inlined() && usage.signature.is_none());
        let greeting = notes.at(0x400300).unwrap();
        assert!(!greeting.is_inlined());
        assert_eq!(greeting.signature, Some("fn kernel::shell::greeting() -> &str"));
        assert_eq!(notes.at(0x400200).unwrap().callers().collect::<Vec<_>>(), [0x400600]);
    }

    #[test]
    fn lookups_find_exactly_what_is_there() {
        let bytes = sample();
        let notes = FunctionNotes::parse(&bytes).unwrap();
        assert!(notes.at(0x400101).is_none());
        assert!(notes.at(0x400000).is_none());
        assert!(notes.at(0x500000).is_none());
        assert!(notes.at(0).is_none(), "address 0 is not the notes of the functions without a copy");
        let ticks: Vec<_> = notes.named("kernel::time::ticks").collect();
        assert_eq!(ticks.len(), 1);
        assert_eq!((ticks[0].function, ticks[0].callers().collect::<Vec<_>>()), (None, vec![0x400500]));
        assert_eq!(notes.named("kernel::nothing").count(), 0);
    }

    #[test]
    fn equal_strings_are_stored_once() {
        let once = encode(&[note(Some(1), "same", Some("same"), &[])], 4096).unwrap();
        let twice = encode(&[note(Some(1), "same", Some("other"), &[])], 4096).unwrap();
        assert_eq!(twice.len() - once.len(), 2 + "other".len());
    }

    #[test]
    fn refuses_unfilled_truncated_malformed_and_oversized() {
        assert!(FunctionNotes::parse(&[0; 64]).is_none());
        let bytes = sample();
        assert!(FunctionNotes::parse(&bytes[..bytes.len() - 1]).is_none(), "shorter than its used bytes");
        let mut wrong_order = bytes.clone();
        wrong_order[8..12].copy_from_slice(&(HEADER_SIZE as u32).to_le_bytes());
        assert!(FunctionNotes::parse(&wrong_order).is_none(), "callers overlapping the entries");
        let mut caller_out_of_range = bytes.clone();
        let last_entry = HEADER_SIZE + 3 * ENTRY_SIZE;
        caller_out_of_range[last_entry + 20..last_entry + 24].copy_from_slice(&1000u32.to_le_bytes());
        let notes = FunctionNotes::parse(&caller_out_of_range).unwrap();
        assert!(notes.get(3).is_none(), "callers past their area");
        assert_eq!(notes.iter().count(), 3);
        assert!(encode(&[note(Some(1), &"x".repeat(100), None, &[])], 64).is_none());
        let empty = encode(&[], 64).unwrap();
        assert!(FunctionNotes::parse(&empty).unwrap().is_empty());
    }
}
