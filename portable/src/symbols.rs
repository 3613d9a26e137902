//! The kernel symbol table format: written by xtask after linking, read by the kernel.
//!
//! Layout (all little-endian):
//! ```text
//! header   magic "KSYM" u32 | count u32 | strings_offset u32 | used_bytes u32
//! entries  count x { address u64 | size u32 | name_offset u32 }, sorted by address
//! strings  the names, each preceded by its length as a u16
//! ```
//! The kernel reserves a fixed-size `.kernel_symbols` section; xtask fills it in
//! the linked ELF file, so that adding the table moves no address. The same
//! encoding fills `.kernel_klp_symbols`: every function and data object with a
//! size, by its ELF (mangled) name, for klp relocations to the kernel
//! (`.klp.sym.vmlinux.NAME,POSITION`, resolved by [`SymbolTable::klp_address`]).

use crate::bytes::{little_endian_u32, little_endian_u64};

/// First word of a filled table.
pub const MAGIC: u32 = u32::from_le_bytes(*b"KSYM");
const HEADER_SIZE: usize = 16;
const ENTRY_SIZE: usize = 16;

/// One function (or, in the klp table, data object) of the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Symbol<'a> {
    pub name: &'a str,
    pub address: u64,
    pub size: u32,
}

/// A read-only view of an encoded table.
#[derive(Clone, Copy)]
pub struct SymbolTable<'a> {
    bytes: &'a [u8],
    count: usize,
    strings_offset: usize,
}

impl<'a> SymbolTable<'a> {
    /// Checks the header; `None` if the table was never filled or is malformed.
    pub fn parse(bytes: &'a [u8]) -> Option<Self> {
        if little_endian_u32(bytes, 0)? != MAGIC {
            return None;
        }
        let count = little_endian_u32(bytes, 4)? as usize;
        let strings_offset = little_endian_u32(bytes, 8)? as usize;
        let used = little_endian_u32(bytes, 12)? as usize;
        if used > bytes.len() || HEADER_SIZE + count * ENTRY_SIZE > strings_offset || strings_offset > used {
            return None;
        }
        Some(SymbolTable { bytes: &bytes[..used], count, strings_offset })
    }

    /// Number of symbols.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The symbol at `index` in address order.
    pub fn get(&self, index: usize) -> Option<Symbol<'a>> {
        if index >= self.count {
            return None;
        }
        let entry = HEADER_SIZE + index * ENTRY_SIZE;
        let address = little_endian_u64(self.bytes, entry)?;
        let size = little_endian_u32(self.bytes, entry + 8)?;
        let name_offset = self.strings_offset + little_endian_u32(self.bytes, entry + 12)? as usize;
        let length = u16::from_le_bytes(self.bytes.get(name_offset..name_offset + 2)?.try_into().ok()?);
        let name = self.bytes.get(name_offset + 2..name_offset + 2 + length as usize)?;
        Some(Symbol { name: core::str::from_utf8(name).ok()?, address, size })
    }

    /// The address of the symbol at `index`, without reading its name (the
    /// binary search of `lookup` reads only these).
    fn address_at(&self, index: usize) -> Option<u64> {
        if index >= self.count {
            return None;
        }
        little_endian_u64(self.bytes, HEADER_SIZE + index * ENTRY_SIZE)
    }

    /// All symbols in address order.
    pub fn iter(&self) -> impl Iterator<Item = Symbol<'a>> + '_ {
        (0..self.count).filter_map(|index| self.get(index))
    }

    /// The symbol containing `address`, with the offset of `address` into it.
    pub fn lookup(&self, address: u64) -> Option<(Symbol<'a>, u64)> {
        let index = self.index_containing(address)?;
        let symbol = self.get(index)?;
        Some((symbol, address - symbol.address))
    }

    /// The addresses of the symbol containing `address` (start up to its
    /// end), without reading its name: for callers that only need the extent.
    pub fn extent(&self, address: u64) -> Option<core::ops::Range<u64>> {
        let index = self.index_containing(address)?;
        let start = self.address_at(index)?;
        let size = little_endian_u32(self.bytes, HEADER_SIZE + index * ENTRY_SIZE + 8)?;
        Some(start..start + u64::from(size.max(1)))
    }

    /// The index of the symbol containing `address`.
    fn index_containing(&self, address: u64) -> Option<usize> {
        // Binary search for the last symbol starting at or before `address`.
        let (mut low, mut high) = (0, self.count);
        while low < high {
            let middle = (low + high) / 2;
            if self.address_at(middle)? <= address {
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        let index = low.checked_sub(1)?;
        let start = self.address_at(index)?;
        let size = little_endian_u32(self.bytes, HEADER_SIZE + index * ENTRY_SIZE + 8)?;
        (address - start < u64::from(size.max(1))).then_some(index)
    }

    /// The symbols named exactly `name` (a name may be defined more than once).
    pub fn find<'b>(&'b self, name: &'b str) -> impl Iterator<Item = Symbol<'a>> + 'b {
        self.iter().filter(move |symbol| symbol.name == name)
    }

    /// The address a klp relocation `.klp.sym.vmlinux.NAME,POSITION` resolves
    /// to in this table (the kernel's klp table, see [`KlpLookupError`]):
    /// position 0 wants the only symbol named `name`, N >= 1 the Nth of that
    /// name in table order (by address, then name). The kernel and xtask
    /// (which picks the positions) both call this, so they agree.
    pub fn klp_address(&self, name: &str, position: usize) -> Result<u64, KlpLookupError> {
        let count = self.find(name).count();
        match (count, position) {
            (0, _) => Err(KlpLookupError::Missing),
            (1, 0) => self.find(name).next().map(|symbol| symbol.address).ok_or(KlpLookupError::Missing),
            (count, 0) => Err(KlpLookupError::Ambiguous { count }),
            (count, position) => self
                .find(name)
                .nth(position - 1)
                .map(|symbol| symbol.address)
                .ok_or(KlpLookupError::BadPosition { count }),
        }
    }
}

