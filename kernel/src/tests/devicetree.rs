//! Tests of the device tree flattened from the firmware at boot.
use crate::devicetree;
use macros::ktest;
use portable::devicetree::DeviceTree;

#[ktest]
fn device_tree_describes_the_machine() {
    let tree = DeviceTree::parse(devicetree::blob()).expect("the boot-time tree parses");
    let (base, size) = tree.real_mode_memory().expect("memory@0");
    assert_eq!(base, 0);
    assert!(size >= 128 << 20, "memory {size:#x}");
    assert!(tree.cpu_count() >= 1);
    assert_eq!(tree.timebase_frequency(), Some(512_000_000));
    let power_off = tree.rtas_token("power-off").expect("RTAS power-off token");
    let os_term = tree.rtas_token("ibm,os-term").expect("RTAS ibm,os-term token");
    assert_ne!(power_off, os_term);
    assert!(tree.bootargs().unwrap_or("").contains("ktest"), "xtask passes ktest arguments");
}
