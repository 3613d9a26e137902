//! Bytes the image reserves for a table that xtask writes into the linked file after linking.
//!
//! The kernel's symbol table (`symbols`) and its function notes
//! (`livepatch::notes`) are built from the linked ELF file, so they cannot be
//! inputs of the link: the image reserves zeroed bytes in a section of its
//! own, and xtask overwrites them in place, which moves no address.

use core::cell::UnsafeCell;

/// `N` bytes that the code never writes. The interior mutability tells the
/// compiler that their contents are not the zeros in the source, so it may
/// not fold reads of them into constants.
pub struct Reserved<const N: usize>(UnsafeCell<[u8; N]>);

// Safety: nothing writes the bytes at run time, so sharing them between threads is sharing read-only data.
unsafe impl<const N: usize> Sync for Reserved<N> {}

impl<const N: usize> Reserved<N> {
    /// The bytes as the source spells them: zeros until xtask fills them.
    pub const fn zeroed() -> Self {
        Reserved(UnsafeCell::new([0; N]))
    }

    /// The bytes as xtask left them in the image. Always inlined, so it has
    /// no ftrace site of its own (`#[notrace]` takes no methods): the symbol
    /// table is read from ftrace handlers.
    #[inline(always)]
    pub fn bytes(&'static self) -> &'static [u8; N] {
        // Safety: the bytes are never written at run time, so no mutable reference to them exists.
        unsafe { &*self.0.get() }
    }
}
