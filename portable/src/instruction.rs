//! Power ISA instruction words that the kernel writes or checks at run time.
//!
//! Each function returns the 32-bit instruction word as the CPU sees it (the
//! kernel is little-endian, so a `u32` store writes it correctly). Branch
//! encodings check their range and alignment instead of truncating silently.

/// `nop` (`ori r0,r0,0`).
pub const NOP: u32 = 0x6000_0000;
/// `mflr r0`: the first instruction of an -mprofile-kernel entry site.
pub const MFLR_R0: u32 = 0x7c08_02a6;
/// `blr`.
pub const BLR: u32 = 0x4e80_0020;
/// `trap` (`tw 31,0,0`): an unconditional program check.
pub const TRAP: u32 = 0x7fe0_0008;

/// Largest forward displacement of an I-form branch (`b`/`bl`): 32 MiB - 4.
pub const BRANCH_MAX_FORWARD: i64 = (1 << 25) - 4;
/// Largest backward displacement of an I-form branch: -32 MiB.
pub const BRANCH_MAX_BACKWARD: i64 = -(1 << 25);

/// Why a branch could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BranchError {
    /// The source or target address is not a multiple of 4.
    Misaligned,
    /// The target lies more than 32 MiB away from the branch.
    OutOfRange { displacement: i64 },
}

impl core::fmt::Display for BranchError {
    fn fmt(&self, formatter: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BranchError::Misaligned => write!(formatter, "branch source or target not 4-byte aligned"),
            BranchError::OutOfRange { displacement } => {
                write!(formatter, "branch displacement {displacement:#x} beyond +/-32 MiB")
            }
        }
    }
}

/// Encodes `b target` (`link == false`) or `bl target` placed at `source`.
pub fn branch(source: u64, target: u64, link: bool) -> Result<u32, BranchError> {
    if !source.is_multiple_of(4) || !target.is_multiple_of(4) {
        return Err(BranchError::Misaligned);
    }
    let displacement = target.wrapping_sub(source) as i64;
    if !(BRANCH_MAX_BACKWARD..=BRANCH_MAX_FORWARD).contains(&displacement) {
        return Err(BranchError::OutOfRange { displacement });
    }
    // Opcode 18, LI = displacement >> 2 in bits 6..29, AA = 0, LK = link.
    Ok(0x4800_0000 | (displacement as u32 & 0x03ff_fffc) | link as u32)
}

/// If `word` is an I-form relative branch (`b`/`bl`, not absolute) placed at
/// `source`, returns its target and whether it links.
pub fn branch_target(source: u64, word: u32) -> Option<(u64, bool)> {
    if word >> 26 != 18 || word & 2 != 0 {
        return None;
    }
    // Sign-extend the 26-bit displacement field.
    let displacement = ((word & 0x03ff_fffc) << 6) as i32 >> 6;
    Some((source.wrapping_add(displacement as i64 as u64), word & 1 != 0))
}

/// `mtspr spr, rs` (operands in assembler order).
pub const fn mtspr(spr: u32, rs: u32) -> u32 {
    0x7c00_03a6 | (rs << 21) | ((spr & 0x1f) << 16) | ((spr >> 5) << 11)
}

/// `mfspr rt, spr` (operands in assembler order).
pub const fn mfspr(rt: u32, spr: u32) -> u32 {
    0x7c00_02a6 | (rt << 21) | ((spr & 0x1f) << 16) | ((spr >> 5) << 11)
}

/// `li rt, value` (`addi rt, 0, value`).
pub const fn load_immediate(rt: u32, value: i16) -> u32 {
    0x3800_0000 | (rt << 21) | (value as u16 as u32)
}

/// `mfmsr rt`.
pub const fn mfmsr(rt: u32) -> u32 {
    0x7c00_00a6 | (rt << 21)
}

/// `mtmsrd rs, l` (l = 1 changes only MSR[EE] and MSR[RI]).
pub const fn mtmsrd(rs: u32, l: u32) -> u32 {
    0x7c00_0164 | (rs << 21) | (l << 16)
}

/// `xori ra, rs, value`.
pub const fn xor_immediate(ra: u32, rs: u32, value: u16) -> u32 {
    0x6800_0000 | (rs << 21) | (ra << 16) | value as u32
}

/// `addi rt, ra, value`.
pub const fn add_immediate(rt: u32, ra: u32, value: i16) -> u32 {
    0x3800_0000 | (rt << 21) | (ra << 16) | (value as u16 as u32)
}

