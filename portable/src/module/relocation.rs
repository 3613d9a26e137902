//! R_PPC64_* relocations: their names, and the arithmetic of the ones a patch module uses.
//!
//! ELFv2 ABI, chapter 3.5. `S` is the symbol's address, `A` the addend, `P`
//! the address of the patched field and `TOC` the module's TOC pointer
//! (`.TOC.`). A little-endian object's relocation offset points at the field
//! itself: for a 16-bit immediate, at the low half of the instruction word.

use core::fmt;

/// No relocation.
pub const R_PPC64_NONE: u32 = 0;
/// `S + A`, 32 bits, must fit unsigned.
pub const R_PPC64_ADDR32: u32 = 1;
/// `S + A - P` into the LI field of `b`/`bl`: 26-bit signed, multiple of 4.
pub const R_PPC64_REL24: u32 = 10;
/// `S + A - P`, 32 bits, must fit signed.
pub const R_PPC64_REL32: u32 = 26;
/// `S + A`, 64 bits.
pub const R_PPC64_ADDR64: u32 = 38;
/// `S + A - P`, 64 bits.
pub const R_PPC64_REL64: u32 = 44;
/// `#lo(S + A - TOC)`.
pub const R_PPC64_TOC16_LO: u32 = 48;
/// `#ha(S + A - TOC)`.
pub const R_PPC64_TOC16_HA: u32 = 50;
/// `S + A - TOC` into a DS field: 16-bit signed, multiple of 4.
pub const R_PPC64_TOC16_DS: u32 = 63;
/// `#lo(S + A - TOC)` into a DS field: multiple of 4.
pub const R_PPC64_TOC16_LO_DS: u32 = 64;
/// `#lo(S + A - P)`.
pub const R_PPC64_REL16_LO: u32 = 250;
/// `#ha(S + A - P)`.
pub const R_PPC64_REL16_HA: u32 = 252;

/// The relocation types [`link`](super::ModuleImage::link) applies (`R_PPC64_NONE` is skipped).
pub const SUPPORTED: [u32; 12] = [
    R_PPC64_NONE,
    R_PPC64_ADDR32,
    R_PPC64_REL24,
    R_PPC64_REL32,
    R_PPC64_ADDR64,
    R_PPC64_REL64,
    R_PPC64_TOC16_LO,
    R_PPC64_TOC16_HA,
    R_PPC64_TOC16_DS,
    R_PPC64_TOC16_LO_DS,
    R_PPC64_REL16_LO,
    R_PPC64_REL16_HA,
];

/// Mask of the LI field (and the two zero bits below it) of an I-form branch.
pub(super) const BRANCH_FIELD: u32 = 0x03ff_fffc;

