//! Device tree queries against real trees from QEMU pseries: a stored dump and, when QEMU is installed, a fresh one.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fdt::node::FdtNode;
use portable::devicetree::{DeviceTree, FdtError, FdtWriter, InterruptController};

const MIB: u64 = 1024 * 1024;

/// `qemu-system-ppc64 -M pseries,x-vof=on,...,dumpdtb=FILE -m 512M -smp 2 -nodefaults
/// -display none -kernel (a minimal ELF) -append "ktest.filter=x console=hvc0"` (QEMU 7.2).
static FIXTURE: &[u8] = include_bytes!("../testdata/qemu-pseries-512M-smp2.dtb");

/// The machine options: VOF firmware, and capabilities set so that TCG does not warn.
const MACHINE: &str = "pseries,x-vof=on,cap-cfpc=broken,cap-sbbc=broken,cap-ibs=broken,cap-ccf-assist=off";

#[test]
fn fixture_real_mode_memory_is_512_mib_at_0() {
    let tree = DeviceTree::parse(FIXTURE).expect("QEMU's tree parses");
    assert_eq!(tree.real_mode_memory(), Some((0, 512 * MIB)));
    assert_eq!(tree.memory_regions().collect::<Vec<_>>(), [(0, 512 * MIB)]);
}

#[test]
fn fixture_has_two_cpus_at_512_mhz() {
    let tree = DeviceTree::parse(FIXTURE).unwrap();
    assert_eq!(tree.cpu_count(), 2);
    assert_eq!(tree.timebase_frequency(), Some(512_000_000));
    let servers: Vec<(u32, u32)> = tree.cpu_threads().map(|thread| (thread.reg, thread.server)).collect();
    assert_eq!(servers, [(0, 0), (1, 1)], "one thread per node, server = reg");
    assert_eq!(tree.interrupt_controller(), InterruptController::Xics, "QEMU without CAS: XICS");
}

#[test]
fn fixture_rtas_tokens() {
    let tree = DeviceTree::parse(FIXTURE).unwrap();
    assert_eq!(tree.rtas_token("power-off"), Some(0x2003));
    assert_eq!(tree.rtas_token("system-reboot"), Some(0x2004));
    assert_eq!(tree.rtas_token("query-cpu-stopped-state"), Some(0x2005));
    assert_eq!(tree.rtas_token("start-cpu"), Some(0x2006));
    assert_eq!(tree.rtas_token("ibm,os-term"), Some(0x201f));
    assert_eq!(tree.rtas_token("ibm,extended-os-term"), None, "an empty flag, not a token");
    assert_eq!(tree.rtas_token("no-such-call"), None);
}

#[test]
fn fixture_bootargs_and_model() {
    let tree = DeviceTree::parse(FIXTURE).unwrap();
    assert_eq!(tree.bootargs(), Some("ktest.filter=x console=hvc0"));
    let model = tree.model().expect("root has a model");
    assert!(model.starts_with("IBM pSeries"), "{model}");
    assert_eq!(model, "IBM pSeries (emulated by qemu)");
}

/// Writes `node`, its properties and, depth first, its children.
fn copy_node(node: FdtNode<'_, '_>, writer: &mut FdtWriter) -> Result<(), FdtError> {
    writer.begin_node(node.name.as_bytes())?;
    for property in node.properties() {
        writer.property(property.name.as_bytes(), property.value)?;
    }
    for child in node.children() {
        copy_node(child, writer)?;
    }
    writer.end_node()
}

/// The node's properties as (name, value), in order.
fn properties<'a>(node: FdtNode<'_, 'a>) -> Vec<(&'a str, &'a [u8])> {
    node.properties().map(|property| (property.name, property.value)).collect()
}

/// Asserts that two nodes have the same name, properties and children.
fn assert_same_node(original: FdtNode<'_, '_>, copy: FdtNode<'_, '_>) {
    assert_eq!(original.name, copy.name);
    assert_eq!(properties(original), properties(copy), "properties of {}", original.name);
    assert_eq!(original.children().count(), copy.children().count(), "children of {}", original.name);
    for (original_child, copy_child) in original.children().zip(copy.children()) {
        assert_same_node(original_child, copy_child);
    }
}

