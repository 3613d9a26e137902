//! Memory for a loaded module: one aligned heap block, poisoned and returned to the heap on drop.
use alloc::alloc::{Layout, alloc_zeroed, dealloc};

/// What a freed module block is filled with: the `trap` instruction, so a
/// thread that still branches into it takes a program check (an Oops naming
/// the address) instead of running stale or foreign code, and a reader of
/// stale module data sees this pattern instead of the old text.
pub const POISON: u32 = 0x7fe0_0008;

/// An aligned, zeroed heap block holding a module's sections and stubs.
pub struct ModuleMemory {
    pointer: *mut u8,
    layout: Layout,
}

// Safety: the block is owned; the module registry serialises access.
unsafe impl Send for ModuleMemory {}

impl ModuleMemory {
    /// A zeroed block; None if the heap has no room or the layout is invalid.
    pub fn allocate(size: usize, alignment: usize) -> Option<ModuleMemory> {
        let layout = Layout::from_size_align(size.max(1), alignment.max(16)).ok()?;
        // Safety: nonzero size.
        let pointer = unsafe { alloc_zeroed(layout) };
        (!pointer.is_null()).then_some(ModuleMemory { pointer, layout })
    }

    /// The block's address (real mode: also its physical address).
    pub fn address(&self) -> u64 {
        self.pointer as u64
    }

    pub fn size(&self) -> usize {
        self.layout.size()
    }

    /// The block, to read.
    pub fn bytes(&self) -> &[u8] {
        // Safety: owned block of `size` bytes.
        unsafe { core::slice::from_raw_parts(self.pointer, self.layout.size()) }
    }

    /// The block, for the linker to write.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // Safety: owned block of `size` bytes.
        unsafe { core::slice::from_raw_parts_mut(self.pointer, self.layout.size()) }
    }
}

impl Drop for ModuleMemory {
    fn drop(&mut self) {
        let words = self.layout.size() / 4;
        // Safety: the owned block, 16-byte aligned, `words` whole words long.
        unsafe { core::slice::from_raw_parts_mut(self.pointer as *mut u32, words).fill(POISON) };
        crate::arch::cache::synchronize_instructions(self.address(), self.layout.size() as u64);
        // Safety: allocated in `allocate` with this layout.
        unsafe { dealloc(self.pointer, self.layout) };
    }
}
