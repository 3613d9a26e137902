//! Linking a patch module that runs on the kernel's TOC base (`toc kernel`): its `.TOC.`, stubs without a TOC save, calls without a nop, and the reach of the kernel's TOC.

use object::write::{Object as Writer, Relocation, Symbol, SymbolSection};
use object::{
    Architecture, BinaryFormat, Endianness, FileFlags, RelocationFlags, SectionKind, SymbolFlags, SymbolKind,
    SymbolScope,
};
use portable::instruction::{NOP, branch_target};
use portable::module::relocation::*;
use portable::module::stub::{SAVE_TOC, STUB_WORDS, kernel_toc_stub_words, stub_target};
use portable::module::{ModuleError, parse};

const BASE: u64 = 0x1000_0000;
const KERNEL_TOC: u64 = 0x0068_07d8;
const KERNEL_CALLED: u64 = 0x0040_1230;
const KERNEL_UNNOPPED: u64 = 0x0040_2460;
const KERNEL_TAIL: u64 = 0x0040_3000;
const KERNEL_STATIC: u64 = 0x0050_0008;

/// `addis r2,r12,0`, `addi r2,r2,0`: the global entry's TOC set-up (medium code model).
const ADDIS_R2_R12: u32 = 0x3c4c_0000;
const ADDI_R2_R2: u32 = 0x3842_0000;
const BL: u32 = 0x4800_0001;
const B: u32 = 0x4800_0000;
/// `addi r3,r3,1`: an instruction that is not a nop after a call.
const ADDI_R3: u32 = 0x3863_0001;
/// `addis r3,r2,0`, `ld r3,0(r3)`: loading a `.toc` entry.
const ADDIS_R3_R2: u32 = 0x3c62_0000;
const LD_R3: u32 = 0xe863_0000;

/// Offsets in the function of each instruction the test looks at.
const CALL: u64 = 8;
const CALL_WITHOUT_NOP: u64 = 16;
const TOC_LOAD: u64 = 24;
const TAIL_CALL: u64 = 32;

/// A patch object with one function `replacement` that sets up `.TOC.`, calls
/// `kernel_called` (`bl; nop`) and `kernel_unnopped` (`bl` and no nop),
/// loads a `.toc` entry holding `kernel_static`, and tail-calls `kernel_tail`;
/// its description says `extra` after the name line.
fn object(extra: &str) -> Vec<u8> {
    object_calling(extra, "kernel_called")
}

