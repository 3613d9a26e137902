//! The words that make a direct-call livepatch trampoline call one replacement: its TOC, then its local entry.
//!
//! Every trampoline is a copy of one template (the kernel's
//! `livepatch_trampoline_template`) in which only three words differ: they
//! set r2 to the replacement C's TOC and branch-and-link to C's local entry,
//! so C skips its global entry's TOC set-up and no register or CTR has to
//! carry C's address. This module computes those three words from C's
//! address and its first two instructions (and, for the large code model's
//! entry, the doubleword before C); the kernel writes them.

use crate::instruction::{self, BranchError, MFLR_R0, NOP};

/// Words the template leaves to each trampoline, at its call offset.
pub const CALL_WORDS: usize = 3;

/// `addis r2,r12,HIGH` / `addi r2,r2,LOW`: the ELFv2 global entry's TOC set-up.
const TOC_SETUP_HIGH: u32 = 0x3c4c_0000;
const TOC_SETUP_LOW: u32 = 0x3842_0000;
/// `ld r2,-8(r12)` / `add r2,r2,r12`: the large code model's global entry,
/// whose TOC is C plus the doubleword just before C (`.TOC. - C`).
const LARGE_TOC_LOAD: u32 = 0xe84c_fff8;
const LARGE_TOC_ADD: u32 = 0x7c42_6214;
/// `lis r2,HIGH` (`addis r2,0,HIGH`) and `addi r2,r2,LOW`.
const LOAD_TOC_HIGH: u32 = 0x3c40_0000;
const LOAD_TOC_LOW: u32 = 0x3842_0000;

/// Why no trampoline can call a replacement (the function then keeps the
/// generic path through `ftrace_caller`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallError {
    /// C starts with neither a TOC set-up (the pair, or the large code
    /// model's `ld r2,-8(r12); add r2,r2,r12`) nor a patchable entry
    /// (`nop` or `mflr r0`, then `nop` or a `bl`): its TOC, if it needs one, cannot be known
    /// (another code model's set-up, say), so it must be entered at its
    /// global entry with r12 set, which a trampoline does not do.
    UnknownEntry { first: u32, second: u32 },
    /// C's TOC does not fit the two-instruction load (`lis`/`addi`: within
    /// 2 GiB of 0).
    TocOutOfRange { toc: u64 },
    /// C's local entry is beyond a `bl` from the trampoline (32 MiB).
    OutOfReach { local_entry: u64 },
}

impl core::fmt::Display for CallError {
    fn fmt(&self, formatter: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            CallError::UnknownEntry { first, second } => write!(
                formatter,
                "the replacement starts with {first:08x} {second:08x}: not a TOC set-up nor a patchable entry"
            ),
            CallError::TocOutOfRange { toc } => write!(formatter, "the replacement's TOC {toc:#x} is beyond lis/addi"),
            CallError::OutOfReach { local_entry } => {
                write!(formatter, "the replacement's local entry {local_entry:#x} is beyond a bl from the trampoline")
            }
        }
    }
}

/// Sign-extends a 16-bit immediate.
fn immediate(word: u32) -> i64 {
    i64::from(word as u16 as i16)
}

/// C's local entry and the TOC it expects there (None: C does not use a TOC),
/// from its global entry `replacement`, its first two words and, called only
/// for the large code model's entry, `toc_offset`: the doubleword at
/// `replacement - 8` (which that entry adds to C to find its TOC).
pub fn entry(
    replacement: u64,
    first: u32,
    second: u32,
    toc_offset: impl FnOnce() -> i64,
) -> Result<(u64, Option<u64>), CallError> {
    if first & 0xffff_0000 == TOC_SETUP_HIGH && second & 0xffff_0000 == TOC_SETUP_LOW {
        let toc = replacement.wrapping_add((immediate(first) << 16).wrapping_add(immediate(second)) as u64);
        return Ok((replacement + 8, Some(toc)));
    }
    if first == LARGE_TOC_LOAD && second == LARGE_TOC_ADD {
        return Ok((replacement + 8, Some(replacement.wrapping_add(toc_offset() as u64))));
    }
    let second_is_site =
        second == NOP || instruction::branch_target(replacement + 4, second).is_some_and(|(_, link)| link);
    if (first == NOP || first == MFLR_R0) && second_is_site {
        // A function without a TOC set-up starts with its patchable entry
        // (`nop; nop`, or `mflr r0` then `nop` or `bl` a stub): its global
        // and local entries are one, and it does not read r2 or r12 there.
        return Ok((replacement, None));
    }
    Err(CallError::UnknownEntry { first, second })
}

