//! ppc64le (ELFv2, little-endian) on the PAPR pseries platform: everything in the kernel that knows the machine.
//!
//! - `bug`: how a BUG is placed: the trap, its `.bug_table` record, the `bug!` and `bug_entry` macros.
//! - `cache`: making instruction fetch see written instructions (`dcbst`, `icbi`).
//! - `context`: `switch_context`, and `copy_thread`, the first switch to a new thread.
//! - `emergency`: the per-CPU emergency stack, where reports and kills run.
//! - `exceptions`: `exception_common`, the entry that saves `PtRegs`, and the exception stack budget.
//! - `ftrace`: the ftrace stubs, `FtraceRegs`, `in_ftrace`, and the hooks that patch sites and stubs.
//! - `hcall`: hypervisor calls (`sc 1`).
//! - `interrupts`: MSR[EE] on and off, and waiting for an interrupt (H_CEDE, `cede`, and where it resumes: `ceded_at`).
//! - `livepatch`: `livepatch_handler`, its livepatch stack frames, and `klp_arch_set_pc`.
//! - `percpu`: the per-CPU areas on r13: `smp_processor_id`, every CPU's area, the online CPUs.
//! - `openfirmware`: the Open Firmware client interface, used once to flatten the device tree.
//! - `registers`: MSR bits, timebase, decrementer, r1, r2 and r13 (the per-CPU area).
//! - `rtas`: RTAS calls (power off, os-term, start-cpu).
//! - `smp`: starting the other CPUs, the idle wait, IPIs (reschedule, `smp_call_function`), `stop_machine`, the text patching's cross-CPU step.
//! - `stacktrace`: the reliable stack walk of a thread: what each return address is, its livepatch stack.
//! - `text`: the one way to change kernel text: check, write, flush.
//! - `thread_info`: the block at the base of every thread stack, and the stack bounds.
//! - `trampoline`: the direct-call livepatch trampolines: their template, their pool, writing and freeing them.
//! - `vectors`: the exception vector slots written at boot, and the vector numbers.
//! - `xics`: the XICS interrupt controller by hcall: priorities, IPIs, accept, end.
pub mod bug;
pub mod cache;
pub mod context;
pub mod emergency;
pub mod exceptions;
pub mod ftrace;
pub mod hcall;
pub mod interrupts;
pub mod livepatch;
pub mod openfirmware;
pub mod percpu;
pub mod registers;
pub mod rtas;
pub mod smp;
pub mod stacktrace;
pub mod text;
pub mod thread_info;
pub mod trampoline;
pub mod vectors;
pub mod xics;
