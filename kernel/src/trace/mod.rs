//! Dynamic ftrace: entry sites patched at run time to call the stubs, and the handlers they reach.
//!
//! `sites` builds and validates the site table at boot (one immutable
//! `SiteTable`, read without a lock) and keeps who traces each site,
//! `module_sites` adds and removes the tables of loadable target modules; `ops`
//! registers handlers (`FtraceOps`) and patches exactly the sites their
//! filters name, and points an IPMODIFY ops's sites straight at direct
//! targets (`set_direct`, Linux's direct calls); `function` and `graph` are the two tracers built on it, and
//! `probe` the function-entry probes (Linux's kprobes on ftrace).
pub(crate) mod buffers;
pub mod function;
pub mod graph;
mod module_sites;
mod ops;
pub mod probe;
mod sites;

pub use crate::arch::ftrace::{FUNCTION_TRACE_OP, FtraceRegs};
pub use module_sites::SiteRefused;
/// The handler for an ops whose only work is direct calls (`set_direct`):
/// nothing in the kernel registers one but the tests.
#[cfg(feature = "ktest")]
pub use ops::ftrace_direct_handler;
#[cfg(feature = "ktest")]
pub use ops::registered_ops;
pub use ops::{
    Filter, FtraceError, FtraceOps, OpsFlags, enabled, has_site, register, registered, restore_words, set_direct,
    set_enabled, unregister, update,
};
pub use portable::site_table::NameError;
pub use sites::{
    add_module as add_module_sites, module_entry, name_of, remove_module as remove_module_sites, site_summaries,
    table as site_table,
};

use macros::notrace;

/// Builds the site table (call once at boot, before any thread other than boot runs).
#[notrace]
pub fn init() {
    let (valid, rejected) = sites::init();
    let (table, count, entry) = sites::debug_table();
    crate::debug::sites_known(table, count, entry);
    crate::println!("ftrace: {valid} entry sites validated, {rejected} rejected");
}
