//! The patch-module loader against a real rustc-built object: linking it, and refusing every damaged form.

mod module_support;

use std::collections::{BTreeMap, BTreeSet};

use module_support::*;
use portable::instruction::{NOP, branch_target};
use portable::module::relocation::*;
use portable::module::stub::{RESTORE_TOC, STUB_SIZE, STUB_WORDS, stub_target};
use portable::module::{
    LinkedModule, ModuleError, ModuleImage, local_entry_offset, parse, signed_trailer, split_signed,
};

const BASE: u64 = 0x1000_0000;
/// The kernel's TOC pointer handed to `link` (used by `toc kernel` modules only).
const KERNEL_TOC: u64 = 0x0068_07d8;

/// Links `image` at `base` into a fresh buffer with `resolve`.
fn link_with(
    image: &ModuleImage<'_>,
    base: u64,
    resolve: &mut dyn FnMut(&str) -> Option<u64>,
) -> (Result<LinkedModule, ModuleError>, Vec<u8>) {
    let mut memory = vec![0xa5; image.memory_size()];
    let linked = image.link(&mut memory, base, KERNEL_TOC, resolve);
    (linked, memory)
}

/// Parses and links `bytes` with the fixture's kernel names: the error, if any.
fn load(bytes: &[u8]) -> Result<LinkedModule, ModuleError> {
    let image = parse(bytes)?;
    link_with(&image, BASE, &mut kernel).0
}

/// The word at `address` in module memory placed at `base`.
fn word(memory: &[u8], base: u64, address: u64) -> u32 {
    let at = (address - base) as usize;
    u32::from_le_bytes(memory[at..at + 4].try_into().unwrap())
}

/// The doubleword at `address` in module memory placed at `base`.
fn doubleword(memory: &[u8], base: u64, address: u64) -> u64 {
    let at = (address - base) as usize;
    u64::from_le_bytes(memory[at..at + 8].try_into().unwrap())
}

/// The value an `addis rT,rA,HA` + (`addi`|`ld`) `rT,LO(rT)` pair adds to rA.
fn pair_offset(high: u32, low: u32, ds: bool) -> i64 {
    let low = if ds { low & 0xfffc } else { low & 0xffff };
    (i64::from(high as i16) << 16) + i64::from(low as u16 as i16)
}

/// The address of the loaded section called `name`.
fn section_address(linked: &LinkedModule, name: &str) -> u64 {
    linked.sections.iter().find(|section| section.name == name).unwrap_or_else(|| panic!("{name}")).address
}

#[test]
fn fixture_has_the_relocations_a_patch_module_needs() {
    let elf = Elf::fixture();
    let kinds: BTreeSet<u32> = elf
        .relocation_sections()
        .into_iter()
        .flat_map(|(index, _)| elf.relocations(index))
        .map(|relocation| relocation.kind)
        .collect();
    let expected = [
        R_PPC64_REL16_HA,
        R_PPC64_REL16_LO,
        R_PPC64_REL24,
        R_PPC64_TOC16_HA,
        R_PPC64_TOC16_LO,
        R_PPC64_TOC16_LO_DS,
        R_PPC64_ADDR64,
        R_PPC64_REL32,
    ];
    assert_eq!(kinds, expected.into_iter().collect());
    assert!(kinds.iter().all(|kind| SUPPORTED.contains(kind)));
    assert_eq!(elf.symbol("fixture_replacement").other >> 5, 3, "local entry at +8");
}

