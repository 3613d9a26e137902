//! Function-entry probes on ftrace sites (Linux's kprobes on ftrace): a pre handler and an optional post handler at a function's entry.
//!
//! A probe names a function (with a 1-based position among several of that
//! name, as a live patch does) and two plain Rust functions. Its handlers run
//! from the function's ftrace site, with the traced call's registers
//! (`FtraceRegs`, a full pt_regs: both ops are SAVE_REGS). As in Linux
//! (`kprobe_ftrace_ops` and `kprobe_ipmodify_ops` in kernel/kprobes.c), the
//! probes share two ftrace ops:
//!
//! - `PROBE_OPS` ("probe", SAVE_REGS) traces the functions whose probe has no
//!   post handler. It never changes where the call goes, so it coexists with
//!   a live patch of the same function: both handlers run, the probe's pre
//!   handler sees the call's arguments, and the call goes on to the
//!   replacement.
//! - `PROBE_IPMODIFY_OPS` ("probe-ipmodify", SAVE_REGS | IPMODIFY) traces the
//!   functions whose probe has a post handler. It claims the function's one
//!   IPMODIFY slot, so a live patch of the function is refused with `Busy`
//!   while it is there, and it is refused (`ProbeError::Busy`) on a function
//!   a live patch already owns.
//!
//! What "post" means here. Linux's `kprobe_ftrace_handler` runs the pre
//! handler, then moves the instruction pointer past the probed instruction
//! (the ftrace call, `MCOUNT_INSN_SIZE` further), runs the post handler as if
//! that instruction had been single-stepped, and puts the instruction
//! pointer back: the instruction probed on an ftrace site is the site's call
//! itself, which does nothing but come here. The same happens here: the post
//! handler runs at the entry, right after the pre handler, with `regs.nip`
//! set to the word after the site (the "stepped" state), and `regs.nip` is
//! put back afterwards. Because this handler writes the instruction pointer
//! that the call resumes at, it needs IPMODIFY, exactly as Linux's does: two
//! IPMODIFY users of one function (a post handler and a live patch) would
//! each assume they decide where the call goes.
//!
//! Neither handler may leave `regs.nip` changed (a probe is not a way to
//! redirect a call: that is a live patch): the dispatcher restores it after
//! each, so a live patch that redirected the call before the probe ran keeps
//! its redirection. Other registers a handler changes (arguments) take effect,
//! as with any SAVE_REGS ops. Handlers run with the recursion guard (the ops
//! are not RECURSION_SAFE): a traced function they call is not traced again.
//! They must not sleep, yield or take a lock a probed function holds.
//!
//! At most one probe per function: a second is refused (`AlreadyProbed`).
//! Every probe counts its hits (one per call that ran its handlers), which
//! `list` and the shell's `probe list` show. While ftrace is off
//! (`trace::set_enabled(false)`) probes can be added and removed, but no
//! site calls them until ftrace is on again (`ops::set_enabled`).
//!
//! Concurrency: the handler reads the probe table (`Published`, a read-side
//! section of `NonPreemptibleReaders`: handlers are never preempted) without
//! a lock; `add` and `remove` run under `PROBES` (a `crate::sync::Mutex`,
//! which keeps its holder from being preempted), then take the ftrace
//! registry's lock inside `trace::update` (lock order: probes, registry,
//! site states; nothing takes them the other way). `add` publishes the table
//! with the new probe before its site is switched on, so a CPU that reaches
//! the site finds it; `remove` switches the site off before it publishes the
//! table without the probe, and the old table (with the probe's `Arc`) is
//! freed only after the grace period, so a CPU still in the handler (on the
//! site it reached before the switch) reads valid memory; an interrupt on
//! the CPU running `add` or `remove` that calls a probed function runs its
//! handler on whichever table is published at that instant, each complete.
//! A failure of `trace::update` changes nothing in ftrace, and the previous
//! table is restored (`Retired::restore`) before the lock is released.
use super::{Filter, FtraceError, FtraceOps, FtraceRegs, OpsFlags};
use crate::sync::{Mutex, NonPreemptibleReaders, Published};
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};
use macros::notrace;
use portable::site_table::{NameError, search_by};

/// A probe handler: `ip` is the probed function's ftrace site, `regs` the call's registers.
pub type ProbeHandler = fn(ip: u64, regs: &mut FtraceRegs);

/// What `add` is asked to attach.
pub struct Probe<'a> {
    /// The function's name, as the symbol table has it (`kernel::shell::hello`).
    pub function: &'a str,
    /// Which of several functions of that name (1-based, in address order); `None` when there is one.
    pub position: Option<usize>,
    /// Runs at every call of the function, first.
    pub pre: ProbeHandler,
    /// Runs right after `pre`, with `regs.nip` past the site (see the module comment); needs IPMODIFY.
    pub post: Option<ProbeHandler>,
}

