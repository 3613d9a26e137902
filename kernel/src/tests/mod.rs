//! In-kernel test cases (`#[ktest]`) and benchmarks, compiled into the test kernel.
pub mod bench;
mod bench_livepatch;
mod console;
mod devicetree;
mod exceptions;
mod ftrace;
mod livepatch;
mod memory;
pub mod registers;
mod runner;
mod modules;
mod threads;
