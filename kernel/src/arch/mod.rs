//! Architecture support: the one interface the rest of the kernel uses to reach the machine.
//!
//! Generic code names `crate::arch::...`, never the architecture's own module:
//! `ppc64` is private, and everything it makes public is re-exported here with
//! `pub use ppc64::*` (as Hermit re-exports its one architecture module). A
//! glob rather than a list of names: the modules below `ppc64/` (`ftrace`,
//! `livepatch`, `registers`, ...) already group the interface by concern, and
//! `ppc64/mod.rs` lists them; a second architecture would be another private
//! module re-exported the same way, under a `cfg`.
mod ppc64;

pub use ppc64::*;
