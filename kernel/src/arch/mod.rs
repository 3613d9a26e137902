//! Architecture support: the one interface the rest of the kernel uses to reach the machine.
//!
//! Generic code names `crate::arch::...`, never the architecture's own module:
//! `ppc64` is private, and everything it makes public is re-exported here with
//! `pub use ppc64::*` (as Hermit re-exports its one architecture module). A
//! glob rather than a list of names: the modules below `ppc64/` (`ftrace`,
//! `livepatch`, `registers`, ...) already group the interface by concern, and
//! `ppc64/mod.rs` lists them; a second architecture would be another private
//! module re-exported the same way, under a `cfg`.
//!
//! The hooks generic code calls to patch text or set up state carry Linux's
//! names, so a PowerPC reader finds them: `ftrace_init_nop`,
//! `ftrace_prepare_change` with `SiteChange::commit`/`revert` (the per-site
//! steps of Linux's powerpc `ftrace_replace_code`),
//! `ftrace_update_ftrace_func`, `ftrace_enable_ftrace_graph_caller` and
//! `ftrace_disable_ftrace_graph_caller` (`ftrace`), `klp_arch_set_pc`
//! (`livepatch`), `copy_thread` (`context`). They take generic things (a
//! function, a site address, a target address, `FtraceRegs`) and write the
//! instructions and registers themselves.
//!
//! Dependencies point one way: this module imports nothing from the generic
//! kernel (`cargo xtask test`'s host test `imports` checks it). What an
//! architecture defines and generic code fills in lives here, as Linux keeps
//! it in asm/ headers: the `thread_info` layout (`thread_info`, whose fields
//! the assembly reaches), the BUG record and its macros (`bug`), the
//! exception vector numbers (`vectors`), the op the ftrace stubs pass
//! (`ftrace::FUNCTION_TRACE_OP`). The other direction, the assembly calling
//! into generic code, is a link-time contract rather than an import: the
//! block below declares the functions generic code must define (each
//! `#[unsafe(no_mangle)]`, next to a compile-time check that its signature
//! is the one declared here), and the assembly calls them by symbol.
mod ppc64;

pub use ppc64::*;

unsafe extern "C" {
    /// Called by the exception entry (`exception_common`) with the saved
    /// registers, on the stack the entry chose; returning resumes them, with
    /// whatever the function changed. Generic code: the kernel's exception policy.
    pub fn exception_dispatch(regs: &mut exceptions::PtRegs);
    /// Called by `ftrace_graph_caller` after the handler of every traced call
    /// while the graph calls are on (`ftrace_enable_ftrace_graph_caller`);
    /// may replace the return address with `return_to_handler`. Generic
    /// code: the function-graph tracer.
    pub fn ftrace_graph_entry(regs: &mut ftrace::FtraceRegs);
    /// Called by `return_to_handler` when a hooked function returns; gives
    /// the address it really returns to. Generic code: the function-graph tracer.
    pub fn ftrace_return_to_handler() -> u64;
    /// Called by `smp::secondary_main` on a secondary CPU's idle stack once
    /// the CPU is online (interrupts off); never returns. Generic code: the
    /// scheduler, whose idle thread that stack already is.
    pub fn secondary_idle() -> !;
}
