//! The kernel's own symbol table, embedded in the image by xtask after linking.
use core::cell::UnsafeCell;
use core::fmt;
use macros::notrace;
use portable::symbols::SymbolTable;

/// Bytes reserved for the table in the image (xtask fails if it does not fit).
pub const CAPACITY: usize = 256 * 1024;

/// The reserved bytes; interior mutability tells the compiler their contents
/// are not the zeros written here (xtask rewrites them in the linked file).
struct Reserved(UnsafeCell<[u8; CAPACITY]>);
// Safety: nothing writes the table at run time.
unsafe impl Sync for Reserved {}

#[used]
#[unsafe(link_section = ".kernel_symbols")]
static KERNEL_SYMBOLS: Reserved = Reserved(UnsafeCell::new([0; CAPACITY]));

/// The table, if xtask filled it.
#[notrace]
pub fn table() -> Option<SymbolTable<'static>> {
    // Safety: the table is never written at run time.
    let bytes: &'static [u8; CAPACITY] = unsafe { &*KERNEL_SYMBOLS.0.get() };
    SymbolTable::parse(bytes)
}

/// Formats an address as `name+0xoffset/0xsize`, or `?` when unknown.
pub struct Symbolized(pub u64);

impl fmt::Display for Symbolized {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match table().and_then(|table| table.lookup(self.0)) {
            Some((symbol, offset)) => write!(formatter, "{}+{:#x}/{:#x}", symbol.name, offset, symbol.size),
            None => write!(formatter, "?"),
        }
    }
}
