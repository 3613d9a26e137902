//! Architecture support. Only ppc64 (little-endian, ELFv2, pseries) exists; the
//! rest of the kernel reaches it through the names this module re-exports.
pub mod ppc64;