/// [`object`] with the first call (`bl; nop`) to `called` instead.
fn object_calling(extra: &str, called: &str) -> Vec<u8> {
    let mut writer = Writer::new(BinaryFormat::Elf, Architecture::PowerPc64, Endianness::Little);
    writer.flags = FileFlags::Elf { os_abi: 0, abi_version: 0, e_flags: 2 };
    let code = [ADDIS_R2_R12, ADDI_R2_R2, BL, NOP, BL, ADDI_R3, ADDIS_R3_R2, LD_R3, B];
    let bytes: Vec<u8> = code.iter().flat_map(|word| word.to_le_bytes()).collect();
    let text = writer.add_section(vec![], b".text.replacement".to_vec(), SectionKind::Text);
    writer.append_section_data(text, &bytes, 16);
    let toc = writer.add_section(vec![], b".toc".to_vec(), SectionKind::Data);
    writer.append_section_data(toc, &[0; 8], 8);
    let description = format!("klp-patch 1\nname shared\n{extra}replace kernel::target replacement\n");
    let patch = writer.add_section(vec![], b".klp.patch".to_vec(), SectionKind::ReadOnlyData);
    writer.append_section_data(patch, description.as_bytes(), 1);
    writer.add_symbol(Symbol {
        name: b"replacement".to_vec(),
        value: 0,
        size: bytes.len() as u64,
        kind: SymbolKind::Text,
        scope: SymbolScope::Linkage,
        weak: false,
        section: SymbolSection::Section(text),
        // Local entry 8 bytes after the global one (st_other 3 << 5).
        flags: SymbolFlags::Elf { st_info: (1 << 4) | 2, st_other: 3 << 5 },
    });
    let mut undefined = |name: &str| {
        writer.add_symbol(Symbol {
            name: name.as_bytes().to_vec(),
            value: 0,
            size: 0,
            kind: SymbolKind::Unknown,
            scope: SymbolScope::Linkage,
            weak: false,
            section: SymbolSection::Undefined,
            flags: SymbolFlags::None,
        })
    };
    let toc_symbol = undefined(".TOC.");
    let called = undefined(called);
    let unnopped = undefined("kernel_unnopped");
    let tail = undefined("kernel_tail");
    let static_symbol = undefined("kernel_static");
    let toc_section = writer.section_symbol(toc);
    let _ = writer.add_file_symbol(b"fixture".to_vec());
    let relocations = [
        (text, 0, toc_symbol, 0, R_PPC64_REL16_HA),
        (text, 4, toc_symbol, 4, R_PPC64_REL16_LO),
        (text, CALL, called, 0, R_PPC64_REL24),
        (text, CALL_WITHOUT_NOP, unnopped, 0, R_PPC64_REL24),
        (text, TOC_LOAD, toc_section, 0, R_PPC64_TOC16_HA),
        (text, TOC_LOAD + 4, toc_section, 0, R_PPC64_TOC16_LO_DS),
        (text, TAIL_CALL, tail, 0, R_PPC64_REL24),
        (toc, 0, static_symbol, 0, R_PPC64_ADDR64),
    ];
    for (section, offset, symbol, addend, kind) in relocations {
        writer
            .add_relocation(
                section,
                Relocation { offset, symbol, addend, flags: RelocationFlags::Elf { r_type: kind } },
            )
            .unwrap();
    }
    writer.write().unwrap()
}

fn kernel(name: &str) -> Option<u64> {
    match name {
        "kernel_called" => Some(KERNEL_CALLED),
        "kernel_unnopped" => Some(KERNEL_UNNOPPED),
        "kernel_tail" => Some(KERNEL_TAIL),
        "kernel_static" => Some(KERNEL_STATIC),
        _ => None,
    }
}

/// The word at `offset` of `memory`.
fn word(memory: &[u8], offset: u64) -> u32 {
    u32::from_le_bytes(memory[offset as usize..offset as usize + 4].try_into().unwrap())
}

/// The value an `addis rT,rA,HA` + (`addi`|`ld`) `rT,LO(rT)` pair adds to rA.
fn pair_offset(high: u32, low: u32, ds: bool) -> i64 {
    let low = if ds { low & 0xfffc } else { low & 0xffff };
    (i64::from(high as i16) << 16) + i64::from(low as u16 as i16)
}

/// The stub's eight words a branch at `offset` (in memory placed at `base`) goes to, and whether it links.
fn stub_at_branch(memory: &[u8], base: u64, offset: u64) -> ([u32; STUB_WORDS], bool) {
    let (target, link) = branch_target(base + offset, word(memory, offset)).unwrap();
    let words = core::array::from_fn(|index| word(memory, target - base + 4 * index as u64));
    (words, link)
}

