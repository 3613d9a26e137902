//! Host tests of the device tree writer, the blob check and the queries.

use super::{CpuThread, DeviceTree, DeviceTreeError, FdtError, FdtWriter, InterruptController};

const MIB: u64 = 1024 * 1024;

/// A small pseries-like tree: two CPU nodes of two threads, RTAS, three memory ranges.
fn write_sample(writer: &mut FdtWriter) -> Result<(), FdtError> {
    writer.begin_node(b"")?;
    writer.property(b"#address-cells", &2u32.to_be_bytes())?;
    writer.property(b"#size-cells", &2u32.to_be_bytes())?;
    writer.property(b"model", b"IBM pSeries (test)\0")?;
    writer.begin_node(b"chosen")?;
    writer.property(b"bootargs", b"console=hvc0 quiet\0")?;
    writer.end_node()?;
    write_cpus(writer)?;
    writer.begin_node(b"rtas")?;
    writer.property(b"power-off", &0x2003u32.to_be_bytes())?;
    writer.property(b"ibm,os-term", &0x201fu32.to_be_bytes())?;
    writer.property(b"ibm,extended-os-term", b"")?;
    writer.property(b"short-token", &[0x20, 0x03])?;
    writer.end_node()?;
    write_memory(writer, b"memory@0", &[0, 256 * MIB])?;
    write_memory(writer, b"memory@10000000", &[256 * MIB, 256 * MIB, 1024 * MIB, 4096])?;
    writer.end_node()
}

fn write_cpus(writer: &mut FdtWriter) -> Result<(), FdtError> {
    writer.begin_node(b"cpus")?;
    writer.property(b"#address-cells", &1u32.to_be_bytes())?;
    writer.property(b"#size-cells", &0u32.to_be_bytes())?;
    for (name, first) in [(&b"PowerPC,POWER9@0"[..], 0u32), (&b"PowerPC,POWER9@2"[..], 2)] {
        writer.begin_node(name)?;
        writer.property(b"device_type", b"cpu\0")?;
        writer.property(b"reg", &first.to_be_bytes())?;
        writer.property(b"timebase-frequency", &512_000_000u32.to_be_bytes())?;
        writer.property(b"ibm,ppc-interrupt-server#s", &words(&[first, first + 1]))?;
        writer.end_node()?;
    }
    writer.end_node()
}

fn write_memory(writer: &mut FdtWriter, name: &[u8], ranges: &[u64]) -> Result<(), FdtError> {
    writer.begin_node(name)?;
    writer.property(b"device_type", b"memory\0")?;
    let reg: Vec<u8> = ranges.iter().flat_map(|value| value.to_be_bytes()).collect();
    writer.property(b"reg", &reg)?;
    writer.end_node()
}

fn words(values: &[u32]) -> Vec<u8> {
    values.iter().flat_map(|value| value.to_be_bytes()).collect()
}

/// Runs `write` into a buffer of `size` bytes and finishes; returns the buffer and blob size.
fn build(size: usize, write: impl Fn(&mut FdtWriter) -> Result<(), FdtError>) -> Result<(Vec<u8>, usize), FdtError> {
    let mut buffer = vec![0u8; size];
    let mut writer = FdtWriter::new(&mut buffer);
    write(&mut writer)?;
    let length = writer.finish(7)?;
    Ok((buffer, length))
}

fn sample_blob() -> Vec<u8> {
    let (mut buffer, length) = build(4096, write_sample).expect("sample fits in 4 KiB");
    buffer.truncate(length);
    buffer
}

#[test]
fn writer_round_trips_nested_nodes() {
    let blob = sample_blob();
    let tree = fdt::Fdt::new(&blob).expect("fdt crate reads the blob");
    assert_eq!(tree.total_size(), blob.len());
    let names: Vec<&str> = tree.all_nodes().map(|node| node.name).collect();
    let expected =
        ["/", "chosen", "cpus", "PowerPC,POWER9@0", "PowerPC,POWER9@2", "rtas", "memory@0", "memory@10000000"];
    assert_eq!(names, expected);
    let cpu = tree.find_node("/cpus/PowerPC,POWER9@2").expect("second CPU");
    assert_eq!(cpu.property("reg").map(|property| property.value), Some(&2u32.to_be_bytes()[..]));
    let bootargs = tree.find_node("/chosen").and_then(|node| node.property("bootargs"));
    assert_eq!(bootargs.map(|property| property.value), Some(&b"console=hvc0 quiet\0"[..]));
    assert_eq!(u32::from_be_bytes(blob[28..32].try_into().unwrap()), 7, "boot CPU id in the header");
}

