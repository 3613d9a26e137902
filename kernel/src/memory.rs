//! The kernel heap: `linked_list_allocator` over the RAM the device tree reports.
//!
//! The heap starts right after the image (`__heap_start`) with a small first
//! region, so that boot can allocate before the device tree is read, and is
//! then extended to the end of the real-mode memory the tree reports.
use crate::arch::interrupts;
use core::alloc::{GlobalAlloc, Layout};
use linked_list_allocator::Heap;
use spin::Mutex;

/// Heap bytes available before the device tree says how much RAM exists.
const EARLY_HEAP_SIZE: usize = 4 * 1024 * 1024;

/// The heap; its lock is taken with interrupts off, so a preempted holder
/// can never leave another thread spinning on it.
pub struct KernelHeap(Mutex<Heap>);

#[global_allocator]
static HEAP: KernelHeap = KernelHeap(Mutex::new(Heap::empty()));

unsafe extern "C" {
    static __heap_start: u8;
}

// Safety: allocation and deallocation are serialised by the lock, with
// interrupts off so the timer cannot re-enter the allocator.
unsafe impl GlobalAlloc for KernelHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _guard = interrupts::disable();
        crate::sync::acquire(&self.0).allocate_first_fit(layout).map_or(core::ptr::null_mut(), |block| block.as_ptr())
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        let _guard = interrupts::disable();
        // Safety: the caller passes a block from `alloc` with its layout.
        unsafe { crate::sync::acquire(&self.0).deallocate(core::ptr::NonNull::new_unchecked(pointer), layout) };
    }
}

/// Start of the heap: the end of the kernel image.
pub fn heap_start() -> u64 {
    &raw const __heap_start as u64
}

/// Creates the early heap.
pub fn init_early() {
    // Safety: the memory after the image is free RAM (every pseries guest
    // has far more than the image plus EARLY_HEAP_SIZE) and used by nothing else.
    unsafe { HEAP.0.lock().init(heap_start() as *mut u8, EARLY_HEAP_SIZE) };
}

/// Grows the heap to `memory_end` (exclusive), the end of usable RAM.
pub fn extend_to(memory_end: u64) {
    let mut heap = HEAP.0.lock();
    let end = heap.top() as u64;
    if memory_end > end {
        // Safety: [end, memory_end) is RAM the device tree reports and nothing uses.
        unsafe { heap.extend((memory_end - end) as usize) };
    }
}

/// Heap usage: (used bytes, total bytes).
pub fn usage() -> (usize, usize) {
    let _guard = interrupts::disable();
    let heap = HEAP.0.lock();
    (heap.used(), heap.size())
}
