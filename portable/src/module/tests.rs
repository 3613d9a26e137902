//! Unit tests of the loader's arithmetic, stubs, names, description parser and signed files.

use alloc::string::ToString;
use alloc::vec;

use super::relocation::*;
use super::stub::{RESTORE_TOC, stub_target, stub_words};
use super::*;

/// `compute` with no addend and no TOC: the branch/data value is `symbol - place` or `symbol`.
fn field(kind: u32, symbol: u64, place: u64, toc: u64) -> Result<Field, Fault> {
    compute(kind, symbol, 0, place, toc)
}

#[test]
fn high_adjusted_and_low_rebuild_every_value_in_range() {
    assert_eq!((high_adjusted(0x1234_8000), low(0x1234_8000)), (0x1235, 0x8000));
    assert_eq!((high_adjusted(0x1234_7fff), low(0x1234_7fff)), (0x1234, 0x7fff));
    assert_eq!((high_adjusted(-0x8000i64 as u64), low(-0x8000i64 as u64)), (0, 0x8000));
    assert_eq!((high_adjusted(-0x8001i64 as u64), low(-0x8001i64 as u64)), (0xffff, 0x7fff));
    // addis then a sign-extended addi: (HA << 16) + sext(LO) gives the value back.
    let mut value: i64 = -0x8000_8000;
    while value <= 0x7fff_7fff {
        let rebuilt = (i64::from(high_adjusted(value as u64) as i16) << 16) + i64::from(low(value as u64) as i16);
        assert_eq!(rebuilt, value, "{value:#x}");
        value += 0x1_2345;
    }
}

#[test]
fn ha_fields_check_the_signed_32_bit_range() {
    let toc: u64 = 0x1000_0000_0000;
    for kind in [R_PPC64_TOC16_HA, R_PPC64_REL16_HA] {
        let at = |offset: i64| field(kind, toc.wrapping_add(offset as u64), toc, toc);
        assert_eq!(at(0x7fff_7fff), Ok(Field::Half(0x7fff)));
        assert_eq!(at(0x7fff_8000), Err(Fault::Overflow(0x7fff_8000)));
        assert_eq!(at(-0x8000_8000), Ok(Field::Half(0x8000)));
        assert_eq!(at(-0x8000_8001), Err(Fault::Overflow(-0x8000_8001i64 as u64)));
    }
    // LO halves never overflow.
    assert_eq!(field(R_PPC64_TOC16_LO, 0x1_2345_6789, 0, 0), Ok(Field::Half(0x6789)));
    assert_eq!(field(R_PPC64_REL16_LO, 0x10, 0x20, 0), Ok(Field::Half(0xfff0)));
}

#[test]
fn ds_fields_need_a_multiple_of_4_and_keep_the_low_two_bits() {
    let toc = 0x1_0000;
    assert_eq!(field(R_PPC64_TOC16_LO_DS, toc + 0x1236, 0, toc), Err(Fault::Misaligned(0x1236)));
    assert_eq!(field(R_PPC64_TOC16_LO_DS, toc - 0x8000, 0, toc), Ok(Field::HalfDs(0x8000)));
    assert_eq!(field(R_PPC64_TOC16_DS, toc + 0x7ffc, 0, toc), Ok(Field::HalfDs(0x7ffc)));
    assert_eq!(field(R_PPC64_TOC16_DS, toc + 0x8000, 0, toc), Err(Fault::Overflow(0x8000)));
    assert_eq!(field(R_PPC64_TOC16_DS, toc - 0x8000, 0, toc), Ok(Field::HalfDs(0x8000)));
    assert_eq!(field(R_PPC64_TOC16_DS, toc - 0x8004, 0, toc), Err(Fault::Overflow(-0x8004i64 as u64)));
    // `ld r3,0(r3)` is e8630000; a `ldu` (low bits 01) keeps its low bits.
    let mut bytes = 0xe863_0001u32.to_le_bytes();
    assert!(write(Field::HalfDs(0x8000), &mut bytes));
    assert_eq!(u32::from_le_bytes(bytes), 0xe863_8001);
}

