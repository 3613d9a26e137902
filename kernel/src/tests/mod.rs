//! In-kernel test cases (`#[ktest]`) and benchmarks, compiled into the test kernel.
pub mod bench;
mod bench_livepatch;
mod console;
mod debugger;
mod devicetree;
pub(crate) mod exceptions;
mod ftrace;
mod inlined;
mod livepatch;
mod livepatchable;
mod memory;
mod modules;
pub mod registers;
mod runner;
mod stack;
mod threads;
mod unload;