#[test]
fn writer_deduplicates_repeated_property_names() {
    let blob = sample_blob();
    let tree = fdt::Fdt::new(&blob).unwrap();
    let strings: Vec<&str> = tree.strings().collect();
    for name in ["device_type", "reg", "#address-cells", "timebase-frequency"] {
        assert_eq!(strings.iter().filter(|&&string| string == name).count(), 1, "{name}");
    }
    let strings_size = u32::from_be_bytes(blob[32..36].try_into().unwrap()) as usize;
    assert_eq!(strings_size, strings.iter().map(|string| string.len() + 1).sum::<usize>());
}

#[test]
fn writer_keeps_empty_property() {
    let blob = sample_blob();
    let tree = fdt::Fdt::new(&blob).unwrap();
    let property = tree.find_node("/rtas").and_then(|node| node.property("ibm,extended-os-term"));
    assert_eq!(property.map(|property| property.value.len()), Some(0));
    let next = tree.find_node("/rtas").and_then(|node| node.property("short-token"));
    assert_eq!(next.map(|property| property.value), Some(&[0x20, 0x03][..]));
}

#[test]
fn writer_exact_fit_succeeds() {
    let exact = sample_blob();
    let (buffer, length) = build(exact.len(), write_sample).expect("exact size fits");
    assert_eq!(length, exact.len());
    assert_eq!(buffer, exact);
}

#[test]
fn writer_fails_cleanly_in_every_smaller_buffer() {
    let exact = sample_blob().len();
    for size in 0..exact {
        let mut memory = vec![0xa5u8; exact + 64];
        let (inside, guard) = memory.split_at_mut(size);
        let mut writer = FdtWriter::new(inside);
        let result = write_sample(&mut writer).and_then(|()| writer.finish(0));
        assert_eq!(result, Err(FdtError::BufferTooSmall), "buffer of {size} bytes");
        assert!(guard.iter().all(|&byte| byte == 0xa5), "wrote past a {size}-byte buffer");
    }
}

#[test]
fn writer_root_only_tree() {
    let (buffer, length) = build(128, |writer| {
        writer.begin_node(b"")?;
        writer.end_node()
    })
    .unwrap();
    assert_eq!(length, 56 + 4 + 4 + 4 + 4, "header, map, begin, name padding, end node, end");
    let tree = DeviceTree::parse(&buffer).unwrap();
    assert_eq!(tree.model(), None);
    assert_eq!(tree.cpu_count(), 0);
    assert_eq!(tree.memory_regions().count(), 0);
    assert_eq!(tree.real_mode_memory(), None);
    assert_eq!(tree.timebase_frequency(), None);
    assert_eq!(tree.bootargs(), None);
    assert_eq!(tree.rtas_token("power-off"), None);
}

#[test]
fn writer_rejects_unbalanced_nodes() {
    let mut buffer = [0u8; 256];
    let mut writer = FdtWriter::new(&mut buffer);
    assert_eq!(writer.end_node(), Err(FdtError::UnbalancedNodes));
    writer.begin_node(b"").unwrap();
    writer.begin_node(b"child").unwrap();
    writer.end_node().unwrap();
    assert_eq!(writer.finish(0), Err(FdtError::UnbalancedNodes));
}

#[test]
fn writer_rejects_missing_and_second_root() {
    let mut buffer = [0u8; 256];
    assert_eq!(FdtWriter::new(&mut buffer).finish(0), Err(FdtError::MissingRoot));
    let mut writer = FdtWriter::new(&mut buffer);
    writer.begin_node(b"").unwrap();
    writer.end_node().unwrap();
    assert_eq!(writer.begin_node(b""), Err(FdtError::MultipleRoots));
    assert_eq!(writer.end_node(), Err(FdtError::UnbalancedNodes));
}