#[test]
fn fixture_links_at_a_fake_base() {
    let elf = Elf::fixture();
    let image = parse(FIXTURE).expect("the fixture parses");
    assert_eq!(image.memory_alignment(), 16);
    let (linked, memory) = link_with(&image, BASE, &mut kernel);
    let linked = linked.expect("the fixture links");
    let size = image.memory_size() as u64;

    // Sections: inside the memory, aligned, not overlapping, text first; TOC = .toc + 0x8000.
    let mut end = BASE;
    for section in &linked.sections {
        assert!(section.address >= end && section.address + section.size <= BASE + size, "{section:?}");
        end = section.address + section.size;
    }
    assert!(linked.sections[0].name.starts_with(".text."));
    let toc_area = section_address(&linked, ".toc");
    assert_eq!(linked.toc, toc_area + 0x8000);
    assert_eq!(doubleword(&memory, BASE, toc_area), KERNEL_STATIC, ".toc holds the kernel static's address");

    // Two distinct external functions: two stubs, at the end of the memory.
    let stubs = BASE + size - 2 * STUB_SIZE as u64;
    assert!(stubs >= end);

    let symbols = elf.symbols();
    let address_of_section = |index: u16| section_address(&linked, &elf.section_name(index.into()));
    let text = elf.section(".text.fixture_replacement");
    let mut external_calls = BTreeMap::new();
    let mut checked: BTreeMap<u32, usize> = BTreeMap::new();
    for (rela, target) in elf.relocation_sections() {
        let target_address = section_address(&linked, &elf.section_name(target));
        for relocation in elf.relocations(rela) {
            let place = target_address + relocation.offset;
            let symbol = &symbols[relocation.symbol];
            let symbol_address =
                if symbol.section == 0 { None } else { Some(address_of_section(symbol.section) + symbol.value) };
            *checked.entry(relocation.kind).or_insert(0) += 1;
            match relocation.kind {
                R_PPC64_REL24 => {
                    let (destination, link) = branch_target(place, word(&memory, BASE, place)).unwrap();
                    assert!(link);
                    match symbol_address {
                        // A module function: its local entry, past the TOC set-up.
                        Some(address) => {
                            let local = local_entry_offset(symbol.other).unwrap();
                            assert_eq!(destination, address + local, "{}", symbol.name);
                            assert_eq!(local, 8, "count_call sets up its TOC");
                        }
                        // A kernel function: a stub jumping to it, then the TOC restore.
                        None => {
                            assert!((stubs..BASE + size).contains(&destination), "{destination:#x}");
                            let words: [u32; STUB_WORDS] =
                                std::array::from_fn(|index| word(&memory, BASE, destination + 4 * index as u64));
                            assert_eq!(stub_target(&words), kernel(&symbol.name), "{}", symbol.name);
                            assert_eq!(word(&memory, BASE, place + 4), RESTORE_TOC, "nop after bl {}", symbol.name);
                            external_calls.insert(symbol.name.clone(), destination);
                        }
                    }
                }
                R_PPC64_REL16_HA => {
                    // addis r2,r12,HA; addi r2,r2,LO at the global entry: r2 = entry + offset = TOC.
                    assert_eq!(symbol.name, ".TOC.");
                    let high = word(&memory, BASE, place);
                    let low = word(&memory, BASE, place + 4);
                    assert_eq!((high & 0xffff_0000, low & 0xffff_0000), (0x3c4c_0000, 0x3842_0000));
                    assert_eq!(place.wrapping_add(pair_offset(high, low, false) as u64), linked.toc);
                }
                R_PPC64_TOC16_HA => {
                    let high = word(&memory, BASE, place);
                    let low = word(&memory, BASE, place + 4);
                    let ds = low >> 26 == 58; // ld
                    let reached = linked.toc.wrapping_add(pair_offset(high, low, ds) as u64);
                    assert_eq!(Some(reached), symbol_address.map(|address| address + relocation.addend as u64));
                }
                R_PPC64_TOC16_LO | R_PPC64_TOC16_LO_DS | R_PPC64_REL16_LO => {} // checked with their HA
                R_PPC64_ADDR64 => {
                    let expected = symbol_address.or_else(|| kernel(&symbol.name)).unwrap();
                    assert_eq!(doubleword(&memory, BASE, place), expected + relocation.addend as u64);
                }
                R_PPC64_REL32 => {
                    let value = word(&memory, BASE, place) as i32 as i64;
                    assert_eq!(place.wrapping_add(value as u64), symbol_address.unwrap() + relocation.addend as u64);
                }
                kind => panic!("unexpected relocation type {kind}"),
            }
        }
    }
    let expected = [
        (R_PPC64_REL24, 3),
        (R_PPC64_TOC16_LO, 2),
        (R_PPC64_TOC16_HA, 3),
        (R_PPC64_ADDR64, 3),
        (R_PPC64_TOC16_LO_DS, 1),
        (R_PPC64_REL32, 5),
        (R_PPC64_REL16_LO, 2),
        (R_PPC64_REL16_HA, 2),
    ];
    assert_eq!(checked, expected.into_iter().collect());
    assert_eq!(external_calls.len(), 2);
    assert_ne!(external_calls["klp_test_kernel_function"], external_calls["klp_test_other"]);

    // The function-pointer table holds the module functions' global entries.
    let table = section_address(&linked, &elf.section_name(elf.section_starting(".data.rel.ro.")));
    let double = linked.symbols.iter().find(|symbol| symbol.name.ends_with("6double")).unwrap();
    let triple = linked.symbols.iter().find(|symbol| symbol.name.ends_with("6triple")).unwrap();
    assert_eq!(doubleword(&memory, BASE, table), double.address);
    assert_eq!(doubleword(&memory, BASE, table + 8), triple.address);

    // Symbols and description.
    let replacement = linked.symbol("fixture_replacement").unwrap();
    assert_eq!(replacement.address, section_address(&linked, &elf.section_name(text)));
    assert_eq!((replacement.local_entry_offset, replacement.size), (8, elf.size(text)));
    assert!(replacement.global && replacement.function);
    assert_eq!(linked.symbol("fixture_ten").unwrap().local_entry_offset, 0);
    assert!(linked.symbol("klp_test_other").is_none(), "undefined symbols are not module symbols");
    assert_eq!(linked.description.name(), "fixture");
    let patch = linked.description.patch().expect("a patch's description");
    assert!(linked.description.module().is_none());
    assert_eq!(patch.functions.len(), 1);
    let function = &patch.functions[0];
    assert_eq!((function.old_name.as_str(), function.old_position), ("kernel::example", None));
    assert_eq!(function.new_symbol, "fixture_replacement");
    assert_eq!(image.description(), &linked.description);

    // Nothing else in the text changed: the patched words aside, it is the object's bytes.
    let original = &FIXTURE[elf.contents(text)..][..elf.size(text) as usize];
    let loaded = &memory[(replacement.address - BASE) as usize..][..original.len()];
    let changed: Vec<usize> =
        (0..original.len() / 4).filter(|&i| original[4 * i..][..4] != loaded[4 * i..][..4]).collect();
    let patched: BTreeSet<usize> = elf
        .relocations(elf.section(".rela.text.fixture_replacement"))
        .iter()
        .flat_map(|relocation| {
            let at = relocation.offset as usize / 4;
            if relocation.kind == R_PPC64_REL24 && symbols[relocation.symbol].section == 0 {
                vec![at, at + 1]
            } else {
                vec![at]
            }
        })
        .collect();
    assert!(changed.iter().all(|index| patched.contains(index)), "{changed:?} vs {patched:?}");
}