/// The name of relocation type `kind` (`R_PPC64_...`), if the ABI defines one.
pub fn relocation_name(kind: u32) -> Option<&'static str> {
    Some(match kind {
        0 => "R_PPC64_NONE",
        1 => "R_PPC64_ADDR32",
        2 => "R_PPC64_ADDR24",
        3 => "R_PPC64_ADDR16",
        4 => "R_PPC64_ADDR16_LO",
        5 => "R_PPC64_ADDR16_HI",
        6 => "R_PPC64_ADDR16_HA",
        7 => "R_PPC64_ADDR14",
        8 => "R_PPC64_ADDR14_BRTAKEN",
        9 => "R_PPC64_ADDR14_BRNTAKEN",
        10 => "R_PPC64_REL24",
        11 => "R_PPC64_REL14",
        12 => "R_PPC64_REL14_BRTAKEN",
        13 => "R_PPC64_REL14_BRNTAKEN",
        14 => "R_PPC64_GOT16",
        15 => "R_PPC64_GOT16_LO",
        16 => "R_PPC64_GOT16_HI",
        17 => "R_PPC64_GOT16_HA",
        19 => "R_PPC64_COPY",
        20 => "R_PPC64_GLOB_DAT",
        21 => "R_PPC64_JMP_SLOT",
        22 => "R_PPC64_RELATIVE",
        24 => "R_PPC64_UADDR32",
        25 => "R_PPC64_UADDR16",
        26 => "R_PPC64_REL32",
        27 => "R_PPC64_PLT32",
        28 => "R_PPC64_PLTREL32",
        29 => "R_PPC64_PLT16_LO",
        30 => "R_PPC64_PLT16_HI",
        31 => "R_PPC64_PLT16_HA",
        33 => "R_PPC64_SECTOFF",
        34 => "R_PPC64_SECTOFF_LO",
        35 => "R_PPC64_SECTOFF_HI",
        36 => "R_PPC64_SECTOFF_HA",
        37 => "R_PPC64_ADDR30",
        38 => "R_PPC64_ADDR64",
        39 => "R_PPC64_ADDR16_HIGHER",
        40 => "R_PPC64_ADDR16_HIGHERA",
        41 => "R_PPC64_ADDR16_HIGHEST",
        42 => "R_PPC64_ADDR16_HIGHESTA",
        43 => "R_PPC64_UADDR64",
        44 => "R_PPC64_REL64",
        45 => "R_PPC64_PLT64",
        46 => "R_PPC64_PLTREL64",
        47 => "R_PPC64_TOC16",
        48 => "R_PPC64_TOC16_LO",
        49 => "R_PPC64_TOC16_HI",
        50 => "R_PPC64_TOC16_HA",
        51 => "R_PPC64_TOC",
        52 => "R_PPC64_PLTGOT16",
        53 => "R_PPC64_PLTGOT16_LO",
        54 => "R_PPC64_PLTGOT16_HI",
        55 => "R_PPC64_PLTGOT16_HA",
        56 => "R_PPC64_ADDR16_DS",
        57 => "R_PPC64_ADDR16_LO_DS",
        58 => "R_PPC64_GOT16_DS",
        59 => "R_PPC64_GOT16_LO_DS",
        60 => "R_PPC64_PLT16_LO_DS",
        61 => "R_PPC64_SECTOFF_DS",
        62 => "R_PPC64_SECTOFF_LO_DS",
        63 => "R_PPC64_TOC16_DS",
        64 => "R_PPC64_TOC16_LO_DS",
        65 => "R_PPC64_PLTGOT16_DS",
        66 => "R_PPC64_PLTGOT16_LO_DS",
        67 => "R_PPC64_TLS",
        68 => "R_PPC64_DTPMOD64",
        69 => "R_PPC64_TPREL16",
        70 => "R_PPC64_TPREL16_LO",
        71 => "R_PPC64_TPREL16_HI",
        72 => "R_PPC64_TPREL16_HA",
        73 => "R_PPC64_TPREL64",
        74 => "R_PPC64_DTPREL16",
        75 => "R_PPC64_DTPREL16_LO",
        76 => "R_PPC64_DTPREL16_HI",
        77 => "R_PPC64_DTPREL16_HA",
        78 => "R_PPC64_DTPREL64",
        79 => "R_PPC64_GOT_TLSGD16",
        80 => "R_PPC64_GOT_TLSGD16_LO",
        81 => "R_PPC64_GOT_TLSGD16_HI",
        82 => "R_PPC64_GOT_TLSGD16_HA",
        83 => "R_PPC64_GOT_TLSLD16",
        84 => "R_PPC64_GOT_TLSLD16_LO",
        85 => "R_PPC64_GOT_TLSLD16_HI",
        86 => "R_PPC64_GOT_TLSLD16_HA",
        87 => "R_PPC64_GOT_TPREL16_DS",
        88 => "R_PPC64_GOT_TPREL16_LO_DS",
        89 => "R_PPC64_GOT_TPREL16_HI",
        90 => "R_PPC64_GOT_TPREL16_HA",
        91 => "R_PPC64_GOT_DTPREL16_DS",
        92 => "R_PPC64_GOT_DTPREL16_LO_DS",
        93 => "R_PPC64_GOT_DTPREL16_HI",
        94 => "R_PPC64_GOT_DTPREL16_HA",
        95 => "R_PPC64_TPREL16_DS",
        96 => "R_PPC64_TPREL16_LO_DS",
        97 => "R_PPC64_TPREL16_HIGHER",
        98 => "R_PPC64_TPREL16_HIGHERA",
        99 => "R_PPC64_TPREL16_HIGHEST",
        100 => "R_PPC64_TPREL16_HIGHESTA",
        101 => "R_PPC64_DTPREL16_DS",
        102 => "R_PPC64_DTPREL16_LO_DS",
        103 => "R_PPC64_DTPREL16_HIGHER",
        104 => "R_PPC64_DTPREL16_HIGHERA",
        105 => "R_PPC64_DTPREL16_HIGHEST",
        106 => "R_PPC64_DTPREL16_HIGHESTA",
        107 => "R_PPC64_TLSGD",
        108 => "R_PPC64_TLSLD",
        109 => "R_PPC64_TOCSAVE",
        110 => "R_PPC64_ADDR16_HIGH",
        111 => "R_PPC64_ADDR16_HIGHA",
        112 => "R_PPC64_TPREL16_HIGH",
        113 => "R_PPC64_TPREL16_HIGHA",
        114 => "R_PPC64_DTPREL16_HIGH",
        115 => "R_PPC64_DTPREL16_HIGHA",
        116 => "R_PPC64_REL24_NOTOC",
        117 => "R_PPC64_ADDR64_LOCAL",
        118 => "R_PPC64_ENTRY",
        119 => "R_PPC64_PLTSEQ",
        120 => "R_PPC64_PLTCALL",
        121 => "R_PPC64_PLTSEQ_NOTOC",
        122 => "R_PPC64_PLTCALL_NOTOC",
        123 => "R_PPC64_PCREL_OPT",
        124 => "R_PPC64_REL24_P9NOTOC",
        128 => "R_PPC64_D34",
        129 => "R_PPC64_D34_LO",
        130 => "R_PPC64_D34_HI30",
        131 => "R_PPC64_D34_HA30",
        132 => "R_PPC64_PCREL34",
        133 => "R_PPC64_GOT_PCREL34",
        134 => "R_PPC64_PLT_PCREL34",
        135 => "R_PPC64_PLT_PCREL34_NOTOC",
        136 => "R_PPC64_ADDR16_HIGHER34",
        137 => "R_PPC64_ADDR16_HIGHERA34",
        138 => "R_PPC64_ADDR16_HIGHEST34",
        139 => "R_PPC64_ADDR16_HIGHESTA34",
        140 => "R_PPC64_REL16_HIGHER34",
        141 => "R_PPC64_REL16_HIGHERA34",
        142 => "R_PPC64_REL16_HIGHEST34",
        143 => "R_PPC64_REL16_HIGHESTA34",
        144 => "R_PPC64_D28",
        145 => "R_PPC64_PCREL28",
        146 => "R_PPC64_TPREL34",
        147 => "R_PPC64_DTPREL34",
        148 => "R_PPC64_GOT_TLSGD_PCREL34",
        149 => "R_PPC64_GOT_TLSLD_PCREL34",
        150 => "R_PPC64_GOT_TPREL_PCREL34",
        151 => "R_PPC64_GOT_DTPREL_PCREL34",
        240 => "R_PPC64_REL16_HIGH",
        241 => "R_PPC64_REL16_HIGHA",
        242 => "R_PPC64_REL16_HIGHER",
        243 => "R_PPC64_REL16_HIGHERA",
        244 => "R_PPC64_REL16_HIGHEST",
        245 => "R_PPC64_REL16_HIGHESTA",
        246 => "R_PPC64_REL16DX_HA",
        247 => "R_PPC64_JMP_IREL",
        248 => "R_PPC64_IRELATIVE",
        249 => "R_PPC64_REL16",
        250 => "R_PPC64_REL16_LO",
        251 => "R_PPC64_REL16_HI",
        252 => "R_PPC64_REL16_HA",
        253 => "R_PPC64_GNU_VTINHERIT",
        254 => "R_PPC64_GNU_VTENTRY",
        _ => return None,
    })
}