#[test]
fn writer_rejects_bad_names() {
    let mut buffer = [0u8; 1024];
    let mut writer = FdtWriter::new(&mut buffer);
    assert_eq!(writer.begin_node(b"named-root"), Err(FdtError::InvalidName));
    writer.begin_node(b"").unwrap();
    assert_eq!(writer.property(b"", b"x"), Err(FdtError::InvalidName));
    assert_eq!(writer.property(b"a\0b", b"x"), Err(FdtError::NameContainsNul));
    assert_eq!(writer.property(b"a/b", b"x"), Err(FdtError::InvalidName));
    assert_eq!(writer.property(&[0xff, 0xfe], b"x"), Err(FdtError::InvalidName));
    assert_eq!(writer.property(&[b'n'; 256], b"x"), Err(FdtError::NameTooLong));
    assert_eq!(writer.property(&[b'n'; 255], b"x"), Ok(()));
    assert_eq!(writer.begin_node(b""), Err(FdtError::InvalidName));
    assert_eq!(writer.begin_node(b"cpu\0@0"), Err(FdtError::NameContainsNul));
    assert_eq!(writer.begin_node(b"cpus/cpu@0"), Err(FdtError::InvalidName));
}

#[test]
fn writer_rejects_misplaced_properties() {
    let mut buffer = [0u8; 256];
    let mut writer = FdtWriter::new(&mut buffer);
    assert_eq!(writer.property(b"model", b"x\0"), Err(FdtError::PropertyOutsideNode));
    writer.begin_node(b"").unwrap();
    writer.begin_node(b"child").unwrap();
    writer.end_node().unwrap();
    assert_eq!(writer.property(b"model", b"x\0"), Err(FdtError::PropertyAfterChild));
    writer.end_node().unwrap();
    assert_eq!(writer.property(b"model", b"x\0"), Err(FdtError::PropertyOutsideNode));
}

#[test]
fn writer_limits_depth_to_what_the_parser_reads() {
    let mut buffer = vec![0u8; 4096];
    let mut writer = FdtWriter::new(&mut buffer);
    writer.begin_node(b"").unwrap();
    for _ in 1..63 {
        writer.begin_node(b"n").unwrap();
    }
    assert_eq!(writer.begin_node(b"n"), Err(FdtError::TooDeep));
    for _ in 0..63 {
        writer.end_node().unwrap();
    }
    let length = writer.finish(0).unwrap();
    let tree = DeviceTree::parse(&buffer[..length]).expect("63 levels parse");
    assert_eq!(tree.raw().all_nodes().count(), 63);
}

#[test]
fn writer_error_leaves_earlier_output_usable() {
    let mut buffer = [0u8; 160];
    let mut writer = FdtWriter::new(&mut buffer);
    writer.begin_node(b"").unwrap();
    writer.property(b"model", b"small\0").unwrap();
    assert_eq!(writer.property(b"big", &[7; 200]), Err(FdtError::BufferTooSmall));
    writer.end_node().unwrap();
    let length = writer.finish(0).unwrap();
    let tree = DeviceTree::parse(&buffer[..length]).unwrap();
    assert_eq!(tree.model(), Some("small"));
    assert!(tree.raw().find_node("/").unwrap().property("big").is_none());
}

#[test]
fn errors_display_distinct_messages() {
    let writer_errors = [
        FdtError::BufferTooSmall,
        FdtError::NameTooLong,
        FdtError::NameContainsNul,
        FdtError::InvalidName,
        FdtError::UnbalancedNodes,
        FdtError::MissingRoot,
        FdtError::MultipleRoots,
        FdtError::PropertyOutsideNode,
        FdtError::PropertyAfterChild,
        FdtError::TooDeep,
        FdtError::TooLarge,
    ];
    let mut messages: Vec<String> = writer_errors.iter().map(ToString::to_string).collect();
    messages.sort();
    messages.dedup();
    assert_eq!(messages.len(), writer_errors.len());
    let bad = DeviceTreeError::BadStructure { offset: 0x10, reason: "unknown token" };
    assert_eq!(bad.to_string(), "device tree structure block at 0x10: unknown token");
    assert_eq!(DeviceTreeError::UnsupportedVersion(3).to_string(), "device tree version 3 not supported");
}