#[test]
fn far_kernel_addresses_work_because_stubs_are_absolute() {
    let image = parse(FIXTURE).unwrap();
    let far = 0xc000_0012_3456_7890;
    let mut resolve = |name: &str| if name == "klp_test_other" { Some(far) } else { kernel(name) };
    let (linked, memory) = link_with(&image, BASE, &mut resolve);
    linked.unwrap();
    let size = image.memory_size() as u64;
    let targets: BTreeSet<u64> = (0..2)
        .map(|stub| {
            let start = BASE + size - (2 - stub) * STUB_SIZE as u64;
            let words: [u32; STUB_WORDS] = std::array::from_fn(|index| word(&memory, BASE, start + 4 * index as u64));
            stub_target(&words).unwrap()
        })
        .collect();
    assert_eq!(targets, [KERNEL_FUNCTION, far].into_iter().collect());

    // The module itself may also sit far from the kernel.
    let (linked, _) = link_with(&image, 0xc000_0000_4000_0000, &mut kernel);
    assert_eq!(linked.unwrap().toc >> 32, 0xc000_0000);
}

#[test]
fn resolver_is_asked_once_per_name_and_linking_is_deterministic() {
    let image = parse(FIXTURE).unwrap();
    let mut asked = Vec::new();
    let (first, memory) = link_with(&image, BASE, &mut |name| {
        asked.push(name.to_string());
        kernel(name)
    });
    asked.sort();
    assert_eq!(asked, ["klp_test_kernel_function", "klp_test_kernel_static", "klp_test_other"]);
    let (second, again) = link_with(&image, BASE, &mut kernel);
    assert_eq!((first.unwrap(), memory), (second.unwrap(), again));
}

