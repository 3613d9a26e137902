//! Thread stacks: THREAD_SIZE-aligned blocks from the heap, with thread_info at the base.
pub use crate::arch::thread_info::stack_bounds;
use alloc::alloc::{Layout, alloc, dealloc};
use boot::THREAD_SIZE;

/// A thread's stack memory, freed on drop.
pub struct Stack {
    base: u64,
}

fn layout() -> Layout {
    Layout::from_size_align(THREAD_SIZE, THREAD_SIZE).expect("THREAD_SIZE is a power of two")
}

impl Stack {
    /// Allocates a stack; None when the heap is exhausted.
    pub fn allocate() -> Option<Stack> {
        // Safety: the layout has a nonzero size.
        let base = unsafe { alloc(layout()) };
        (!base.is_null()).then(|| Stack { base: base as u64 })
    }

    /// Lowest address (where thread_info sits).
    pub fn base(&self) -> u64 {
        self.base
    }

    /// One past the highest address.
    pub fn top(&self) -> u64 {
        self.base + THREAD_SIZE as u64
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // Safety: allocated in `allocate` with the same layout.
        unsafe { dealloc(self.base as *mut u8, layout()) };
    }
}