/// `bcl 20,31,$+4`: the "branch always and link to the next instruction" idiom
/// used to read the program counter.
pub const BCL_NEXT: u32 = 0x429f_0005;

/// `rfid`.
pub const RFID: u32 = 0x4c00_0024;

/// Special purpose register numbers.
pub mod spr {
    pub const LR: u32 = 8;
    pub const CTR: u32 = 9;
    pub const SRR0: u32 = 26;
    pub const SRR1: u32 = 27;
    pub const SPRG0: u32 = 272;
    pub const SPRG1: u32 = 273;
    pub const SPRG2: u32 = 274;
    pub const SPRG3: u32 = 275;
}

/// `addis r2,r12,HIGH` and `addi r2,r2,LOW` with their immediates masked off:
/// the ELFv2 global entry prologue that computes a function's TOC from r12.
const TOC_SETUP_HIGH: u32 = 0x3c4c_0000;
const TOC_SETUP_LOW: u32 = 0x3842_0000;

/// Bytes from a function's global entry point to its local entry point, given
/// its first two instructions: 8 when they compute the TOC from r12, else 0.
/// A caller that already holds the kernel TOC in r2 branches to the local entry.
pub fn local_entry_offset(first: u32, second: u32) -> u64 {
    if first & 0xffff_0000 == TOC_SETUP_HIGH && second & 0xffff_0000 == TOC_SETUP_LOW { 8 } else { 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_encodings_match_the_assembler() {
        // Words taken from `powerpc64le-linux-gnu-objdump` of the same mnemonics.
        assert_eq!(mfspr(0, spr::LR), MFLR_R0);
        assert_eq!(mtspr(spr::SPRG2, 12), 0x7d92_43a6);
        assert_eq!(mfspr(12, spr::SPRG2), 0x7d92_42a6);
        assert_eq!(mtspr(spr::SRR0, 10), 0x7d5a_03a6);
        assert_eq!(mtspr(spr::SRR1, 11), 0x7d7b_03a6);
        assert_eq!(mfspr(10, spr::LR), 0x7d48_02a6);
        assert_eq!(mfmsr(11), 0x7d60_00a6);
        assert_eq!(mtmsrd(10, 1), 0x7d41_0164);
        assert_eq!(xor_immediate(11, 11, 1), 0x696b_0001);
        assert_eq!(load_immediate(10, 0), 0x3940_0000);
        assert_eq!(load_immediate(12, 0x700), 0x3980_0700);
        assert_eq!(add_immediate(10, 10, 20), 0x394a_0014);
    }

    #[test]
    fn branch_boundaries() {
        let source = 0x0100_0000;
        // Largest forward and backward displacements encode and decode back.
        for displacement in [BRANCH_MAX_FORWARD, BRANCH_MAX_BACKWARD, 0, 4, -4] {
            let target = (source as i64 + displacement) as u64;
            let word = branch(source, target, true).unwrap();
            assert_eq!(branch_target(source, word), Some((target, true)), "{displacement:#x}");
        }
        // One word past either end is refused.
        let too_far = (source as i64 + BRANCH_MAX_FORWARD + 4) as u64;
        assert_eq!(
            branch(source, too_far, false),
            Err(BranchError::OutOfRange { displacement: BRANCH_MAX_FORWARD + 4 })
        );
        let too_far_back = (source as i64 + BRANCH_MAX_BACKWARD - 4) as u64;
        assert!(matches!(branch(source, too_far_back, false), Err(BranchError::OutOfRange { .. })));
        // Misaligned source or target.
        assert_eq!(branch(source + 2, source + 64, false), Err(BranchError::Misaligned));
        assert_eq!(branch(source, source + 65, false), Err(BranchError::Misaligned));
    }

    #[test]
    fn local_entry_follows_the_toc_setup_pair() {
        // addis r2,r12,7 ; addi r2,r2,3336 (from the kernel's own text)
        assert_eq!(local_entry_offset(0x3c4c_0007, 0x3842_0d08), 8);
        assert_eq!(local_entry_offset(NOP, NOP), 0);
        assert_eq!(local_entry_offset(0x3c4c_0007, NOP), 0);
    }

    #[test]
    fn branch_words() {
        assert_eq!(branch(0x1000, 0x1008, false), Ok(0x4800_0008));
        assert_eq!(branch(0x1000, 0x0ffc, true), Ok(0x4bff_fffd));
        assert_eq!(branch_target(0x1000, NOP), None);
        // An absolute branch (AA = 1) is not a relative branch.
        assert_eq!(branch_target(0x1000, 0x4800_000a), None);
    }
}