#[test]
fn fixture_copied_through_writer_gives_same_answers() {
    let original = DeviceTree::parse(FIXTURE).unwrap();
    let root = original.raw().find_node("/").expect("root");
    let mut buffer = vec![0u8; 64 * 1024];
    let mut writer = FdtWriter::new(&mut buffer);
    copy_node(root, &mut writer).expect("copy fits in 64 KiB");
    let length = writer.finish(0).unwrap();
    let copy = DeviceTree::parse(&buffer[..length]).expect("copy parses");

    assert_same_node(root, copy.raw().find_node("/").unwrap());
    assert_eq!(copy.real_mode_memory(), original.real_mode_memory());
    assert_eq!(copy.memory_regions().collect::<Vec<_>>(), original.memory_regions().collect::<Vec<_>>());
    assert_eq!(copy.cpu_count(), original.cpu_count());
    assert_eq!(copy.timebase_frequency(), original.timebase_frequency());
    assert_eq!(copy.bootargs(), original.bootargs());
    assert_eq!(copy.model(), original.model());
    for name in ["power-off", "ibm,os-term", "start-cpu", "query-cpu-stopped-state", "system-reboot"] {
        assert_eq!(copy.rtas_token(name), original.rtas_token(name), "{name}");
    }
    let names: BTreeSet<&str> =
        original.raw().all_nodes().flat_map(|node| node.properties()).map(|property| property.name).collect();
    let strings: Vec<&str> = copy.raw().strings().collect();
    assert_eq!(strings.len(), names.len(), "each property name stored once");
    assert_eq!(strings.into_iter().collect::<BTreeSet<_>>(), names);
}

/// The smallest ELF file QEMU's `-kernel` accepts: a 64-bit little-endian
/// PowerPC executable with one 8-byte loadable segment. QEMU refuses
/// `-append` without `-kernel`, and `dumpdtb` exits before the image runs.
fn minimal_elf() -> Vec<u8> {
    let mut elf = vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    elf.extend_from_slice(&2u16.to_le_bytes()); // executable
    elf.extend_from_slice(&21u16.to_le_bytes()); // EM_PPC64
    elf.extend_from_slice(&1u32.to_le_bytes()); // version
    for field in [0x40_0000u64, 64, 0] {
        elf.extend_from_slice(&field.to_le_bytes()); // entry, program headers, section headers
    }
    elf.extend_from_slice(&2u32.to_le_bytes()); // ELFv2 ABI
    for field in [64u16, 56, 1, 64, 0, 0] {
        elf.extend_from_slice(&field.to_le_bytes()); // header sizes and counts
    }
    elf.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    elf.extend_from_slice(&5u32.to_le_bytes()); // readable, executable
    for field in [120u64, 0x40_0000, 0, 8, 8, 4] {
        elf.extend_from_slice(&field.to_le_bytes()); // offset, addresses, sizes, alignment
    }
    elf.extend_from_slice(&[0; 8]);
    elf
}

/// Runs QEMU with `dumpdtb` into `directory`; `None` when QEMU is not installed.
fn dump_qemu_tree(directory: &Path, memory: &str, bootargs: &str) -> Option<Vec<u8>> {
    let kernel = directory.join("minimal.elf");
    let dump = directory.join("tree.dtb");
    let messages = directory.join("qemu.log");
    std::fs::write(&kernel, minimal_elf()).unwrap();
    let machine = format!("{MACHINE},dumpdtb={}", dump.display());
    let mut qemu = Command::new("qemu-system-ppc64")
        .args(["-M", &machine, "-m", memory, "-smp", "2", "-nodefaults", "-display", "none"])
        .arg("-kernel")
        .arg(&kernel)
        .args(["-append", bootargs])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&messages).unwrap())
        .spawn()
        .ok()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = qemu.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = qemu.kill();
            panic!("QEMU did not exit within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let log = std::fs::read_to_string(&messages).unwrap_or_default();
    assert!(status.success(), "QEMU failed ({status}): {log}");
    Some(std::fs::read(&dump).unwrap())
}

#[test]
fn qemu_tree_with_1_gib_matches_command_line() {
    let directory = std::env::temp_dir().join(format!("portable-devicetree-{}", std::process::id()));
    std::fs::create_dir_all(&directory).unwrap();
    let bootargs = "ktest.filter=regenerated console=hvc0";
    let dumped = dump_qemu_tree(&directory, "1G", bootargs);
    let _ = std::fs::remove_dir_all(&directory);
    let Some(blob) = dumped else {
        println!("note: qemu-system-ppc64 not found on PATH; skipping the fresh QEMU tree");
        return;
    };
    let tree = DeviceTree::parse(&blob).expect("QEMU's tree parses");
    assert_eq!(tree.memory_regions().map(|(_, size)| size).sum::<u64>(), 1024 * MIB);
    assert_eq!(tree.real_mode_memory().map(|(base, _)| base), Some(0));
    assert_eq!(tree.cpu_count(), 2);
    assert_eq!(tree.bootargs(), Some(bootargs));
    let power_off = tree.rtas_token("power-off").expect("power-off token");
    let os_term = tree.rtas_token("ibm,os-term").expect("ibm,os-term token");
    assert_ne!(power_off, os_term);
    for token in [power_off, os_term] {
        assert!(token != 0 && token != u32::MAX, "implausible RTAS token {token:#x}");
    }
}
