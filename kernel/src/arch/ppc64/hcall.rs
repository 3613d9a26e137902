//! Hypervisor calls (PAPR `sc 1`): r3 = call number, arguments in r4.., results back in r3..
use macros::notrace;

/// H_BUSY: try again.
pub const BUSY: i64 = 1;
/// H_SUCCESS.
pub const SUCCESS: i64 = 0;
/// H_CEDE: idle this CPU until an interrupt arrives (sets MSR[EE]).
pub const CEDE: u64 = 0xe0;
/// H_CONFER: give the rest of this CPU's time to the other CPUs (target -1: all of them); MSR[EE] is left as it is.
pub const CONFER: u64 = 0xe4;
/// H_GET_TERM_CHAR: read up to 16 bytes from a virtual terminal.
pub const GET_TERM_CHAR: u64 = 0x54;
/// H_PUT_TERM_CHAR: write up to 16 bytes to a virtual terminal.
pub const PUT_TERM_CHAR: u64 = 0x58;
/// H_SET_MODE: here, to make interrupts run little-endian.
pub const SET_MODE: u64 = 0x31c;
/// KVMPPC_H_RTAS: QEMU's entry for RTAS calls.
pub const RTAS: u64 = 0xf000;

/// Returns r3 (the status) and r4..r7 (the results).
///
/// Register contract of `sc 1` (PAPR, LoPAPR 14.5.3; Linux's
/// Documentation/arch/powerpc/papr_hcalls.rst): on entry r3 = the call
/// number, r4.. = the arguments. The hypervisor may change r0, r3-r12,
/// CTR, XER and CR fields 0, 1, 5, 6, 7; it preserves r1, r2, r13-r31 and CR
/// fields 2-4. LR is declared clobbered as well, though the hypervisor keeps
/// it in practice (Linux's hvCall.S returns with `blr` right after `sc 1`):
/// a conservative choice that costs nothing, since a function making a call
/// has saved LR already. Every volatile register is declared below, so the
/// compiler keeps nothing in one of them across the call (checked on the
/// host by xtask's `hcall_contract` test).
#[notrace]
pub fn hcall(number: u64, arguments: [u64; 6]) -> (i64, [u64; 4]) {
    let status: u64;
    let mut results = [0u64; 4];
    // Safety: `sc 1` enters the hypervisor, which reads r3..r10 and may change
    // only the registers PAPR makes volatile; all of them are declared as
    // outputs or clobbers.
    unsafe {
        core::arch::asm!(
            "sc 1",
            inlateout("r3") number => status,
            inlateout("r4") arguments[0] => results[0],
            inlateout("r5") arguments[1] => results[1],
            inlateout("r6") arguments[2] => results[2],
            inlateout("r7") arguments[3] => results[3],
            inlateout("r8") arguments[4] => _,
            inlateout("r9") arguments[5] => _,
            out("r10") _, out("r11") _, out("r12") _, out("r0") _,
            out("lr") _, out("ctr") _, out("xer") _,
            out("cr0") _, out("cr1") _, out("cr5") _, out("cr6") _, out("cr7") _,
            options(nostack),
        );
    }
    (status as i64, results)
}

/// Makes every interrupt enter in little-endian mode (H_SET_MODE, resource 4).
#[notrace]
pub fn set_little_endian_interrupts() -> i64 {
    const MODE_FLAGS_LITTLE_ENDIAN: u64 = 1;
    const RESOURCE_INTERRUPT_ENDIANNESS: u64 = 4;
    hcall(SET_MODE, [MODE_FLAGS_LITTLE_ENDIAN, RESOURCE_INTERRUPT_ENDIANNESS, 0, 0, 0, 0]).0
}