/// Displays a relocation type as `R_PPC64_NAME (type N)`, or `type N` if it has no name.
pub(super) struct Kind(pub u32);

impl fmt::Display for Kind {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match relocation_name(self.0) {
            Some(name) => write!(formatter, "{name} (type {})", self.0),
            None => write!(formatter, "type {}", self.0),
        }
    }
}

/// How many bytes a supported relocation writes, or `None` if the type is not supported.
pub(super) fn width(kind: u32) -> Option<u64> {
    match kind {
        R_PPC64_NONE => Some(0),
        R_PPC64_ADDR64 | R_PPC64_REL64 => Some(8),
        R_PPC64_ADDR32 | R_PPC64_REL32 | R_PPC64_REL24 => Some(4),
        R_PPC64_TOC16_LO | R_PPC64_TOC16_HA | R_PPC64_TOC16_DS | R_PPC64_TOC16_LO_DS => Some(2),
        R_PPC64_REL16_LO | R_PPC64_REL16_HA => Some(2),
        _ => None,
    }
}

/// `#ha(value)`: the high half, adjusted for the sign of the low half that is added to it.
pub fn high_adjusted(value: u64) -> u16 {
    (value.wrapping_add(0x8000) >> 16) as u16
}

/// `#lo(value)`: the low 16 bits.
pub fn low(value: u64) -> u16 {
    value as u16
}

/// What goes into the patched field, computed from `S`, `A`, `P` and `TOC`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Field {
    /// A 16-bit field (D form).
    Half(u16),
    /// A DS-form field: the value's low 2 bits are zero and the instruction's are kept.
    HalfDs(u16),
    /// A 32-bit word.
    Word(u32),
    /// A 64-bit doubleword.
    Double(u64),
    /// The LI field of a branch (bits under [`BRANCH_FIELD`]); the rest of the word is kept.
    Branch(u32),
    /// Nothing to write (`R_PPC64_NONE`).
    Nothing,
}

