//! ppc64le on the PAPR pseries platform: registers, hypervisor calls, RTAS,
//! Open Firmware, exceptions and the context switch.
pub mod cache;
pub mod context;
pub mod emergency;
pub mod exceptions;
pub mod ftrace;
pub mod hcall;
pub mod interrupts;
pub mod livepatch;
pub mod openfirmware;
pub mod registers;
pub mod rtas;
pub mod text;
pub mod vectors;