#[test]
fn link_writes_nothing_beyond_memory_size() {
    let image = parse(FIXTURE).unwrap();
    let size = image.memory_size();
    let mut memory = vec![0xa5u8; size + 4096];
    image.link(&mut memory, BASE, KERNEL_TOC, &mut kernel).unwrap();
    assert!(memory[size..].iter().all(|&byte| byte == 0xa5));
}

#[test]
fn memory_too_small_and_misaligned_base_are_refused() {
    let image = parse(FIXTURE).unwrap();
    let mut memory = vec![0; image.memory_size() - 1];
    let error = image.link(&mut memory, BASE, KERNEL_TOC, &mut kernel).unwrap_err();
    assert_eq!(error, ModuleError::MemoryTooSmall { needed: image.memory_size(), given: memory.len() });
    let mut memory = vec![0; image.memory_size()];
    let error = image.link(&mut memory, BASE + 8, KERNEL_TOC, &mut kernel).unwrap_err();
    assert_eq!(error, ModuleError::MisalignedBase { base: BASE + 8, alignment: 16 });
    let error = image.link(&mut memory, u64::MAX - 15, KERNEL_TOC, &mut kernel).unwrap_err();
    assert!(matches!(error, ModuleError::AddressOverflow { .. }), "{error}");
}

#[test]
fn unresolved_symbol_is_named() {
    let image = parse(FIXTURE).unwrap();
    for missing in ["klp_test_kernel_function", "klp_test_other", "klp_test_kernel_static"] {
        let (linked, _) = link_with(&image, BASE, &mut |name| if name == missing { None } else { kernel(name) });
        let error = linked.unwrap_err();
        assert_eq!(error, ModuleError::UndefinedSymbol(missing.to_string()));
        assert_eq!(error.to_string(), format!("undefined symbol {missing}"));
    }
}

#[test]
fn every_prefix_of_the_fixture_is_refused() {
    for length in 0..FIXTURE.len() {
        match parse(&FIXTURE[..length]) {
            Err(ModuleError::Truncated { .. }) => {}
            other => panic!("prefix of {length} bytes: {:?}", other.err()),
        }
    }
    assert!(matches!(parse(b"\x7fELX"), Err(ModuleError::NotElf)));
    assert!(matches!(parse(b"MZ"), Err(ModuleError::NotElf)));
}

#[test]
fn wrong_class_endianness_version_machine_type_and_abi_are_refused() {
    let with = |offset: usize, bytes: &[u8]| {
        let mut elf = Elf::fixture();
        elf.bytes[offset..offset + bytes.len()].copy_from_slice(bytes);
        parse(&elf.bytes).err().unwrap()
    };
    assert_eq!(with(0, b"\x7fELG"), ModuleError::NotElf);
    assert_eq!(with(4, &[1]), ModuleError::WrongClass(1));
    assert_eq!(with(5, &[2]), ModuleError::WrongEndianness(2));
    assert_eq!(with(6, &[0]), ModuleError::WrongVersion(0));
    assert_eq!(with(16, &2u16.to_le_bytes()), ModuleError::WrongType(2));
    assert_eq!(with(18, &20u16.to_le_bytes()), ModuleError::WrongMachine(20));
    assert_eq!(with(18, &62u16.to_le_bytes()).to_string(), "ELF machine 62 is not EM_PPC64 (21)");
    assert_eq!(with(48, &1u32.to_le_bytes()), ModuleError::WrongAbi(1));
    assert_eq!(
        with(58, &40u16.to_le_bytes()),
        ModuleError::BadEntrySize { what: "section header", size: 40, expected: 64 }
    );
    // e_flags 0 (ABI unspecified) is accepted.
    let mut elf = Elf::fixture();
    elf.set_u32(48, 0);
    load(&elf.bytes).unwrap();
}

#[test]
fn section_indices_out_of_range_are_refused() {
    let mut elf = Elf::fixture();
    let entry = elf.symbol("fixture_ten").entry;
    elf.set_u16(entry + ST_SHNDX, 200);
    let error = parse(&elf.bytes).err().unwrap();
    assert!(matches!(error, ModuleError::SectionOutOfRange { index: 200, .. }), "{error}");
    assert!(error.to_string().starts_with("section 200 out of range"), "{error}");

    let mut elf = Elf::fixture();
    let (rela, _) = elf.relocation_sections()[0];
    let header = elf.header(rela);
    elf.set_u32(header + SH_INFO, 77);
    assert!(matches!(parse(&elf.bytes), Err(ModuleError::SectionOutOfRange { index: 77, .. })));

    let mut elf = Elf::fixture();
    elf.set_u32(header + SH_LINK, 1);
    assert!(matches!(parse(&elf.bytes), Err(ModuleError::BadRelocationSection { .. })));

    let mut elf = Elf::fixture();
    elf.set_u16(62, 99);
    assert!(matches!(parse(&elf.bytes), Err(ModuleError::SectionOutOfRange { index: 99, .. })));
}

