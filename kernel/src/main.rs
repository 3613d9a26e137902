//! A ppc64le kernel for QEMU pseries whose reason to exist is live patching.
//!
//! Boot order (see docs/ARCHITECTURE.md): `boot` hands over in 64-bit
//! little-endian mode with a stack, the TOC and r13; `boot_main` then flattens
//! the firmware's device tree (the firmware is still alive), makes interrupts
//! little-endian, installs the vectors, sets up the heap, threads and the
//! timer, starts the other CPUs, and runs the shell (or the test suite in the test kernel).
#![no_std]
#![no_main]
#![feature(patchable_function_entry)]
#![cfg_attr(feature = "ktest", feature(c_variadic))]
#![forbid(unsafe_op_in_unsafe_fn)]
// Parts of the kernel API (thread joins, site lookups, jitter, ...) are used
// only by the in-kernel tests; the normal kernel does not warn about them.
#![cfg_attr(not(feature = "ktest"), allow(dead_code))]

extern crate alloc;

mod arch;
mod backtrace;
mod bug;
mod build_id;
mod console;
mod debug;
mod demo;
mod devicetree;
mod exception;
#[cfg(feature = "ktest")]
mod ktest;
mod livepatch;
mod memory;
mod module;
mod panic;
mod reserved;
mod section;
mod shell;
mod smp;
mod symbols;
mod sync;
#[cfg(feature = "ktest")]
mod tests;
mod thread;
mod time;
mod trace;

use arch::{hcall, interrupts, vectors};
use macros::notrace;

/// Emergency stack of the boot CPU: exceptions run here when a thread's stack overflowed.
static EMERGENCY_STACK: boot::ThreadStack = boot::ThreadStack(core::cell::UnsafeCell::new([0; boot::THREAD_SIZE]));

/// The Rust entry, called by `boot` on the boot thread's stack with interrupts off.
#[notrace]
#[unsafe(no_mangle)]
pub extern "C" fn boot_main(client_interface: u64, _initrd_start: u64, _initrd_size: u64) -> ! {
    println!();
    println!("klp: a ppc64le kernel for live patching, built in Rust (QEMU pseries)");
    // Which image this is (no heap yet: printed without allocating).
    match build_id::info() {
        Some(info) => println!("klp: kernel {info}"),
        None => println!("klp: kernel {}", build_id::NONE),
    }
    // The firmware lives in low memory: read everything from it before the vectors go there.
    #[cfg(feature = "ktest")]
    tests::registers::check_openfirmware_call(client_interface);
    let tree = devicetree::flatten_from_firmware(client_interface);
    let status = hcall::set_little_endian_interrupts();
    if status != hcall::SUCCESS {
        panic!("H_SET_MODE (little-endian interrupts) failed: {status}");
    }
    // Safety: boot CPU, interrupts off, firmware no longer needed.
    unsafe {
        (*arch::registers::per_cpu_mut()).stack_end_magic = thread::STACK_END_MAGIC;
        let emergency_base = EMERGENCY_STACK.0.get() as u64;
        thread::initialise_emergency(emergency_base);
        (*arch::registers::per_cpu_mut()).emergency_stack =
            emergency_base + boot::THREAD_SIZE as u64 - boot::MINIMAL_FRAME as u64;
        vectors::install();
    }
    memory::init_early();
    let machine = devicetree::Machine::read(tree);
    memory::extend_to(machine.memory_end);
    arch::rtas::init(machine.rtas_tokens());
    trace::init();
    livepatch::register_builtin();
    thread::init();
    time::init(machine.timebase_frequency);
    interrupts::enable();
    let online = smp::bring_up(&machine);
    module::channel::start(machine.has_patch_channel);
    println!(
        "klp: {} MiB RAM, {} of {} CPUs online ({online}), heap {} KiB, {} kernel symbols",
        machine.memory_end >> 20,
        online.len(),
        machine.cpu_count,
        memory::usage().1 >> 10,
        symbols::table().map_or(0, |table| table.len())
    );
    let arguments = machine.bootargs;
    livepatch::configure(arguments);
    #[cfg(feature = "ktest")]
    ktest::run(arguments);
    #[cfg(not(feature = "ktest"))]
    shell::run(arguments);
    power_off()
}

/// Powers the machine off; QEMU exits 0.
pub fn power_off() -> ! {
    println!("klp: powering off");
    arch::rtas::power_off();
    panic!("RTAS power-off returned");
}
