//! The real-mode exception vectors at physical 0x100..0x1000, written at boot, and their numbers.
//!
//! The kernel runs at 0x400000, within a relative branch's reach of the vector
//! area, so each slot is three instructions generated here:
//! `mtsprg2 r12; li r12,VECTOR; b exception_common`.
use super::{cache, exceptions::exception_common};
use portable::instruction::{self, spr};

/// Vector numbers (`PtRegs::trap`).
pub const SYSTEM_RESET: u64 = 0x100;
pub const MACHINE_CHECK: u64 = 0x200;
pub const DATA_STORAGE: u64 = 0x300;
pub const DATA_SEGMENT: u64 = 0x380;
pub const INSTRUCTION_STORAGE: u64 = 0x400;
pub const INSTRUCTION_SEGMENT: u64 = 0x480;
pub const EXTERNAL: u64 = 0x500;
pub const ALIGNMENT: u64 = 0x600;
pub const PROGRAM: u64 = 0x700;
pub const FLOATING_POINT_UNAVAILABLE: u64 = 0x800;
pub const DECREMENTER: u64 = 0x900;
pub const SYSTEM_CALL: u64 = 0xc00;
pub const TRACE: u64 = 0xd00;

/// A readable name for a vector.
pub fn name(trap: u64) -> &'static str {
    match trap {
        SYSTEM_RESET => "system reset",
        MACHINE_CHECK => "machine check",
        DATA_STORAGE => "data storage",
        DATA_SEGMENT => "data segment",
        INSTRUCTION_STORAGE => "instruction storage",
        INSTRUCTION_SEGMENT => "instruction segment",
        EXTERNAL => "external interrupt",
        ALIGNMENT => "alignment",
        PROGRAM => "program check",
        FLOATING_POINT_UNAVAILABLE => "floating point unavailable",
        DECREMENTER => "decrementer",
        SYSTEM_CALL => "system call",
        TRACE => "trace",
        _ => "unknown",
    }
}

/// First and last vector slot; slots are 0x20 bytes apart (0x100, 0x120, ...).
const FIRST_VECTOR: u64 = 0x100;
const END_OF_VECTORS: u64 = 0x1000;
const SLOT: u64 = 0x20;

/// Writes every vector slot and makes the instruction cache see them.
///
/// # Safety
/// Must run once at boot, after the firmware is no longer needed (it lives in
/// low memory), with interrupts off.
pub unsafe fn install() {
    let target = exception_common as *const () as u64;
    let mut vector = FIRST_VECTOR;
    while vector < END_OF_VECTORS {
        let slot = vector as *mut u32;
        let words = [
            instruction::mtspr(spr::SPRG2, 12),
            instruction::load_immediate(12, vector as i16),
            instruction::branch(vector + 8, target, false).expect("vectors are within branch reach of the kernel"),
        ];
        for (index, word) in words.iter().enumerate() {
            // Safety: low memory below the kernel is RAM reserved for the vectors.
            unsafe { slot.add(index).write_volatile(*word) };
        }
        cache::synchronize_instructions(vector, 12);
        vector += SLOT;
    }
}