#[test]
fn rel24_reaches_exactly_32_mib_each_way() {
    let place: u64 = 0x1000_0000;
    let at = |displacement: i64| field(R_PPC64_REL24, place.wrapping_add(displacement as u64), place, 0);
    assert_eq!(at(0x1ff_fffc), Ok(Field::Branch(0x01ff_fffc)));
    assert_eq!(at(0x200_0000), Err(Fault::Overflow(0x200_0000)));
    assert_eq!(at(-0x200_0000), Ok(Field::Branch(0x0200_0000)));
    assert_eq!(at(-0x200_0004), Err(Fault::Overflow(-0x200_0004i64 as u64)));
    assert_eq!(at(6), Err(Fault::Misaligned(6)));
    // The opcode and LK bit stay: `bl .` becomes `bl .+0x1fffffc`, `bl .-0x2000000`.
    let mut bytes = 0x4800_0001u32.to_le_bytes();
    assert!(write(Field::Branch(0x01ff_fffc), &mut bytes));
    assert_eq!(u32::from_le_bytes(bytes), 0x49ff_fffd);
    assert!(write(Field::Branch(0x0200_0000), &mut bytes[..]));
    assert_eq!(u32::from_le_bytes(bytes), 0x4a00_0001);
    assert_eq!(crate::instruction::branch_target(place, 0x4a00_0001), Some((place - 0x200_0000, true)));
}

#[test]
fn word_and_doubleword_fields() {
    assert_eq!(field(R_PPC64_ADDR64, 0xc000_0000_1234_5678, 0, 0), Ok(Field::Double(0xc000_0000_1234_5678)));
    assert_eq!(compute(R_PPC64_ADDR64, 0x1000, -8, 0, 0), Ok(Field::Double(0xff8)));
    assert_eq!(field(R_PPC64_REL64, 0x1000, 0x2000, 0), Ok(Field::Double(-0x1000i64 as u64)));
    assert_eq!(field(R_PPC64_REL32, 0x1000, 0x2000, 0), Ok(Field::Word(-0x1000i32 as u32)));
    assert_eq!(field(R_PPC64_REL32, 0x8000_0000, 0, 0), Err(Fault::Overflow(0x8000_0000)));
    assert_eq!(field(R_PPC64_REL32, 0, 0x8000_0000, 0), Ok(Field::Word(0x8000_0000)));
    assert_eq!(field(R_PPC64_ADDR32, 0xffff_ffff, 0, 0), Ok(Field::Word(0xffff_ffff)));
    assert_eq!(field(R_PPC64_ADDR32, 0x1_0000_0000, 0, 0), Err(Fault::Overflow(0x1_0000_0000)));
    assert_eq!(field(3, 0, 0, 0), Err(Fault::Unsupported));
    // A field that does not fit its bytes is not written at all.
    let mut short = [0u8; 7];
    assert!(!write(Field::Double(u64::MAX), &mut short));
    assert_eq!(short, [0; 7]);
}

#[test]
fn stub_words_are_what_the_assembler_emits() {
    // powerpc64le-linux-gnu-as of: std 2,24(1); lis 12,0x1234; ori 12,12,0x5678;
    // rldicr 12,12,32,31; oris 12,12,0x9abc; ori 12,12,0xdef0; mtctr 12; bctr; ld 2,24(1)
    // (objdump: std r2,24(r1) ... sldi r12,r12,32 ... bctr; ld r2,24(r1)).
    let words = stub_words(0x1234_5678_9abc_def0);
    assert_eq!(
        words,
        [0xf841_0018, 0x3d80_1234, 0x618c_5678, 0x798c_07c6, 0x658c_9abc, 0x618c_def0, 0x7d89_03a6, 0x4e80_0420]
    );
    assert_eq!(RESTORE_TOC, 0xe841_0018);
    assert_eq!(stub_target(&words), Some(0x1234_5678_9abc_def0));
    assert_eq!(stub_target(&stub_words(0x40_1230)), Some(0x40_1230));
    let mut broken = words;
    broken[7] = crate::instruction::NOP;
    assert_eq!(stub_target(&broken), None);
}

#[test]
fn relocation_types_have_names() {
    assert_eq!(relocation_name(3), Some("R_PPC64_ADDR16"));
    assert_eq!(relocation_name(10), Some("R_PPC64_REL24"));
    assert_eq!(relocation_name(64), Some("R_PPC64_TOC16_LO_DS"));
    assert_eq!(relocation_name(116), Some("R_PPC64_REL24_NOTOC"));
    assert_eq!(relocation_name(118), Some("R_PPC64_ENTRY"));
    assert_eq!(relocation_name(252), Some("R_PPC64_REL16_HA"));
    assert_eq!(relocation_name(18), None);
    assert_eq!(relocation_name(300), None);
    for kind in SUPPORTED {
        assert!(relocation_name(kind).is_some(), "{kind}");
    }
    let error = ModuleError::UnsupportedRelocation { kind: 3, section: ".text".to_string(), offset: 0x40 };
    assert_eq!(error.to_string(), "relocation R_PPC64_ADDR16 (type 3) at .text+0x40 is not supported");
    let error = ModuleError::UnsupportedRelocation { kind: 300, section: ".text".to_string(), offset: 0 };
    assert_eq!(error.to_string(), "relocation type 300 at .text+0x0 is not supported");
}

