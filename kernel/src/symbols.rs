//! The kernel's own symbol tables, embedded in the image by xtask after linking: functions by readable name, and functions and data objects by ELF name for klp relocations.
use crate::reserved::Reserved;
use core::fmt;
use macros::notrace;
use portable::symbols::SymbolTable;

/// Bytes reserved for the table in the image (xtask fails if it does not fit).
pub const CAPACITY: usize = 256 * 1024;

#[used]
#[unsafe(link_section = ".kernel_symbols")]
static KERNEL_SYMBOLS: Reserved<CAPACITY> = Reserved::zeroed();

/// The table, if xtask filled it.
#[notrace]
pub fn table() -> Option<SymbolTable<'static>> {
    SymbolTable::parse(KERNEL_SYMBOLS.bytes())
}

/// Bytes reserved for the klp table (xtask fails if it does not fit; the
/// test kernel's takes about 300 KB, the production kernel's about 110 KB).
pub const KLP_CAPACITY: usize = 384 * 1024;

#[used]
#[unsafe(link_section = ".kernel_klp_symbols")]
static KERNEL_KLP_SYMBOLS: Reserved<KLP_CAPACITY> = Reserved::zeroed();

/// The klp table, if xtask filled it: every function (at its global entry)
/// and data object with a size, by its ELF (mangled) name, as a patch's
/// `.klp.sym.vmlinux.NAME,POSITION` names them (`SymbolTable::klp_address`).
pub fn klp_table() -> Option<SymbolTable<'static>> {
    SymbolTable::parse(KERNEL_KLP_SYMBOLS.bytes())
}

/// Formats an address as `name+0xoffset/0xsize`, or `?` when unknown.
pub struct Symbolized(pub u64);

impl fmt::Display for Symbolized {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some((slot, offset, replacement)) = crate::arch::trampoline::describe(self.0) {
            // A direct-call trampoline: its slot, and the replacement its call words name now.
            write!(formatter, "livepatch_trampoline[{slot}]+{offset:#x}")?;
            return match replacement.and_then(|address| table().and_then(|table| table.lookup(address))) {
                Some((symbol, _)) => write!(formatter, " (calls {})", symbol.name),
                None => Ok(()),
            };
        }
        match table().and_then(|table| table.lookup(self.0)) {
            Some((symbol, offset)) => write!(formatter, "{}+{:#x}/{:#x}", symbol.name, offset, symbol.size),
            None => write!(formatter, "?"),
        }
    }
}