#[test]
fn queries_answer_from_written_tree() {
    let blob = sample_blob();
    let tree = DeviceTree::parse(&blob).unwrap();
    assert_eq!(tree.real_mode_memory(), Some((0, 256 * MIB)));
    let regions: Vec<(u64, u64)> = tree.memory_regions().collect();
    assert_eq!(regions, [(0, 256 * MIB), (256 * MIB, 256 * MIB), (1024 * MIB, 4096)]);
    assert_eq!(tree.cpu_count(), 4, "two nodes of two threads");
    let threads: Vec<CpuThread> = tree.cpu_threads().collect();
    let expected =
        [(0, 0, 0), (0, 1, 1), (2, 0, 2), (2, 1, 3)].map(|(reg, thread, server)| CpuThread { reg, thread, server });
    assert_eq!(threads, expected);
    assert_eq!(tree.interrupt_controller(), InterruptController::None, "the sample has no controller node");
    assert_eq!(tree.timebase_frequency(), Some(512_000_000));
    assert_eq!(tree.rtas_token("power-off"), Some(0x2003));
    assert_eq!(tree.rtas_token("ibm,os-term"), Some(0x201f));
    assert_eq!(tree.rtas_token("ibm,extended-os-term"), None, "empty, not a token");
    assert_eq!(tree.rtas_token("short-token"), None, "two bytes, not a token");
    assert_eq!(tree.rtas_token("start-cpu"), None);
    assert_eq!(tree.bootargs(), Some("console=hvc0 quiet"));
    assert_eq!(tree.model(), Some("IBM pSeries (test)"));
}

/// A root with `#address-cells = <1>`, `#size-cells = <1>`, a 64-bit
/// timebase in `/cpus` and a CPU node without interrupt servers.
fn write_one_cell_tree(writer: &mut FdtWriter) -> Result<(), FdtError> {
    writer.begin_node(b"")?;
    writer.property(b"#address-cells", &1u32.to_be_bytes())?;
    writer.property(b"#size-cells", &1u32.to_be_bytes())?;
    writer.begin_node(b"cpus")?;
    writer.property(b"timebase-frequency", &(1u64 << 33).to_be_bytes())?;
    writer.begin_node(b"cpu@0")?;
    writer.property(b"device_type", b"cpu\0")?;
    writer.end_node()?;
    writer.begin_node(b"l2-cache")?;
    writer.property(b"device_type", b"cache\0")?;
    writer.end_node()?;
    writer.end_node()?;
    writer.begin_node(b"memory@1000")?;
    writer.property(b"device_type", b"memory\0")?;
    writer.property(b"reg", &words(&[0x1000, 0x2000, 0, 0x800]))?;
    writer.end_node()?;
    writer.end_node()
}

#[test]
fn queries_respect_cell_counts_and_fallbacks() {
    let (buffer, length) = build(1024, write_one_cell_tree).unwrap();
    let tree = DeviceTree::parse(&buffer[..length]).unwrap();
    let regions: Vec<(u64, u64)> = tree.memory_regions().collect();
    assert_eq!(regions, [(0x1000, 0x2000), (0, 0x800)]);
    assert_eq!(tree.real_mode_memory(), None, "the first entry of the only memory node is not at 0");
    assert_eq!(tree.cpu_count(), 1, "the cache node is not a CPU");
    let threads: Vec<CpuThread> = tree.cpu_threads().collect();
    assert_eq!(threads, [CpuThread { reg: 0, thread: 0, server: 0 }], "no reg, no servers: one thread, server 0");
    assert_eq!(tree.timebase_frequency(), Some(1 << 33));
}

/// A root with an `interrupt-controller` node of the given `compatible`, and
/// one CPU node whose `reg` is 5 and which has no interrupt servers.
fn write_controller_tree(writer: &mut FdtWriter, compatible: &[u8]) -> Result<(), FdtError> {
    writer.begin_node(b"")?;
    writer.begin_node(b"cpus")?;
    writer.begin_node(b"cpu@5")?;
    writer.property(b"device_type", b"cpu\0")?;
    writer.property(b"reg", &5u32.to_be_bytes())?;
    writer.end_node()?;
    writer.end_node()?;
    writer.begin_node(b"interrupt-controller@0")?;
    writer.property(b"compatible", compatible)?;
    writer.end_node()?;
    writer.end_node()
}

