//! The XICS interrupt presentation controller, driven by hcalls (PAPR's ICP): priorities, IPIs, accept and end of interrupt.
//!
//! Each CPU has one presentation server (its interrupt server number). The
//! hypervisor presents an interrupt to a CPU when its priority is more
//! favoured (numerically lower) than the CPU's current processor priority
//! (CPPR); the CPU then takes the external interrupt (0x500), reads the
//! interrupt source with H_XIRR (which also raises its CPPR to that
//! priority), and ends it with H_EOI (which restores the CPPR). An IPI is
//! the per-server source 2, raised with H_IPI(server, priority) and lowered
//! with H_IPI(server, 0xff). Linux: arch/powerpc/sysdev/xics/icp-hv.c.
use super::hcall::{self, hcall};
use macros::notrace;

/// H_EOI: end an interrupt (argument: the XIRR H_XIRR returned).
const EOI: u64 = 0x64;
/// H_CPPR: set this CPU's current processor priority.
const CPPR: u64 = 0x68;
/// H_IPI: set a server's IPI priority (0xff: no IPI).
const IPI: u64 = 0x6c;
/// H_XIRR: accept the most favoured pending interrupt; returns its XIRR.
const XIRR: u64 = 0x74;

/// The source number of an inter-processor interrupt.
pub const IPI_SOURCE: u32 = 2;
/// The priority IPIs are raised at (Linux's IPI_PRIORITY).
pub const IPI_PRIORITY: u64 = 4;
/// The least favoured priority: a CPU at this CPPR takes every interrupt,
/// and an IPI at it is no IPI.
pub const LEAST_FAVOURED: u64 = 0xff;

/// One accepted interrupt: the XIRR word (CPPR before the accept in the top
/// byte, the source in the low 24 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Xirr(pub u32);

impl Xirr {
    /// The interrupt source (0: nothing was pending).
    pub fn source(self) -> u32 {
        self.0 & 0x00ff_ffff
    }
}

/// Sets this CPU's priority: `LEAST_FAVOURED` to take every interrupt.
/// Every CPU must do it once, or it never takes an IPI.
#[notrace]
pub fn set_priority(priority: u64) -> i64 {
    hcall(CPPR, [priority, 0, 0, 0, 0, 0]).0
}

/// Raises an IPI at `server`.
#[notrace]
pub fn send_ipi(server: u64) {
    let status = hcall(IPI, [server, IPI_PRIORITY, 0, 0, 0, 0]).0;
    debug_assert_eq!(status, hcall::SUCCESS, "H_IPI to server {server}");
}

/// Lowers the IPI of `server` (this CPU's own, once it has taken it).
#[notrace]
pub fn clear_ipi(server: u64) {
    hcall(IPI, [server, LEAST_FAVOURED, 0, 0, 0, 0]);
}

/// Accepts the most favoured pending interrupt (source 0 if none).
#[notrace]
pub fn accept() -> Xirr {
    Xirr(hcall(XIRR, [0; 6]).1[0] as u32)
}

/// Ends an accepted interrupt, restoring the CPPR it carried.
#[notrace]
pub fn end(xirr: Xirr) {
    hcall(EOI, [xirr.0 as u64, 0, 0, 0, 0, 0]);
}