#[test]
fn a_kernel_toc_module_runs_on_the_kernel_toc_and_calls_out_without_restoring_it() {
    let bytes = object("toc kernel\n");
    let image = parse(&bytes).unwrap();
    let mut memory = vec![0xa5; image.memory_size()];
    let linked = image.link(&mut memory, BASE, KERNEL_TOC, &mut kernel).unwrap();
    assert_eq!(linked.toc, KERNEL_TOC, "the module's .TOC. is the kernel's TOC pointer");
    let text = linked.symbol("replacement").unwrap().address - BASE;
    // The global entry computes the kernel's TOC from r12 = the entry.
    let computed = (BASE + text).wrapping_add(pair_offset(word(&memory, text), word(&memory, text + 4), false) as u64);
    assert_eq!(computed, KERNEL_TOC);
    // Calls out: through stubs without the TOC save, to the kernel functions.
    let (stub, link) = stub_at_branch(&memory, BASE, text + CALL);
    assert!(link);
    assert_eq!(stub, kernel_toc_stub_words(KERNEL_CALLED));
    assert!(!stub.contains(&SAVE_TOC));
    assert_eq!(stub_target(&stub), Some(KERNEL_CALLED));
    assert_eq!(word(&memory, text + CALL + 4), NOP, "the nop after the call stays a nop");
    let (stub, link) = stub_at_branch(&memory, BASE, text + CALL_WITHOUT_NOP);
    assert!(link);
    assert_eq!(stub_target(&stub), Some(KERNEL_UNNOPPED));
    assert_eq!(word(&memory, text + CALL_WITHOUT_NOP + 4), ADDI_R3, "what follows a bare bl is left alone");
    let (stub, link) = stub_at_branch(&memory, BASE, text + TAIL_CALL);
    assert!(!link, "a tail call stays a b");
    assert_eq!(stub, kernel_toc_stub_words(KERNEL_TAIL));
    // The .toc entry, reached from the kernel's TOC pointer, holds the kernel static's address.
    let reached =
        KERNEL_TOC
            .wrapping_add(pair_offset(word(&memory, text + TOC_LOAD), word(&memory, text + TOC_LOAD + 4), true) as u64);
    let entry = (reached - BASE) as usize;
    assert_eq!(u64::from_le_bytes(memory[entry..entry + 8].try_into().unwrap()), KERNEL_STATIC);
    assert_eq!(
        linked.sections.iter().find(|section| section.name == ".toc").unwrap().address,
        reached,
        "the .toc entry itself"
    );
}

#[test]
fn without_the_line_the_same_module_is_refused_as_before() {
    // Its own TOC: the bare bl cannot restore it.
    match parse(&object("")) {
        Err(ModuleError::MissingNop { symbol, found, .. }) => {
            assert_eq!((symbol.as_str(), found), ("kernel_unnopped", Some(ADDI_R3)));
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
}

#[test]
fn a_kernel_toc_module_out_of_the_kernel_toc_reach_is_refused_clearly() {
    let bytes = object("toc kernel\n");
    let image = parse(&bytes).unwrap();
    let mut memory = vec![0; image.memory_size()];
    let far = (KERNEL_TOC + (3 << 30)) & !0xffff;
    let error = image.link(&mut memory, far, KERNEL_TOC, &mut kernel).unwrap_err();
    assert!(matches!(error, ModuleError::KernelTocOutOfReach { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains("toc kernel") && message.contains("2 GiB"), "{message}");
    // Just inside the reach, it links.
    let near = (KERNEL_TOC + (1 << 30)) & !0xffff;
    image.link(&mut memory, near, KERNEL_TOC, &mut kernel).unwrap();
}

#[test]
fn a_kernel_toc_module_may_not_call_a_target_modules_function() {
    // That function's global entry sets r2 to its module's TOC, which no stub would restore.
    let bytes = object_calling("toc kernel\n", ".klp.sym.hello-module.hello_module_message,0");
    let error = parse(&bytes).err().map(|error| error.to_string()).unwrap_or_else(|| {
        let image = parse(&bytes).unwrap();
        let mut memory = vec![0; image.memory_size()];
        image.link(&mut memory, BASE, KERNEL_TOC, &mut |_| Some(0x4000_0000)).unwrap_err().to_string()
    });
    assert!(error.contains("target module"), "{error}");
    // The kernel's own symbols by klp name are fine, and so is the same call without `toc kernel`.
    let kernel_bytes = object_calling("toc kernel\n", ".klp.sym.vmlinux.kernel_called,0");
    let image = parse(&kernel_bytes).unwrap();
    let mut memory = vec![0; image.memory_size()];
    image.link(&mut memory, BASE, KERNEL_TOC, &mut |name| kernel(name).or(Some(KERNEL_CALLED))).unwrap();
}