#[test]
fn interrupt_controller_is_told_by_compatible() {
    for (compatible, expected) in [
        (&b"IBM,ppc-xicp\0"[..], InterruptController::Xics),
        (b"ibm,power-ivpe\0", InterruptController::Xive),
        (b"other\0IBM,ppc-xicp\0", InterruptController::Xics),
        (b"IBM,ppc-xicp-not\0", InterruptController::None),
        (b"", InterruptController::None),
    ] {
        let (buffer, length) = build(1024, |writer| write_controller_tree(writer, compatible)).unwrap();
        let tree = DeviceTree::parse(&buffer[..length]).unwrap();
        assert_eq!(tree.interrupt_controller(), expected, "{compatible:?}");
        let threads: Vec<CpuThread> = tree.cpu_threads().collect();
        assert_eq!(threads, [CpuThread { reg: 5, thread: 0, server: 5 }], "without servers, the server is reg");
    }
}

/// Assembles a blob around a hand-made structure block and strings block.
fn assemble(structure: &[u8], strings: &[u8]) -> Vec<u8> {
    let strings_start = 56 + structure.len();
    let total = strings_start + strings.len();
    let header = [0xd00d_feed, total, 56, strings_start, 40, 17, 16, 0, strings.len(), structure.len()];
    let mut blob: Vec<u8> = header.iter().flat_map(|&word| (word as u32).to_be_bytes()).collect();
    blob.extend_from_slice(&[0; 16]);
    blob.extend_from_slice(structure);
    blob.extend_from_slice(strings);
    blob
}

fn begin(name: &str) -> Vec<u8> {
    let mut bytes = words(&[1]);
    bytes.extend_from_slice(name.as_bytes());
    bytes.resize(4 + (name.len() + 4) / 4 * 4, 0);
    bytes
}

fn property(name_offset: u32, value: &[u8]) -> Vec<u8> {
    let mut bytes = words(&[3, value.len() as u32, name_offset]);
    bytes.extend_from_slice(value);
    bytes.resize(12 + value.len().div_ceil(4) * 4, 0);
    bytes
}

fn bad_structure(blob: &[u8]) -> &'static str {
    match DeviceTree::parse(blob) {
        Err(DeviceTreeError::BadStructure { reason, .. }) => reason,
        other => panic!("expected a bad structure, got {other:?}"),
    }
}

#[test]
fn parse_accepts_hand_made_tree() {
    let structure = [begin(""), property(0, b"m\0"), begin("a"), words(&[2, 2, 9])].concat();
    let blob = assemble(&structure, b"model\0");
    let tree = DeviceTree::parse(&blob).unwrap();
    assert_eq!(tree.model(), Some("m"));
}

#[test]
fn parse_rejects_bad_headers() {
    let good = assemble(&[begin(""), words(&[2, 9])].concat(), b"");
    assert!(DeviceTree::parse(&good).is_ok());
    assert_eq!(DeviceTree::parse(&good[..39]).unwrap_err(), DeviceTreeError::Truncated);
    assert_eq!(DeviceTree::parse(&good[..good.len() - 1]).unwrap_err(), DeviceTreeError::Truncated);
    let mut bad = good.clone();
    bad[0] = 0;
    assert_eq!(DeviceTree::parse(&bad).unwrap_err(), DeviceTreeError::BadMagic);
    let mut old = good.clone();
    old[23] = 16;
    assert_eq!(DeviceTree::parse(&old).unwrap_err(), DeviceTreeError::UnsupportedVersion(16));
    let mut outside = good.clone();
    outside[39] = 0xff;
    assert_eq!(DeviceTree::parse(&outside).unwrap_err(), DeviceTreeError::BlockOutOfBounds);
}

