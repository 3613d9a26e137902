//! Kernel logic that needs no hardware, so that `cargo test` runs it on the host.
//!
//! Everything here is `no_std` when built for the kernel. Modules hold data
//! formats shared by the kernel and the host tools (symbol table, BUG table, function notes),
//! the Power ISA instruction encodings the kernel patches into its own text,
//! the device tree code, the livepatch core's bookkeeping and planning, the
//! ELFv2 back-chain stack walk and its strict form for the livepatch consistency model
//! (`reliable_stack`), how the kernel publishes tables to readers
//! that take no lock (`published`), the per-CPU trace rings and their merge
//! (`trace_ring`), and operations on sorted lists (`sorted`).

#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![forbid(unsafe_op_in_unsafe_fn)]

extern crate alloc;

pub mod backchain;
pub mod build_id;
pub mod bytes;
pub mod channel;
pub mod cpuset;
pub mod devicetree;
pub mod ftrace;
pub mod function_notes;
pub mod graph;
pub mod input_line;
pub mod instruction;
pub mod livepatch;
pub mod module;
pub mod published;
pub mod reliable_stack;
pub mod ring;
pub mod schedule;
pub mod site_table;
pub mod sorted;
pub mod symbols;
pub mod trace_ring;
pub mod trampoline;