#[test]
fn local_entry_offsets_follow_st_other() {
    let offsets: alloc::vec::Vec<_> = (0..8u8).map(|code| local_entry_offset(code << 5)).collect();
    assert_eq!(offsets, [Some(0), Some(0), Some(4), Some(8), Some(16), Some(32), Some(64), None]);
    // The visibility bits (0-1) do not matter.
    assert_eq!(local_entry_offset((3 << 5) | 2), Some(8));
}

/// A description error's line.
fn description_line(text: &str) -> usize {
    match parse_description(text.as_bytes()) {
        Err(ModuleError::Description { line, .. }) => line,
        other => panic!("{text:?} gave {other:?}"),
    }
}

#[test]
fn description_parses_names_positions_comments_and_padding() {
    let text = b"# made by hand\n\nklp-patch 1\nname greeting\n  replace kernel::hello new_hello  \n\
                 # another\nreplace kernel::util::parse@2 new_parse\nreplace kernel::x new_x allow_inlined\n\0\0\0";
    let description = parse_description(text).unwrap();
    assert_eq!(description.name, "greeting");
    assert_eq!(
        description.functions,
        vec![
            ReplacedFunction {
                object: None,
                old_name: "kernel::hello".to_string(),
                old_position: None,
                new_symbol: "new_hello".to_string(),
                allow_inlined: false,
            },
            ReplacedFunction {
                object: None,
                old_name: "kernel::util::parse".to_string(),
                old_position: Some(2),
                new_symbol: "new_parse".to_string(),
                allow_inlined: false,
            },
            ReplacedFunction {
                object: None,
                old_name: "kernel::x".to_string(),
                old_position: None,
                new_symbol: "new_x".to_string(),
                allow_inlined: true,
            },
        ]
    );
}

#[test]
fn object_lines_name_the_module_of_the_replace_lines_after_them() {
    let text = b"klp-patch 1\nname fix\nreplace kernel::a new_a\nobject hello-module\nreplace message new_message\n\
                 replace a new_module_a\n";
    let description = parse_description(text).unwrap();
    let objects: Vec<(Option<&str>, &str)> =
        description.functions.iter().map(|function| (function.object.as_deref(), function.old_name.as_str())).collect();
    assert_eq!(objects, [(None, "kernel::a"), (Some("hello-module"), "message"), (Some("hello-module"), "a")]);
    // The same name in the kernel and in a module is two functions; twice in one module is refused.
    assert_eq!(description_line("klp-patch 1\nname x\nobject m\nreplace a b\nreplace a c\n"), 5);
    assert_eq!(description_line("klp-patch 1\nname x\nobject\nreplace a b\n"), 3);
    assert_eq!(description_line("klp-patch 1\nname x\nobject m n\nreplace a b\n"), 3);
}