#[test]
fn overlapping_and_out_of_file_sections_are_refused() {
    let mut elf = Elf::fixture();
    let toc = elf.section(".toc");
    let text = elf.section(".text.fixture_replacement");
    let text_offset = elf.contents(text) as u64;
    let header = elf.header(toc);
    elf.set_u64(header + SH_OFFSET, text_offset + 4);
    assert_eq!(
        parse(&elf.bytes).err(),
        Some(ModuleError::SectionsOverlap { first: ".text.fixture_replacement".into(), second: ".toc".into() })
    );

    let mut elf = Elf::fixture();
    elf.set_u64(header + SH_OFFSET, 8);
    assert!(matches!(parse(&elf.bytes), Err(ModuleError::SectionsOverlap { .. })));

    let mut elf = Elf::fixture();
    elf.set_u64(header + SH_SIZE, u64::MAX - 4);
    assert!(matches!(parse(&elf.bytes), Err(ModuleError::SectionOutOfFile { .. })));

    let mut elf = Elf::fixture();
    elf.set_u64(header + SH_ADDRALIGN, 24);
    assert!(matches!(parse(&elf.bytes), Err(ModuleError::BadAlignment { alignment: 24, .. })));
}

#[test]
fn relocation_offsets_outside_their_section_are_refused() {
    let rela = |elf: &Elf| elf.relocations(elf.section(".rela.text.fixture_replacement"))[0].entry;
    let size = Elf::fixture().size(Elf::fixture().section(".text.fixture_replacement"));
    for offset in [size - 1, size, u64::MAX - 1] {
        let mut elf = Elf::fixture();
        let entry = rela(&elf);
        elf.set_u64(entry, offset);
        let error = parse(&elf.bytes).err().unwrap();
        assert!(matches!(error, ModuleError::RelocationOutOfSection { kind: R_PPC64_REL16_HA, .. }), "{error}");
    }
    // A relocation naming a symbol beyond the table.
    let mut elf = Elf::fixture();
    let entry = rela(&elf);
    elf.set_u64(entry + 8, (5000 << 32) | u64::from(R_PPC64_REL16_HA));
    assert!(matches!(parse(&elf.bytes), Err(ModuleError::SymbolOutOfRange { index: 5000, .. })));
}

#[test]
fn unknown_relocation_types_are_refused_by_name() {
    let toc_entry = |elf: &Elf| elf.relocations(elf.section(".rela.toc"))[0].entry;
    let mut elf = Elf::fixture();
    let entry = toc_entry(&elf);
    elf.set_relocation_type(entry, 3);
    let error = parse(&elf.bytes).err().unwrap();
    assert_eq!(error, ModuleError::UnsupportedRelocation { kind: 3, section: ".toc".into(), offset: 0 });
    assert_eq!(error.to_string(), "relocation R_PPC64_ADDR16 (type 3) at .toc+0x0 is not supported");
    for (kind, name) in [(116, "R_PPC64_REL24_NOTOC (type 116)"), (118, "R_PPC64_ENTRY (type 118)"), (300, "type 300")]
    {
        let mut elf = Elf::fixture();
        elf.set_relocation_type(entry, kind);
        assert!(parse(&elf.bytes).err().unwrap().to_string().contains(name), "{kind}");
    }
}

