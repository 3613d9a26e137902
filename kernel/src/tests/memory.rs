//! Tests of the kernel heap.
use crate::memory;
use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use macros::ktest;

#[ktest]
fn heap_box_vec_and_map() {
    let boxed = Box::new(0x1234_5678_u64);
    assert_eq!(*boxed, 0x1234_5678);
    let vector: Vec<u64> = (0..10_000).collect();
    assert_eq!(vector.iter().sum::<u64>(), 10_000 * 9_999 / 2);
    let mut map = BTreeMap::new();
    for key in 0..500u32 {
        map.insert(key, key * 3);
    }
    assert_eq!(map.get(&499), Some(&1497));
}

#[ktest]
fn heap_covers_device_tree_memory_and_returns_freed_blocks() {
    let (_, total) = memory::usage();
    assert!(total > 64 << 20, "heap was extended to the device tree's memory: {total:#x}");
    let (used_before, _) = memory::usage();
    let large: Vec<u8> = alloc::vec![7; 32 << 20];
    assert_eq!(large[(32 << 20) - 1], 7);
    drop(large);
    assert_eq!(memory::usage().0, used_before);
}