#[test]
fn parse_rejects_malformed_structure() {
    let end = words(&[2, 9]);
    let nop = [begin(""), words(&[4]), end.clone()].concat();
    assert_eq!(bad_structure(&assemble(&nop, b"")), "NOP token (not supported)");
    let after_child = [begin(""), begin("a"), words(&[2]), property(0, b""), end.clone()].concat();
    assert_eq!(bad_structure(&assemble(&after_child, b"x\0")), "property after a child node");
    let outside_strings = [begin(""), property(9, b""), end.clone()].concat();
    assert_eq!(bad_structure(&assemble(&outside_strings, b"x\0")), "property name outside strings block");
    let cells = [begin(""), property(0, &[0, 1]), end.clone()].concat();
    assert_eq!(bad_structure(&assemble(&cells, b"#size-cells\0")), "cell count not one word");
    let slash = [begin(""), property(0, b""), end.clone()].concat();
    assert_eq!(bad_structure(&assemble(&slash, b"/x\0")), "property name contains '/'");
    let named_root = [begin("root"), end.clone()].concat();
    assert_eq!(bad_structure(&assemble(&named_root, b"")), "root node has a name");
    let two_roots = [begin(""), words(&[2]), begin(""), end.clone()].concat();
    assert_eq!(bad_structure(&assemble(&two_roots, b"")), "second root node");
    let unclosed = [begin(""), words(&[9])].concat();
    assert_eq!(bad_structure(&assemble(&unclosed, b"")), "END token inside a node");
    let long_value = [begin(""), words(&[3, 100, 0]), end.clone()].concat();
    assert_eq!(bad_structure(&assemble(&long_value, b"x\0")), "property value runs past the block");
    let no_end = [begin(""), words(&[2])].concat();
    assert_eq!(bad_structure(&assemble(&no_end, b"")), "structure block ends without an END token");
}

#[test]
fn parse_rejects_alias_loops_and_deep_nesting() {
    let structure = [begin(""), begin("aliases"), property(0, b"x\0"), words(&[2, 2, 9])].concat();
    assert_eq!(bad_structure(&assemble(&structure, b"x\0")), "alias not an absolute path");
    let structure = [begin(""), begin("aliases"), property(0, b"/chosen\0"), words(&[2, 2, 9])].concat();
    let blob = assemble(&structure, b"x\0");
    let tree = DeviceTree::parse(&blob).unwrap();
    assert!(tree.raw().find_node("x").is_none(), "alias to a missing node resolves to nothing");
    let deep = [begin("").repeat(1), begin("n").repeat(63), words(&[2]).repeat(64), words(&[9])].concat();
    assert_eq!(DeviceTree::parse(&assemble(&deep, b"")).unwrap_err(), DeviceTreeError::TooDeep);
}

/// Parses `bytes` and, if that succeeds, asks every question and walks every node.
fn exercise(bytes: &[u8]) {
    let Ok(tree) = DeviceTree::parse(bytes) else { return };
    let _ = (tree.real_mode_memory(), tree.memory_regions().count(), tree.cpu_count());
    let _ = (tree.timebase_frequency(), tree.bootargs(), tree.model(), tree.rtas_token("power-off"));
    let raw = tree.raw();
    for node in raw.all_nodes() {
        let _ = (node.properties().count(), node.children().count(), node.raw_reg().map(|reg| reg.take(8).count()));
    }
    for path in ["/", "/cpus/PowerPC,POWER9@2", "/chosen", "/rtas", "missing", "/a/b/c"] {
        let _ = raw.find_node(path);
    }
    let _ = raw.memory_reservations().count();
}

#[test]
fn parse_never_panics_on_damaged_blobs() {
    let blob = sample_blob();
    for length in 0..blob.len() {
        exercise(&blob[..length]);
    }
    for index in 0..blob.len() {
        for value in [0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x09, 0x2f, 0x7f, 0xff, blob[index] ^ 0x80] {
            let mut damaged = blob.clone();
            damaged[index] = value;
            exercise(&damaged);
        }
    }
}

#[test]
fn parse_never_panics_on_randomly_damaged_blobs() {
    let blob = sample_blob();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut random = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..20_000 {
        let mut damaged = blob.clone();
        for _ in 0..1 + random() % 4 {
            let index = (random() % damaged.len() as u64) as usize;
            damaged[index] = random() as u8;
        }
        exercise(&damaged);
    }
}