/// Why a value does not fit its field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fault {
    /// Out of the field's range.
    Overflow(u64),
    /// Not a multiple of 4 where the field needs one.
    Misaligned(u64),
    /// A type with no arithmetic here.
    Unsupported,
}

/// `value` must fit the signed 32-bit range once `#ha` has added 0x8000.
fn check_high_adjusted(value: u64) -> Result<Field, Fault> {
    match (value as i64).checked_add(0x8000).map(i32::try_from) {
        Some(Ok(_)) => Ok(Field::Half(high_adjusted(value))),
        _ => Err(Fault::Overflow(value)),
    }
}

/// `value` must be a multiple of 4 (DS and branch fields).
fn check_aligned(value: u64) -> Result<(), Fault> {
    if value.is_multiple_of(4) { Ok(()) } else { Err(Fault::Misaligned(value)) }
}

/// Computes the field of relocation `kind` from the symbol's address `symbol` (for
/// R_PPC64_REL24 the branch target: local entry point or stub), `addend`, the field's
/// address `place` and the module's `toc`. Every range and alignment is checked.
pub(super) fn compute(kind: u32, symbol: u64, addend: i64, place: u64, toc: u64) -> Result<Field, Fault> {
    let absolute = symbol.wrapping_add(addend as u64);
    let relative = absolute.wrapping_sub(place);
    let toc_relative = absolute.wrapping_sub(toc);
    match kind {
        R_PPC64_NONE => Ok(Field::Nothing),
        R_PPC64_ADDR64 => Ok(Field::Double(absolute)),
        R_PPC64_REL64 => Ok(Field::Double(relative)),
        R_PPC64_ADDR32 => u32::try_from(absolute).map(Field::Word).map_err(|_| Fault::Overflow(absolute)),
        R_PPC64_REL32 => match i32::try_from(relative as i64) {
            Ok(value) => Ok(Field::Word(value as u32)),
            Err(_) => Err(Fault::Overflow(relative)),
        },
        R_PPC64_REL16_HA => check_high_adjusted(relative),
        R_PPC64_REL16_LO => Ok(Field::Half(low(relative))),
        R_PPC64_TOC16_HA => check_high_adjusted(toc_relative),
        R_PPC64_TOC16_LO => Ok(Field::Half(low(toc_relative))),
        R_PPC64_TOC16_LO_DS => {
            check_aligned(toc_relative)?;
            Ok(Field::HalfDs(low(toc_relative)))
        }
        R_PPC64_TOC16_DS => {
            check_aligned(toc_relative)?;
            match i16::try_from(toc_relative as i64) {
                Ok(value) => Ok(Field::HalfDs(value as u16)),
                Err(_) => Err(Fault::Overflow(toc_relative)),
            }
        }
        R_PPC64_REL24 => {
            check_aligned(relative)?;
            let displacement = relative as i64;
            if !(-(1 << 25)..(1 << 25)).contains(&displacement) {
                return Err(Fault::Overflow(relative));
            }
            Ok(Field::Branch(relative as u32 & BRANCH_FIELD))
        }
        _ => Err(Fault::Unsupported),
    }
}

/// Writes `field` into `bytes` (the patched bytes onwards, little-endian), keeping the
/// instruction bits a DS or branch field does not own. Returns false, writing nothing,
/// if `bytes` is too short.
pub(super) fn write(field: Field, bytes: &mut [u8]) -> bool {
    fn put<const N: usize>(bytes: &mut [u8], value: [u8; N]) -> bool {
        match bytes.get_mut(..N) {
            Some(target) => {
                target.copy_from_slice(&value);
                true
            }
            None => false,
        }
    }
    fn get<const N: usize>(bytes: &[u8]) -> Option<[u8; N]> {
        bytes.get(..N)?.try_into().ok()
    }
    match field {
        Field::Nothing => true,
        Field::Half(value) => put(bytes, value.to_le_bytes()),
        Field::HalfDs(value) => match get::<2>(bytes) {
            Some(old) => put(bytes, ((value & !3) | (u16::from_le_bytes(old) & 3)).to_le_bytes()),
            None => false,
        },
        Field::Word(value) => put(bytes, value.to_le_bytes()),
        Field::Double(value) => put(bytes, value.to_le_bytes()),
        Field::Branch(value) => match get::<4>(bytes) {
            Some(old) => put(bytes, ((u32::from_le_bytes(old) & !BRANCH_FIELD) | value).to_le_bytes()),
            None => false,
        },
    }
}