#[test]
fn overflows_name_the_relocation_and_the_symbol() {
    // The .toc entry as a 32-bit address, with the kernel static above 4 GiB.
    let mut elf = Elf::fixture();
    let entry = elf.relocations(elf.section(".rela.toc"))[0].entry;
    elf.set_relocation_type(entry, R_PPC64_ADDR32);
    let image = parse(&elf.bytes).unwrap();
    let mut far = |name: &str| kernel(name).map(|address| address | 1 << 32);
    let error = link_with(&image, BASE, &mut far).0.unwrap_err();
    assert!(
        matches!(&error, ModuleError::RelocationOverflow { kind: R_PPC64_ADDR32, symbol, .. } if symbol == "klp_test_kernel_static")
    );
    assert!(
        error.to_string().starts_with("relocation R_PPC64_ADDR32 (type 1) at .toc+0x0 against klp_test_kernel_static")
    );
    link_with(&image, BASE, &mut kernel).0.unwrap();

    // Relative to the kernel static: fine nearby, an overflow 4 GiB away.
    elf.set_relocation_type(entry, R_PPC64_REL32);
    let image = parse(&elf.bytes).unwrap();
    link_with(&image, BASE, &mut kernel).0.unwrap();
    assert!(matches!(
        link_with(&image, BASE, &mut far).0,
        Err(ModuleError::RelocationOverflow { kind: R_PPC64_REL32, .. })
    ));
}

#[test]
fn misaligned_ds_relocation_is_refused() {
    let mut elf = Elf::fixture();
    let rela = elf.relocations(elf.section(".rela.text.fixture_replacement"));
    let ds = rela.iter().find(|relocation| relocation.kind == R_PPC64_TOC16_LO_DS).unwrap();
    elf.set_u64(ds.entry + 16, 2);
    let error = load(&elf.bytes).unwrap_err();
    assert!(
        matches!(error, ModuleError::MisalignedRelocation { kind: R_PPC64_TOC16_LO_DS, value, .. } if value & 3 == 2)
    );
}

#[test]
fn external_calls_need_a_bl_followed_by_a_nop() {
    let elf = Elf::fixture();
    let text = elf.contents(elf.section(".text.fixture_replacement"));
    let symbols = elf.symbols();
    let call = elf
        .relocations(elf.section(".rela.text.fixture_replacement"))
        .into_iter()
        .find(|relocation| relocation.kind == R_PPC64_REL24 && symbols[relocation.symbol].section == 0)
        .unwrap();
    let at = text + call.offset as usize;
    assert_eq!(elf.u32_at(at + 4), NOP);

    let mut damaged = elf.clone();
    damaged.set_u32(at + 4, 0x7c08_02a6);
    let error = parse(&damaged.bytes).err().unwrap();
    let expected = ModuleError::MissingNop {
        symbol: "klp_test_kernel_function".into(),
        section: ".text.fixture_replacement".into(),
        offset: call.offset,
        found: Some(0x7c08_02a6),
    };
    assert_eq!(error, expected);
    assert!(error.to_string().contains("is not followed by a nop"));

    let mut tail_call = elf.clone();
    tail_call.set_u32(at, elf.u32_at(at) & !1);
    assert!(matches!(parse(&tail_call.bytes), Err(ModuleError::UnsupportedTarget { kind: R_PPC64_REL24, .. })));

    let mut not_a_branch = elf.clone();
    not_a_branch.set_u32(at, NOP);
    assert!(matches!(parse(&not_a_branch.bytes), Err(ModuleError::NotABranch { word: NOP, .. })));
}

#[test]
fn missing_and_malformed_descriptions_are_refused() {
    let elf = Elf::fixture();
    let patch = elf.section(".klp.patch");
    let names = elf.contents(elf.u16_at(62).into());
    let name_at = names + elf.u32_at(elf.header(patch) + SH_NAME) as usize;

    let mut renamed = elf.clone();
    renamed.bytes[name_at + ".klp.patc".len()] = b'x';
    assert_eq!(parse(&renamed.bytes).err(), Some(ModuleError::MissingDescription));

    let text = elf.contents(patch);
    let edit = |from: &str, to: &str| {
        let mut edited = elf.clone();
        let contents = &mut edited.bytes[text..text + elf.size(patch) as usize];
        let at = contents.windows(from.len()).position(|window| window == from.as_bytes()).unwrap();
        contents[at..at + to.len()].copy_from_slice(to.as_bytes());
        parse(&edited.bytes).err()
    };
    assert!(matches!(edit("klp-patch 1", "klp-patch 2"), Some(ModuleError::Description { line: 1, .. })));
    assert!(matches!(edit("name", "nome"), Some(ModuleError::Description { line: 2, .. })));
    assert!(matches!(edit("kernel::example", "kernel::exam@0e"), Some(ModuleError::Description { line: 3, .. })));
    assert_eq!(
        edit("fixture_replacement", "fixture_replacemenX"),
        Some(ModuleError::ReplacementNotFunction("fixture_replacemenX".into()))
    );

    let mut empty = elf.clone();
    empty.bytes[text..text + elf.size(patch) as usize].fill(0);
    assert!(matches!(parse(&empty.bytes), Err(ModuleError::Description { line: 0, .. })));
}