/// Why a klp relocation to the kernel does not resolve ([`SymbolTable::klp_address`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KlpLookupError {
    /// No function or data object has that name.
    Missing,
    /// Position 0, but `count` symbols have that name.
    Ambiguous { count: usize },
    /// The position is past the `count` symbols of that name.
    BadPosition { count: usize },
}

impl core::fmt::Display for KlpLookupError {
    fn fmt(&self, formatter: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            KlpLookupError::Missing => write!(formatter, "no kernel function or data object has that name"),
            KlpLookupError::Ambiguous { count } => {
                write!(formatter, "{count} kernel symbols have that name and position 0 wants the only one")
            }
            KlpLookupError::BadPosition { count } => write!(formatter, "only {count} kernel symbols have that name"),
        }
    }
}

/// Encodes `symbols` (any order) into a table; `None` if it exceeds `capacity`.
#[cfg(any(test, feature = "std"))]
pub fn encode(symbols: &[(String, u64, u32)], capacity: usize) -> Option<Vec<u8>> {
    let mut sorted: Vec<&(String, u64, u32)> = symbols.iter().collect();
    sorted.sort_by_key(|(name, address, _)| (*address, name.clone()));
    let strings_offset = HEADER_SIZE + sorted.len() * ENTRY_SIZE;
    let mut entries = Vec::new();
    let mut strings = Vec::new();
    for (name, address, size) in sorted {
        let name = &name.as_bytes()[..name.len().min(u16::MAX as usize)];
        entries.extend_from_slice(&address.to_le_bytes());
        entries.extend_from_slice(&size.to_le_bytes());
        entries.extend_from_slice(&(strings.len() as u32).to_le_bytes());
        strings.extend_from_slice(&(name.len() as u16).to_le_bytes());
        strings.extend_from_slice(name);
    }
    let used = strings_offset + strings.len();
    if used > capacity {
        return None;
    }
    let mut table = Vec::with_capacity(used);
    table.extend_from_slice(&MAGIC.to_le_bytes());
    table.extend_from_slice(&((entries.len() / ENTRY_SIZE) as u32).to_le_bytes());
    table.extend_from_slice(&(strings_offset as u32).to_le_bytes());
    table.extend_from_slice(&(used as u32).to_le_bytes());
    table.extend_from_slice(&entries);
    table.extend_from_slice(&strings);
    Some(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let symbols = vec![
            ("kernel::main".to_string(), 0x400100, 0x40),
            ("_start".to_string(), 0x400000, 0x100),
            ("memcpy".to_string(), 0x400200, 0x20),
            ("memcpy".to_string(), 0x400300, 0x20),
        ];
        encode(&symbols, 4096).unwrap()
    }

    #[test]
    fn round_trip_and_lookup() {
        let bytes = sample();
        let table = SymbolTable::parse(&bytes).unwrap();
        assert_eq!(table.len(), 4);
        assert_eq!(table.get(0).unwrap().name, "_start");
        let (symbol, offset) = table.lookup(0x400108).unwrap();
        assert_eq!((symbol.name, offset), ("kernel::main", 8));
        // In the gap after kernel::main (size 0x40) and before memcpy.
        assert!(table.lookup(0x400150).is_none());
        assert!(table.lookup(0x3fffff).is_none());
        assert_eq!(table.find("memcpy").count(), 2);
        // The extent of the symbol, without its name.
        assert_eq!(table.extent(0x400108), Some(0x400100..0x400140));
        assert_eq!(table.extent(0x400150), None);
        assert_eq!(table.extent(0x3fffff), None);
    }

    #[test]
    fn refuses_unfilled_truncated_and_oversized() {
        assert!(SymbolTable::parse(&[0; 64]).is_none());
        let bytes = sample();
        assert!(SymbolTable::parse(&bytes[..bytes.len() - 1]).is_none());
        assert!(encode(&[("x".repeat(100), 0, 0)], 64).is_none());
    }

    #[test]
    fn klp_positions_follow_address_order() {
        let bytes = sample();
        let table = SymbolTable::parse(&bytes).unwrap();
        assert_eq!(table.klp_address("_start", 0), Ok(0x400000), "0: the only one");
        assert_eq!(table.klp_address("_start", 1), Ok(0x400000), "1: the first of one");
        assert_eq!(table.klp_address("_start", 2), Err(KlpLookupError::BadPosition { count: 1 }));
        assert_eq!(table.klp_address("memcpy", 0), Err(KlpLookupError::Ambiguous { count: 2 }));
        assert_eq!(table.klp_address("memcpy", 1), Ok(0x400200));
        assert_eq!(table.klp_address("memcpy", 2), Ok(0x400300));
        assert_eq!(table.klp_address("memcpy", 3), Err(KlpLookupError::BadPosition { count: 2 }));
        assert_eq!(table.klp_address("memcp", 0), Err(KlpLookupError::Missing));
    }
}