#[test]
fn malformed_descriptions_name_their_line() {
    assert_eq!(description_line(""), 0);
    assert_eq!(description_line("\0\0"), 0);
    assert_eq!(description_line("name x\nklp-patch 1\n"), 1);
    assert_eq!(description_line("klp-patch 2\nname x\nreplace a b\n"), 1);
    assert_eq!(description_line("klp-patch\n"), 1);
    assert_eq!(description_line("klp-patch 1\nreplace a b\n"), 0);
    assert_eq!(description_line("klp-patch 1\nname x\n"), 0);
    assert_eq!(description_line("klp-patch 1\nname x\nname y\nreplace a b\n"), 3);
    assert_eq!(description_line("klp-patch 1\nname\nreplace a b\n"), 2);
    assert_eq!(description_line("klp-patch 1\nname a b\nreplace a b\n"), 2);
    assert_eq!(description_line("klp-patch 1\nname x\nreplace a\n"), 3);
    assert_eq!(description_line("klp-patch 1\nname x\nreplace a b c\n"), 3);
    assert_eq!(description_line("klp-patch 1\nname x\nreplace a b allow_inlined allow_inlined\n"), 3);
    let message = parse_description(b"klp-patch 1\nname x\nreplace a b force\n").unwrap_err().to_string();
    assert!(message.contains("unknown flag \"force\" (expected \"allow_inlined\")"), "{message}");
    assert_eq!(description_line("klp-patch 1\nname x\nreplace a@0 b\n"), 3);
    assert_eq!(description_line("klp-patch 1\nname x\nreplace a@x b\n"), 3);
    assert_eq!(description_line("klp-patch 1\nname x\nreplace a@+1 b\n"), 3);
    assert_eq!(description_line("klp-patch 1\nname x\nreplace @1 b\n"), 3);
    assert_eq!(description_line("klp-patch 1\nname x\nreplace a b\nreplace a c\n"), 4);
    assert_eq!(description_line("klp-patch 1\nname x\nreplace a b\nunknown a b\n"), 4);
    assert_eq!(description_line("klp-patch 1\nklp-patch 1\nname x\nreplace a b\n"), 2);
    assert_eq!(description_line("klp-patch 1\nname x\0y\nreplace a b\n"), 0);
    assert_eq!(description_line("klp-patch 1\nname caf\u{e9}\nreplace a b\n"), 2);
    assert!(matches!(parse_description(b"klp-patch 1\nname \xff\n"), Err(ModuleError::Description { line: 0, .. })));
    // The same name at two positions is two functions.
    let two = parse_description(b"klp-patch 1\nname x\nreplace a@1 b\nreplace a@2 c\n").unwrap();
    assert_eq!(two.functions.len(), 2);
    let message = parse_description(b"klp-patch 7\n").unwrap_err().to_string();
    assert_eq!(message, "patch description line 1: unsupported version 7");
}

#[test]
fn signed_files_split_at_their_trailer() {
    let object = b"\x7fELF object bytes";
    let mut file = object.to_vec();
    file.extend_from_slice(&[0x5a; 64]);
    file.extend_from_slice(&signed_trailer(object.len()));
    let (body, signature) = split_signed(&file).unwrap();
    assert_eq!(body, object);
    assert_eq!(signature, &[0x5a; 64]);
    assert_eq!(&signed_trailer(0x0102)[..], b"KLPSIG01\x02\x01\0\0\0\0\0\0");

    let refused = |file: &[u8]| matches!(split_signed(file), Err(ModuleError::SignedFile(_)));
    assert!(refused(&file[..79]));
    assert!(refused(&file[1..]));
    let mut bad_magic = file.clone();
    let end = bad_magic.len();
    bad_magic[end - 16] = b'X';
    assert!(refused(&bad_magic));
    let mut bad_length = file.clone();
    bad_length[end - 8] ^= 1;
    assert!(refused(&bad_length));
    let empty_object = [&[0u8; 64][..], &signed_trailer(0)[..]].concat();
    assert_eq!(split_signed(&empty_object).map(|(body, _)| body.len()), Ok(0));
}

#[test]
fn description_parses_atomic_replace_states_and_callbacks() {
    let text = b"klp-patch 1\nname cumulative\nreplace kernel::hello new_hello\natomic-replace\nstate 1 2\nstate 7 1\n\
                 callback vmlinux pre_patch before\ncallback target-module post_unpatch after\n";
    let description = parse_description(text).unwrap();
    assert!(description.atomic_replace);
    assert_eq!(description.states, vec![(1, 2), (7, 1)]);
    assert_eq!(
        description.callbacks,
        vec![
            CallbackLine { object: "vmlinux".to_string(), kind: "pre_patch".to_string(), symbol: "before".to_string() },
            CallbackLine {
                object: "target-module".to_string(),
                kind: "post_unpatch".to_string(),
                symbol: "after".to_string()
            },
        ]
    );
    let plain = parse_description(b"klp-patch 1\nname plain\nreplace a b\n").unwrap();
    assert!(!plain.atomic_replace && plain.states.is_empty() && plain.callbacks.is_empty());
}

#[test]
fn description_refuses_bad_states_and_callbacks_by_line() {
    let head = "klp-patch 1\nname p\nreplace a b\n";
    for (line, expected) in [
        ("state 1", 4),
        ("state one 2", 4),
        ("state 1 2\nstate 1 3", 5),
        ("callback vmlinux during_patch f", 4),
        ("callback vmlinux pre_patch", 4),
        ("callback vmlinux pre_patch f\ncallback vmlinux pre_patch g", 5),
        ("atomic-replace\natomic-replace", 5),
        ("atomic-replace now", 4),
    ] {
        assert_eq!(description_line(&format!("{head}{line}\n")), expected, "{line:?}");
    }
}