#[test]
fn common_symbols_rel_sections_tls_and_huge_sizes_are_refused() {
    let mut elf = Elf::fixture();
    let entry = elf.symbol("fixture_ten").entry;
    elf.set_u16(entry + ST_SHNDX, 0xfff2);
    let error = parse(&elf.bytes).err().unwrap();
    assert!(matches!(&error, ModuleError::UnsupportedSymbol { symbol, .. } if symbol == "fixture_ten"), "{error}");
    assert!(error.to_string().contains("COMMON"));

    let mut elf = Elf::fixture();
    let (rela, _) = elf.relocation_sections()[0];
    let header = elf.header(rela);
    elf.set_u32(header + SH_TYPE, 9);
    assert!(matches!(parse(&elf.bytes), Err(ModuleError::UnsupportedSection { .. })));

    let mut elf = Elf::fixture();
    let header = elf.header(elf.section(".toc"));
    let flags = elf.u64_at(header + SH_FLAGS);
    elf.set_u64(header + SH_FLAGS, flags | 0x400);
    assert!(
        matches!(parse(&elf.bytes), Err(ModuleError::UnsupportedSection { reason, .. }) if reason.contains("thread-local"))
    );

    let mut elf = Elf::fixture();
    let header = elf.header(elf.section_starting(".bss."));
    elf.set_u64(header + SH_SIZE, 1 << 40);
    assert!(matches!(parse(&elf.bytes), Err(ModuleError::TooLarge { what: "module memory", .. })));

    let mut elf = Elf::fixture();
    elf.set_u16(60, 5000);
    assert!(matches!(parse(&elf.bytes), Err(ModuleError::TooLarge { what: "section count", .. })));
}

#[test]
fn signed_fixture_splits_back_into_the_object() {
    let mut file = FIXTURE.to_vec();
    file.extend_from_slice(&[7; 64]);
    file.extend_from_slice(&signed_trailer(FIXTURE.len()));
    let (object, signature) = split_signed(&file).unwrap();
    assert_eq!((object, signature), (FIXTURE, &[7; 64]));
    load(object).unwrap();
    assert!(matches!(split_signed(FIXTURE), Err(ModuleError::SignedFile(_))));
    let last = file.len() - 1;
    file[last] = 1;
    assert!(matches!(split_signed(&file), Err(ModuleError::SignedFile(_))));
}

#[test]
fn relinking_chosen_symbols_equals_linking_with_their_new_addresses() {
    let elf = Elf::fixture();
    let image = parse(&elf.bytes).unwrap();
    let moved = |name: &str| match name {
        "klp_test_kernel_static" => Some(KERNEL_STATIC + 0x1000),
        "klp_test_other" => Some(KERNEL_OTHER + 0x2000),
        other => kernel(other),
    };
    let (linked, mut memory) = link_with(&image, BASE, &mut kernel);
    let linked_toc = linked.unwrap().toc;
    let (_, expected) = link_with(&image, BASE, &mut { moved });
    let select = |name: &str| name == "klp_test_kernel_static" || name == "klp_test_other";
    let written = image.relink_symbols(&mut memory, BASE, linked_toc, &select, &mut { moved }).unwrap();
    assert!(written >= 2, "a field and a stub at least ({written})");
    assert_eq!(memory, expected, "relinked = linked with the new addresses");
    // Nothing chosen, nothing written; an unresolvable choice is an error.
    assert_eq!(image.relink_symbols(&mut memory, BASE, linked_toc, &|_| false, &mut kernel).unwrap(), 0);
    assert!(matches!(
        image.relink_symbols(&mut memory, BASE, linked_toc, &select, &mut |_| None),
        Err(ModuleError::UndefinedSymbol(_))
    ));
    let mut short = memory[..10].to_vec();
    assert!(matches!(
        image.relink_symbols(&mut short, BASE, linked_toc, &select, &mut kernel),
        Err(ModuleError::MemoryTooSmall { .. })
    ));
}