/// The three call words of a trampoline whose call words start at
/// `call_address`, for the replacement whose global entry is `replacement`
/// and whose first two words are `first` and `second` (`toc_offset`: see
/// [`entry`]): `lis r2,TOC@ha; addi r2,r2,TOC@l; bl LOCAL` (two nops
/// instead of the loads when C uses no TOC).
pub fn call_words(
    call_address: u64,
    replacement: u64,
    first: u32,
    second: u32,
    toc_offset: impl FnOnce() -> i64,
) -> Result<[u32; CALL_WORDS], CallError> {
    let (local_entry, toc) = entry(replacement, first, second, toc_offset)?;
    let branch_address = call_address + 8;
    let call = instruction::branch(branch_address, local_entry, true).map_err(|error| match error {
        BranchError::Misaligned | BranchError::OutOfRange { .. } => CallError::OutOfReach { local_entry },
    })?;
    let Some(toc) = toc else { return Ok([NOP, NOP, call]) };
    // lis sign-extends its immediate: the pair reaches [-2 GiB, 2 GiB - 32 KiB).
    if toc >= 0x7fff_8000 {
        return Err(CallError::TocOutOfRange { toc });
    }
    let low = toc as u16;
    let high = ((toc + 0x8000) >> 16) as u16;
    Ok([LOAD_TOC_HIGH | u32::from(high), LOAD_TOC_LOW | u32::from(low), call])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The doubleword before C, for entries that must not need it.
    fn unused() -> i64 {
        panic!("only the large code model's entry reads the doubleword before C")
    }

    /// What the words load into r2, as the CPU computes it.
    fn loaded_toc(words: [u32; CALL_WORDS]) -> u64 {
        let high = immediate(words[0]) << 16;
        high.wrapping_add(immediate(words[1])) as u64
    }

    #[test]
    fn the_toc_comes_from_the_global_entry_and_the_call_goes_to_the_local_entry() {
        // C at 0x50_0000 with `addis r2,r12,2; addi r2,r2,-0x7f00`: TOC = C + 0x2_0000 - 0x7f00.
        let (first, second) = (TOC_SETUP_HIGH | 2, TOC_SETUP_LOW | 0x8100);
        let replacement = 0x50_0000;
        let toc = replacement + 0x2_0000 - 0x7f00;
        assert_eq!(entry(replacement, first, second, unused), Ok((replacement + 8, Some(toc))));
        let call_address = 0x48_0040;
        let words = call_words(call_address, replacement, first, second, unused).unwrap();
        assert_eq!(loaded_toc(words), toc);
        assert_eq!(instruction::branch_target(call_address + 8, words[2]), Some((replacement + 8, true)));
        // The encodings the assembler gives `lis 2,0x52` and `addi 2,2,-0x7f00`.
        assert_eq!(words[0], 0x3c40_0052);
        assert_eq!(words[1], 0x3842_8100);
    }

    #[test]
    fn a_toc_whose_low_half_is_negative_rounds_the_high_half_up() {
        let replacement = 0x40_0000_u64;
        for toc in [0x40_8000_u64, 0x40_7fff, 0x1234_ffff, 0x7fff_7fff, 0x8000] {
            // The set-up pair C's compiler would emit for this TOC.
            let offset = toc.wrapping_sub(replacement);
            let high = (offset.wrapping_add(0x8000) >> 16) as u16;
            let (first, second) = (TOC_SETUP_HIGH | u32::from(high), TOC_SETUP_LOW | u32::from(offset as u16));
            assert_eq!(entry(replacement, first, second, unused), Ok((replacement + 8, Some(toc))), "{toc:#x}");
            let words = call_words(replacement - 0x100, replacement, first, second, unused).unwrap();
            assert_eq!(loaded_toc(words), toc, "{toc:#x}");
        }
    }

    #[test]
    fn a_function_without_a_toc_is_called_at_its_global_entry_with_r2_untouched() {
        for first in [NOP, MFLR_R0] {
            let words = call_words(0x40_0000, 0x40_1000, first, NOP, unused).unwrap();
            assert_eq!(words[..2], [NOP, NOP]);
            assert_eq!(instruction::branch_target(0x40_0008, words[2]), Some((0x40_1000, true)));
        }
    }

    #[test]
    fn a_patchable_entry_must_be_whole_to_count_as_no_toc() {
        // `mflr r0; bl stub` (a traced site) and `nop; nop` are entries...
        let site_call = instruction::branch(0x40_1004, 0x40_0100, true).unwrap();
        assert_eq!(entry(0x40_1000, MFLR_R0, site_call, unused), Ok((0x40_1000, None)));
        assert_eq!(entry(0x40_1000, NOP, NOP, unused), Ok((0x40_1000, None)));
        // ...a `nop` followed by a TOC load from r12 is not.
        assert_eq!(
            entry(0x40_1000, NOP, 0xe84c_fff8, unused),
            Err(CallError::UnknownEntry { first: NOP, second: 0xe84c_fff8 })
        );
        // Nor is a plain branch (no link) after `mflr r0`.
        let jump = instruction::branch(0x40_1004, 0x40_0100, false).unwrap();
        assert_eq!(
            entry(0x40_1000, MFLR_R0, jump, unused),
            Err(CallError::UnknownEntry { first: MFLR_R0, second: jump })
        );
    }

    #[test]
    fn what_no_trampoline_can_call_is_refused() {
        // Half of the large code model's entry is not one.
        assert_eq!(
            call_words(0x40_0000, 0x40_1000, LARGE_TOC_LOAD, NOP, unused),
            Err(CallError::UnknownEntry { first: LARGE_TOC_LOAD, second: NOP })
        );
        assert_eq!(
            call_words(0x40_0000, 0x40_1000, NOP, LARGE_TOC_ADD, unused),
            Err(CallError::UnknownEntry { first: NOP, second: LARGE_TOC_ADD })
        );
        let far = 0x40_0000 + (64 << 20);
        assert_eq!(
            call_words(0x40_0000, far, TOC_SETUP_HIGH, TOC_SETUP_LOW, unused),
            Err(CallError::OutOfReach { local_entry: far + 8 })
        );
        let high_toc = 0x7fff_8000;
        assert_eq!(
            call_words(high_toc - 0x100, high_toc, TOC_SETUP_HIGH, TOC_SETUP_LOW, unused),
            Err(CallError::TocOutOfRange { toc: high_toc })
        );
    }

    #[test]
    fn the_large_code_model_entry_finds_its_toc_in_the_doubleword_before_it() {
        // `ld r2,-8(r12); add r2,r2,r12` at C, and `.TOC. - C` in the 8 bytes before C.
        let replacement = 0x1234_5670_u64;
        for toc in [0x0068_07d8_u64, 0x1234_5670 + 0x10_0000, 0x7fff_0000] {
            let offset = toc.wrapping_sub(replacement) as i64;
            assert_eq!(
                entry(replacement, LARGE_TOC_LOAD, LARGE_TOC_ADD, || offset),
                Ok((replacement + 8, Some(toc))),
                "{toc:#x}"
            );
            let call_address = replacement - 0x1000;
            let words = call_words(call_address, replacement, LARGE_TOC_LOAD, LARGE_TOC_ADD, || offset).unwrap();
            assert_eq!(loaded_toc(words), toc, "{toc:#x}");
            assert_eq!(instruction::branch_target(call_address + 8, words[2]), Some((replacement + 8, true)));
        }
        // The assembler's encodings of the two instructions.
        assert_eq!((LARGE_TOC_LOAD, LARGE_TOC_ADD), (0xe84c_fff8, 0x7c42_6214));
    }
}