/// A registered probe, shared by the registry and the handler's table.
struct Entry {
    /// The function's ftrace site (the table is sorted by it).
    site: u64,
    /// The function's global entry.
    function: u64,
    name: String,
    pre: ProbeHandler,
    post: Option<ProbeHandler>,
    hits: AtomicU64,
}

/// A probe as `list` shows it.
#[derive(Debug, Clone)]
pub struct ProbeSummary {
    pub name: String,
    pub function: u64,
    pub site: u64,
    pub hits: u64,
    /// Whether it has a post handler (and so holds the function's IPMODIFY slot).
    pub post: bool,
}

/// Why `add` or `remove` changed nothing.
#[derive(Debug)]
pub enum ProbeError {
    UnknownFunction(String),
    Ambiguous {
        name: String,
        count: usize,
    },
    BadPosition {
        name: String,
        position: usize,
        count: usize,
    },
    AlreadyProbed(String),
    NotProbed(String),
    /// A probe with a post handler needs the function's IPMODIFY slot, and `owner` holds it.
    Busy {
        name: String,
        owner: &'static str,
    },
    Ftrace(FtraceError),
}

impl fmt::Display for ProbeError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeError::UnknownFunction(name) => write!(formatter, "no traceable function named '{name}'"),
            ProbeError::Ambiguous { name, count } => {
                write!(formatter, "{count} functions are named '{name}': give a position (1 to {count})")
            }
            ProbeError::BadPosition { name, position, count } => {
                write!(formatter, "no function '{name}' at position {position}: there are {count}")
            }
            ProbeError::AlreadyProbed(name) => write!(formatter, "{name} already has a probe (one per function)"),
            ProbeError::NotProbed(name) => write!(formatter, "{name} has no probe"),
            ProbeError::Busy { name, owner } => write!(
                formatter,
                "{name} is busy: a probe with a post handler needs to modify its instruction pointer, which '{owner}' already does"
            ),
            ProbeError::Ftrace(error) => write!(formatter, "{error}"),
        }
    }
}

/// The ops of the probes without a post handler (Linux's `kprobe_ftrace_ops`).
pub static PROBE_OPS: FtraceOps = FtraceOps::new("probe", probe_handler, OpsFlags::SAVE_REGS);
/// The ops of the probes with a post handler (Linux's `kprobe_ipmodify_ops`).
pub static PROBE_IPMODIFY_OPS: FtraceOps =
    FtraceOps::new("probe-ipmodify", probe_handler, OpsFlags::SAVE_REGS.union(OpsFlags::IPMODIFY));

/// The registered probes, sorted by site (changed only under this lock).
static PROBES: Mutex<Vec<Arc<Entry>>> = Mutex::new(Vec::new());
/// The same list for the handler, which takes no lock.
static TABLE: Published<Vec<Arc<Entry>>> = Published::new(&NO_PROBES, NonPreemptibleReaders);
/// The table before the first probe.
static NO_PROBES: Vec<Arc<Entry>> = Vec::new();

/// Both ops' handler: the probe of the site `ip`, its pre handler, then its
/// post handler with `regs.nip` past the site; `regs.nip` as it found it after each.
#[notrace]
extern "C" fn probe_handler(ip: u64, _parent_ip: u64, ops: &FtraceOps, regs: &mut FtraceRegs) {
    // Safety: a handler, which the scheduler does not preempt: a read-side
    // section (`NonPreemptibleReaders`).
    let entries = unsafe { TABLE.read() };
    // Safety (both reads): `search_by` asks only for indices below the length.
    let Some(index) = search_by(entries.len(), ip, |index| unsafe { entries.get_unchecked(index).site }) else {
        return;
    };
    let entry = unsafe { entries.get_unchecked(index) };
    // Each probed site is in the filter of exactly the ops its kind needs;
    // a table newer than the sites (a probe replaced by one of the other
    // kind between two registrations) must not run it from the wrong ops.
    if entry.post.is_some() != core::ptr::eq(ops, &PROBE_IPMODIFY_OPS) {
        return;
    }
    entry.hits.fetch_add(1, Ordering::Relaxed);
    let resume = regs.regs.nip;
    (entry.pre)(ip, regs);
    if let Some(post) = entry.post {
        // The probed instruction (the site's call) "stepped over".
        regs.regs.nip = ip + 4;
        post(ip, regs);
    }
    regs.regs.nip = resume;
}

