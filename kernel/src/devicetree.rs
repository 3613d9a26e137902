//! The machine description: the firmware's device tree, flattened at boot and queried once.
use crate::arch::openfirmware::{OpenFirmware, PROPERTY_CAPACITY};
use crate::arch::rtas::Tokens;
use alloc::vec::Vec;
use core::cell::UnsafeCell;
use portable::devicetree::{DeviceTree, FdtWriter, InterruptController};

/// Room for the flattened tree (QEMU's is about 8 KiB).
const TREE_CAPACITY: usize = 256 * 1024;

struct TreeBuffer(UnsafeCell<[u8; TREE_CAPACITY]>);
// Safety: written once by the boot CPU before anything else runs, read-only after.
unsafe impl Sync for TreeBuffer {}
static TREE: TreeBuffer = TreeBuffer(UnsafeCell::new([0; TREE_CAPACITY]));

/// Walks the firmware's tree into the static buffer; returns the flattened blob.
pub fn flatten_from_firmware(client_interface: u64) -> &'static [u8] {
    // Safety: boot is single-threaded and this runs once.
    let buffer = unsafe { &mut *TREE.0.get() };
    let mut writer = FdtWriter::new(buffer);
    match OpenFirmware::new(client_interface).flatten(&mut writer) {
        Ok(0) => {}
        Ok(skipped) => {
            crate::println!("devicetree: skipped {skipped} properties longer than {PROPERTY_CAPACITY} bytes")
        }
        Err(error) => panic!("flattening the device tree failed: {error}"),
    }
    let size = writer.finish(0).unwrap_or_else(|error| panic!("finishing the device tree failed: {error:?}"));
    // Safety: as above; the writer is done with the buffer.
    unsafe { &(&*TREE.0.get())[..size] }
}

/// The flattened tree, for the shell and tests (empty before boot flattened it).
pub fn blob() -> &'static [u8] {
    // Safety: read-only after boot.
    let bytes = unsafe { &*TREE.0.get() };
    let size = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize;
    &bytes[..size.min(TREE_CAPACITY)]
}

/// What the kernel needs from the tree.
pub struct Machine {
    /// End of the real-mode memory (memory@0), where the heap ends.
    pub memory_end: u64,
    pub cpu_count: usize,
    /// The interrupt server number of every hardware thread under `/cpus`,
    /// in tree order: the first is the boot CPU (QEMU boots on server 0).
    pub cpu_servers: Vec<u32>,
    /// The interrupt controller the tree describes.
    pub interrupt_controller: InterruptController,
    pub timebase_frequency: u64,
    pub bootargs: &'static str,
    /// A second virtual terminal carries the patch channel (xtask adds it).
    pub has_patch_channel: bool,
    power_off: u32,
    os_term: Option<u32>,
    start_cpu: Option<u32>,
}

impl Machine {
    /// Reads the machine description; panics with a clear message if the tree lacks it.
    pub fn read(blob: &'static [u8]) -> Machine {
        let tree = DeviceTree::parse(blob).unwrap_or_else(|error| panic!("device tree: {error}"));
        let (base, size) = tree.real_mode_memory().expect("device tree: no memory node at address 0");
        Machine {
            memory_end: base + size,
            cpu_count: tree.cpu_count(),
            cpu_servers: tree.cpu_threads().map(|thread| thread.server).collect(),
            interrupt_controller: tree.interrupt_controller(),
            timebase_frequency: tree.timebase_frequency().unwrap_or(512_000_000),
            bootargs: tree.bootargs().unwrap_or(""),
            has_patch_channel: tree
                .raw()
                .find_node(&alloc::format!("/vdevice/vty@{:x}", portable::channel::VTY_REG))
                .is_some(),
            power_off: tree.rtas_token("power-off").expect("device tree: no RTAS power-off token"),
            os_term: tree.rtas_token("ibm,os-term"),
            start_cpu: tree.rtas_token("start-cpu"),
        }
    }

    /// The RTAS tokens the kernel uses.
    pub fn rtas_tokens(&self) -> Tokens {
        Tokens { power_off: self.power_off, os_term: self.os_term, start_cpu: self.start_cpu }
    }
}