#[test]
fn description_names_the_build_id_it_was_made_for() {
    use crate::build_id::BuildId;
    let hex = "0123456789abcdef0123456789abcdef01234567";
    let text = alloc::format!("klp-patch 1\nname fix\nbuild-id {hex}\nreplace kernel::a new_a\n");
    let description = parse_description(text.as_bytes()).unwrap();
    assert_eq!(description.build_id, BuildId::parse(hex));
    assert_eq!(parse_description(b"klp-patch 1\nname x\nreplace a b\n").unwrap().build_id, None);
    // Malformed: not 40 hex digits, no id, two ids.
    assert_eq!(description_line("klp-patch 1\nname x\nbuild-id 0123\nreplace a b\n"), 3);
    assert_eq!(description_line("klp-patch 1\nname x\nbuild-id\nreplace a b\n"), 3);
    assert_eq!(description_line(&alloc::format!("klp-patch 1\nname x\nbuild-id {hex} {hex}\nreplace a b\n")), 3);
    assert_eq!(
        description_line(&alloc::format!("klp-patch 1\nname x\nbuild-id {hex}\nbuild-id {hex}\nreplace a b\n")),
        4
    );
    let message = parse_description(b"klp-patch 1\nname x\nbuild-id xyz\nreplace a b\n").unwrap_err().to_string();
    assert_eq!(message, "patch description line 3: build id \"xyz\" is not 40 hexadecimal digits");
}

#[test]
fn a_patch_goes_only_into_the_kernel_it_names() {
    use crate::build_id::BuildId;
    let made_for = BuildId([0xab; 20]);
    let other = BuildId([0x01; 20]);
    let text = alloc::format!("klp-patch 1\nname fix\nbuild-id {made_for}\nreplace kernel::a new_a\n");
    let named = parse_description(text.as_bytes()).unwrap();
    assert_eq!(named.check_build_id(Some(made_for)), Ok(()));
    let refused = named.check_build_id(Some(other)).unwrap_err();
    assert_eq!(
        refused.to_string(),
        "patch 'fix' was built for kernel abababababababababababababababababababab; \
         this kernel is 0101010101010101010101010101010101010101"
    );
    assert_eq!(
        named.check_build_id(None).unwrap_err().to_string(),
        "patch 'fix' was built for kernel abababababababababababababababababababab; this kernel has no build id"
    );
    // A patch that names no build id goes into any kernel.
    let any = parse_description(b"klp-patch 1\nname any\nreplace kernel::a new_a\n").unwrap();
    assert_eq!(any.check_build_id(Some(other)), Ok(()));
    assert_eq!(any.check_build_id(None), Ok(()));
}

#[test]
fn description_reads_toc_kernel_and_abi_checked() {
    let id = "00112233445566778899aabbccddeeff00112233";
    let text =
        format!("klp-patch 1\nname generated\nbuild-id {id}\ntoc kernel\nabi-checked\nreplace kernel::a new_a\n");
    let description = parse_description(text.as_bytes()).unwrap();
    assert!(description.kernel_toc && description.abi_checked);
    // The claim is about one kernel's builds: without the build id, refused.
    let unbound = "klp-patch 1\nname generated\ntoc kernel\nabi-checked\nreplace kernel::a new_a\n";
    match parse_description(unbound.as_bytes()) {
        Err(ModuleError::Description { reason, .. }) => assert!(reason.contains("build-id"), "{reason}"),
        other => panic!("abi-checked without build-id: {other:?}"),
    }
    let plain = parse_description(b"klp-patch 1\nname x\nreplace a b\n").unwrap();
    assert!(!plain.kernel_toc && !plain.abi_checked, "without the lines: as before");
    // Malformed: another TOC, an argument, twice.
    assert_eq!(description_line("klp-patch 1\nname x\ntoc module\nreplace a b\n"), 3);
    assert_eq!(description_line("klp-patch 1\nname x\ntoc\nreplace a b\n"), 3);
    assert_eq!(description_line("klp-patch 1\nname x\nabi-checked yes\nreplace a b\n"), 3);
    assert_eq!(description_line("klp-patch 1\nname x\ntoc kernel\ntoc kernel\nreplace a b\n"), 4);
    assert_eq!(description_line("klp-patch 1\nname x\nabi-checked\nabi-checked\nreplace a b\n"), 4);
}