/// Attaches `probe`. On error nothing changed.
pub fn add(probe: Probe) -> Result<(), ProbeError> {
    let mut probes = PROBES.lock();
    let site = resolve(probe.function, probe.position)?;
    let name = String::from(site.name);
    if probes.iter().any(|entry| entry.site == site.address) {
        return Err(ProbeError::AlreadyProbed(name));
    }
    let entry = Entry {
        site: site.address,
        function: site.function,
        name,
        pre: probe.pre,
        post: probe.post,
        hits: AtomicU64::new(0),
    };
    let ops = ops_for(&entry);
    let mut next = probes.clone();
    let at = next.partition_point(|other| other.site < entry.site);
    next.insert(at, Arc::new(entry));
    // The table first: the site, once on, finds its probe.
    let previous = TABLE.replace_retaining(next.clone());
    match register_sites(ops, &next) {
        Ok(()) => {
            // Freed after the grace period.
            drop(previous);
            *probes = next;
            Ok(())
        }
        Err(error) => {
            previous.restore();
            Err(error)
        }
    }
}

/// Detaches the probe of `function` (with `position` as in `add`). On error nothing changed.
pub fn remove(function: &str, position: Option<usize>) -> Result<(), ProbeError> {
    let site = resolve(function, position)?;
    remove_at(site.function).ok_or_else(|| ProbeError::NotProbed(String::from(site.name)))?
}

/// Detaches every probe (the test runner's clean-up); returns one line per probe.
pub fn remove_all() -> Vec<String> {
    let mut removed = Vec::new();
    loop {
        // Its own statement: the guard must be dropped before `remove_at` locks again.
        let first = PROBES.lock().first().map(|entry| (entry.function, entry.name.clone()));
        let Some((function, name)) = first else { break };
        match remove_at(function) {
            Some(Ok(())) => removed.push(name),
            Some(Err(error)) => {
                removed.push(alloc::format!("{name} (remove: {error})"));
                break;
            }
            None => {}
        }
    }
    removed
}

/// Detaches the probe of the function whose global entry is `function`;
/// `None` if it has none.
fn remove_at(function: u64) -> Option<Result<(), ProbeError>> {
    let mut probes = PROBES.lock();
    let index = probes.iter().position(|entry| entry.function == function)?;
    let ops = ops_for(&probes[index]);
    let mut next = probes.clone();
    next.remove(index);
    // The site first: the table without the probe is published after no
    // site leads to it; the old table is freed after the grace period.
    if let Err(error) = register_sites(ops, &next) {
        return Some(Err(error));
    }
    TABLE.replace(next.clone());
    *probes = next;
    Some(Ok(()))
}

/// Every probe, in site order.
pub fn list() -> Vec<ProbeSummary> {
    PROBES
        .lock()
        .iter()
        .map(|entry| ProbeSummary {
            name: entry.name.clone(),
            function: entry.function,
            site: entry.site,
            hits: entry.hits.load(Ordering::Relaxed),
            post: entry.post.is_some(),
        })
        .collect()
}

/// The ops a probe's kind needs.
fn ops_for(entry: &Entry) -> &'static FtraceOps {
    if entry.post.is_some() { &PROBE_IPMODIFY_OPS } else { &PROBE_OPS }
}

/// Makes `ops` trace exactly the sites of the probes in `entries` of its kind
/// (unregistering it when there are none), all or nothing.
fn register_sites(ops: &'static FtraceOps, entries: &[Arc<Entry>]) -> Result<(), ProbeError> {
    let sites: Vec<u64> =
        entries.iter().filter(|entry| core::ptr::eq(ops_for(entry), ops)).map(|entry| entry.site).collect();
    let result =
        if sites.is_empty() { super::unregister(ops) } else { super::update(ops, Filter::Addresses(&sites)).map(drop) };
    result.map_err(|error| match error {
        FtraceError::Busy { function, owner } => ProbeError::Busy {
            name: entries
                .iter()
                .find(|entry| entry.site == function || entry.function == function)
                .map_or_else(|| alloc::format!("{function:#x}"), |entry| entry.name.clone()),
            owner,
        },
        other => ProbeError::Ftrace(other),
    })
}

/// The site of `function` (at `position`).
fn resolve(function: &str, position: Option<usize>) -> Result<&'static portable::site_table::Site, ProbeError> {
    super::site_table().named_entry(function, position).map_err(|error| match error {
        NameError::Missing => ProbeError::UnknownFunction(String::from(function)),
        NameError::Ambiguous { count } => ProbeError::Ambiguous { name: String::from(function), count },
        NameError::BadPosition { count } => {
            ProbeError::BadPosition { name: String::from(function), position: position.unwrap_or(0), count }
        }
    })
}
