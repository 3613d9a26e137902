//! The stack budget check: the timer path's frames, summed along its calls, must fit in STACK_GUARD.
//!
//! The decrementer handler is the one exception handler that runs on the
//! interrupted thread's stack (every other one moves to the emergency stack),
//! below an exception frame that the entry code keeps `STACK_GUARD` bytes
//! above the thread's livepatch stack. This check reads the kernel's
//! disassembly, takes each function's frame size from its `stdu r1,-N(r1)`
//! and its callees from its `bl` and `b` instructions, and sums the frames
//! along the deepest chain from `exception_dispatch`, plus the ELFv2 red zone
//! the deepest function may use below its r1. It fails if that sum exceeds the
//! STACK_GUARD the image carries (symbol `EXCEPTION_STACK_GUARD`), and it fails
//! on what it cannot bound: an indirect call, a frame of run-time size, or
//! recursion. Left out: the functions that run only on the emergency stack
//! (`LEFT_OUT`) and the panic machinery, which never returns to the thread.
//!
//! Ftrace sites count. A function with an entry site (listed in
//! `__patchable_function_entries`) may, once traced, call into an ftrace entry
//! stub before it builds its own frame: the stub's frame (its `stdu`), then
//! whatever `ftrace_call` reaches (a handler directly, or `ftrace_ops_assist`
//! or `ftrace_ops_list` and a handler through `ops.handler`), then the graph
//! hook (`ftrace_graph_caller` -> `ftrace_graph_entry`); and when the graph
//! tracer hooked its return, `return_to_handler` and its callee run at the
//! same depth. The stub's frame is popped before the function's body runs,
//! so that cost applies at the function's entry depth, as an alternative to
//! the function's own frames, never on top of them. The handlers are the
//! kernel's own (`HANDLERS`, by name); their chains are summed from the
//! disassembly the same way, and a handler chain that cannot be bounded (or
//! that reaches another ftrace site) fails the check. The measured cost must
//! fit in the kernel's `FTRACE_STACK_ROOM` (symbol `FTRACE_STACK_ROOM_BYTES`),
//! the room the stubs' stack check leaves for it, and the timer path counts
//! that room at every site it passes: a healthy thread near the guard then
//! never meets the check. docs/ARCHITECTURE.md, "The exception stack budget",
//! has the figures.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, Result, bail};
use object::{Object, ObjectSection, ObjectSymbol};

use crate::symbols::demangle;
use crate::test::{Options, Tally};
use crate::{build, command, objdump, output_checked};

/// Where the timer path starts (after `exception_common` pushed its frame).
const ROOT: &str = "exception_dispatch";
/// Functions that run on the emergency stack, never below the thread's
/// exception frame: `exception_dispatch` calls the first six only when the
/// entry moved to the emergency stack; `emergency::run` moves there itself.
const LEFT_OUT: [&str; 8] = [
    "kernel::exception::program_check",
    "kernel::exception::stack_overflow",
    "kernel::exception::emergency_stack_overflow",
    "kernel::exception::external_interrupt",
    "kernel::exception::unexpected",
    "kernel::exception::report",
    "kernel::arch::ppc64::emergency::run",
    "call_on_emergency_stack",
];
/// ELFv2: what a function may use below its r1 without a frame.
const RED_ZONE: u64 = 288;
/// The name of this check in test summaries and filters.
const NAME: &str = "stack_budget::timer_path";

/// The ftrace entry stubs a site calls: their frames are parsed from their `stdu`.
const STUBS: [&str; 2] = ["ftrace_caller", "ftrace_regs_caller"];
/// What `ftrace_call` may call that calls a handler through a register
/// (`ops.handler`): the per-thread recursion guard and the list walker.
const DISPATCHERS: [&str; 2] = ["kernel::trace::ops::ftrace_ops_assist", "kernel::trace::ops::ftrace_ops_list"];
/// Every ftrace handler the kernel has (`FtraceOps::new` outside the tests):
/// the function tracer's, function_graph's site handler, the livepatch core's.
const HANDLERS: [&str; 3] = [
    "kernel::trace::function::function_handler",
    "kernel::trace::graph::graph_site_handler",
    "kernel::livepatch::redirect::livepatch_ftrace_handler",
];
/// The graph hook the stubs call after `ftrace_call` (`b ftrace_graph_entry`).
const GRAPH_CALLER: &str = "ftrace_graph_caller";
/// Where a function hooked by function_graph returns, at its entry's r1.
const GRAPH_RETURN: &str = "return_to_handler";

/// One function of the disassembly.
#[derive(Debug, Default, PartialEq)]
pub struct Function {
    /// Where it starts.
    pub address: u64,
    /// Bytes its prologue pushes (`stdu r1,-N(r1)`), 0 if none.
    pub frame: u64,
    /// Functions it calls (or tail-calls), mangled.
    pub calls: Vec<String>,
    /// It calls through a register (`bctrl`).
    pub indirect: bool,
    /// Its frame size is computed at run time (`stdux r1,r1,rN`).
    pub dynamic: bool,
}

/// Functions by mangled name, from `llvm-objdump -d --no-show-raw-insn` output.
pub fn parse(disassembly: &str) -> BTreeMap<String, Function> {
    let mut functions = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in disassembly.lines() {
        if let Some((address, name)) = line.strip_suffix(">:").and_then(|head| head.split_once(" <")) {
            let address = u64::from_str_radix(address.trim(), 16).unwrap_or(0);
            functions.insert(name.to_string(), Function { address, ..Function::default() });
            current = Some(name.to_string());
            continue;
        }
        let Some(function) = current.as_ref().and_then(|name| functions.get_mut(name)) else { continue };
        let Some((_, instruction)) = line.split_once('\t') else { continue };
        let instruction = instruction.trim();
        let mut words = instruction.splitn(2, ' ');
        let (mnemonic, operands) = (words.next().unwrap_or(""), words.next().unwrap_or("").trim());
        match mnemonic {
            "stdu" if function.frame == 0 => {
                if let Some(size) = operands.strip_prefix("1, -").and_then(|rest| rest.strip_suffix("(1)")) {
                    function.frame = size.parse().unwrap_or(0);
                }
            }
            "stdux" if operands.starts_with("1, 1,") => function.dynamic = true,
            "bctrl" => function.indirect = true,
            "bl" | "b" => {
                let target = operands.split_once('<').and_then(|(_, rest)| rest.split(['>', '+']).next());
                if let Some(target) = target {
                    let own = current.as_deref() == Some(target);
                    if !own && !function.calls.iter().any(|call| call == target) {
                        function.calls.push(target.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    functions
}

/// The name under which the disassembly lists the function at `address`
/// (two symbols at one address get one label: `ftrace_caller` is listed as
/// `ftrace_stubs_start`), or the function containing it.
fn containing(functions: &BTreeMap<String, Function>, address: u64) -> Option<String> {
    functions
        .iter()
        .filter(|(_, function)| function.address <= address)
        .max_by_key(|(_, function)| function.address)
        .map(|(name, _)| name.clone())
}

/// Whether a call leads only into a panic (which never returns to the thread).
fn panics(name: &str) -> bool {
    let name = demangle(name);
    name.contains("panic")
        || name == "rust_begin_unwind"
        || [
            "unwrap_failed",
            "expect_failed",
            "assert_failed",
            "handle_error",
            "handle_alloc_error",
            "capacity_overflow",
        ]
        .iter()
        .any(|ending| name.ends_with(ending))
        || name.contains("::slice::index::")
}

/// The deepest chain from `root`: its bytes (frames plus the red zone) and its
/// functions with their frames, demangled.
#[derive(Debug, PartialEq)]
pub struct Budget {
    pub bytes: u64,
    pub path: Vec<(String, u64)>,
    /// The functions with an ftrace site that the walk reached, demangled.
    pub traced: Vec<String>,
}

/// A chain's bytes and its functions with their frames.
type Chain = (u64, Vec<(String, u64)>);

/// What the kernel's ftrace machinery adds at a traced function's entry.
#[derive(Debug, Default)]
pub struct Ftrace {
    /// Mangled names of the functions with an ftrace entry site.
    pub sites: BTreeSet<String>,
    /// Dispatchers (mangled) and the handlers (mangled) they may call through a register.
    pub indirect: BTreeMap<String, Vec<String>>,
    /// Bytes counted at the entry of each function with a site, below its
    /// caller's r1, without the red zone (the sum adds it once, at the end).
    pub site_bytes: u64,
}

/// Walks the calls from one function. `ftrace` is None while summing the
/// ftrace machinery itself, which must reach no site.
struct Walker<'a> {
    functions: &'a BTreeMap<String, Function>,
    left_out: &'a [&'a str],
    ftrace: &'a Ftrace,
    count_sites: bool,
    memo: BTreeMap<String, Chain>,
    /// Functions with a site reached so far.
    traced: BTreeSet<String>,
}

impl Walker<'_> {
    fn walk(&mut self, name: &str, chain: &mut Vec<String>) -> Result<Chain> {
        if let Some(known) = self.memo.get(name) {
            return Ok(known.clone());
        }
        if chain.iter().any(|caller| caller == name) {
            bail!("recursion through {}: no bound", demangle(name));
        }
        let function = self
            .functions
            .get(name)
            .with_context(|| format!("{} is called but not in the disassembly", demangle(name)))?;
        let site = self.ftrace.sites.contains(name);
        if site {
            self.traced.insert(demangle(name));
        }
        if site && !self.count_sites {
            bail!(
                "the ftrace handlers reach {}, which has an ftrace site: no bound (make it #[notrace])",
                demangle(name)
            );
        }
        let through_register = self.ftrace.indirect.get(name);
        if function.indirect && through_register.is_none() {
            bail!("{} calls through a register: the bound cannot follow it", demangle(name));
        }
        if function.dynamic {
            bail!("{} has a frame of run-time size", demangle(name));
        }
        chain.push(name.to_string());
        let mut deepest = (0, Vec::new());
        let callees = function.calls.iter().chain(through_register.into_iter().flatten());
        for callee in callees {
            if panics(callee) || self.left_out.iter().any(|out| *out == callee || *out == demangle(callee)) {
                continue;
            }
            let below = self.walk(callee, chain)?;
            if deepest.1.is_empty() || below.0 > deepest.0 {
                deepest = below;
            }
        }
        chain.pop();
        let mut path = vec![(demangle(name), function.frame)];
        path.extend(deepest.1);
        let mut result = (function.frame + deepest.0, path);
        if site && self.ftrace.site_bytes > result.0 {
            // The stub's frame is popped before the body runs: the ftrace
            // cost is an alternative at this function's entry depth.
            result =
                (self.ftrace.site_bytes, vec![(format!("ftrace site of {}", demangle(name)), self.ftrace.site_bytes)]);
        }
        self.memo.insert(name.to_string(), result.clone());
        Ok(result)
    }
}

/// Sums frames along the deepest chain of calls from `root`, leaving out
/// `left_out` (demangled or mangled names) and panics, and counting
/// `ftrace.site_bytes` at the entry of every function in `ftrace.sites`.
pub fn worst_path(
    functions: &BTreeMap<String, Function>,
    root: &str,
    left_out: &[&str],
    ftrace: &Ftrace,
) -> Result<Budget> {
    let mut walker =
        Walker { functions, left_out, ftrace, count_sites: true, memo: BTreeMap::new(), traced: BTreeSet::new() };
    let (frames, path) = walker.walk(root, &mut Vec::new())?;
    Ok(Budget { bytes: frames + RED_ZONE, path, traced: walker.traced.into_iter().collect() })
}

/// The mangled name of `name` (demangled or mangled) in the disassembly.
fn find(functions: &BTreeMap<String, Function>, name: &str) -> Result<String> {
    functions
        .keys()
        .find(|key| *key == name || demangle(key) == name)
        .cloned()
        .with_context(|| format!("ftrace: {name} is not in the disassembly: the ftrace cost cannot be bounded"))
}

/// The deepest use of the stack by the ftrace machinery at a traced
/// function's entry, below its caller's r1, with the red zone: the stubs'
/// frame and what they call, or the graph tracer's return path. `stubs` are
/// the names the disassembly lists the stubs under; `ftrace.indirect` says
/// which handlers each dispatcher may call.
pub fn ftrace_cost(
    functions: &BTreeMap<String, Function>,
    stubs: &[String],
    ftrace: &Ftrace,
    left_out: &[&str],
) -> Result<Budget> {
    let mut stub_frame = 0;
    for stub in stubs {
        let function = functions.get(stub).with_context(|| format!("ftrace: stub {stub} is not in the disassembly"))?;
        if function.frame == 0 {
            bail!("ftrace: stub {stub} pushes no frame that `stdu 1, -N(1)` shows: the ftrace cost cannot be bounded");
        }
        stub_frame = stub_frame.max(function.frame);
    }
    let mut walker =
        Walker { functions, left_out, ftrace, count_sites: false, memo: BTreeMap::new(), traced: BTreeSet::new() };
    // What ftrace_call may reach: a handler directly or through a dispatcher,
    // then (in sequence, so not added) the graph hook.
    let mut from_stub: Vec<String> = ftrace.indirect.keys().cloned().collect();
    from_stub.extend(ftrace.indirect.values().flatten().cloned());
    from_stub.push(find(functions, GRAPH_CALLER)?);
    let mut deepest: Chain = (0, Vec::new());
    for name in &from_stub {
        let below = walker.walk(name, &mut Vec::new())?;
        if deepest.1.is_empty() || below.0 > deepest.0 {
            deepest = below;
        }
    }
    let mut path = vec![(String::from("ftrace entry stub (ftrace_caller, ftrace_regs_caller)"), stub_frame)];
    path.extend(deepest.1);
    let mut worst = (stub_frame + deepest.0, path);
    let graph_return = walker.walk(&find(functions, GRAPH_RETURN)?, &mut Vec::new())?;
    if graph_return.0 > worst.0 {
        worst = graph_return;
    }
    Ok(Budget { bytes: worst.0 + RED_ZONE, path: worst.1, traced: Vec::new() })
}

/// The u64 at symbol `name` of the ELF image.
fn read_u64(file: &object::File, name: &str) -> Result<u64> {
    let symbol =
        file.symbols().find(|symbol| symbol.name() == Ok(name)).with_context(|| format!("no symbol {name}"))?;
    let section = file.section_by_index(symbol.section_index().context("symbol without section")?)?;
    let offset = (symbol.address() - section.address()) as usize;
    let bytes = section.data()?.get(offset..offset + 8).context("symbol outside its section")?;
    Ok(u64::from_le_bytes(bytes.try_into().expect("8 bytes")))
}

/// The address of symbol `name`.
fn address_of(file: &object::File, name: &str) -> Result<u64> {
    file.symbols()
        .find(|symbol| symbol.name() == Ok(name))
        .map(|symbol| symbol.address())
        .with_context(|| format!("no symbol {name}"))
}

/// The functions with an ftrace entry site: those `__patchable_function_entries` points into.
fn site_functions(file: &object::File, functions: &BTreeMap<String, Function>) -> Result<BTreeSet<String>> {
    let section = file.section_by_name("__patchable_function_entries").context("no __patchable_function_entries")?;
    let data = section.data()?;
    let mut sites = BTreeSet::new();
    for record in data.chunks_exact(8) {
        let address = u64::from_le_bytes(record.try_into().expect("8 bytes"));
        sites.insert(containing(functions, address).with_context(|| format!("site {address:#x} is in no function"))?);
    }
    Ok(sites)
}

/// The measured ftrace cost and the timer path, from the image and its disassembly.
struct Measured {
    ftrace: Budget,
    timer: Budget,
}

fn measure(file: &object::File, functions: &BTreeMap<String, Function>, room: u64) -> Result<Measured> {
    let mut ftrace = Ftrace { sites: site_functions(file, functions)?, ..Ftrace::default() };
    let handlers = HANDLERS.iter().map(|name| find(functions, name)).collect::<Result<Vec<_>>>()?;
    for dispatcher in DISPATCHERS {
        ftrace.indirect.insert(find(functions, dispatcher)?, handlers.clone());
    }
    let stubs = STUBS
        .iter()
        .map(|stub| {
            let address = address_of(file, stub)?;
            functions
                .iter()
                .find(|(_, function)| function.address == address)
                .map(|(name, _)| name.clone())
                .with_context(|| format!("ftrace: no function at {stub} ({address:#x}) in the disassembly"))
        })
        .collect::<Result<Vec<_>>>()?;
    let cost = ftrace_cost(functions, &stubs, &ftrace, &LEFT_OUT)?;
    // The timer path counts the room the stubs' check leaves, not only what
    // was measured: a path that fits then never meets the check.
    ftrace.site_bytes = room.max(cost.bytes) - RED_ZONE;
    let timer = worst_path(functions, ROOT, &LEFT_OUT, &ftrace)?;
    Ok(Measured { ftrace: cost, timer })
}

/// The `cargo xtask test` phase: checks the kernel's timer path against its STACK_GUARD.
pub fn budget_test(options: &Options, tally: &mut Tally) -> Result<()> {
    if options.filter.as_deref().is_some_and(|filter| !NAME.contains(filter)) {
        return Ok(());
    }
    let image = build::main(&build::Options { test: false })?;
    let llvm_objdump = objdump::llvm_objdump()?;
    let disassembly = output_checked(command(&llvm_objdump).args(["-d", "--no-show-raw-insn"]).arg(&image))?;
    let verdict = check(&image, &disassembly);
    println!("test {NAME} ... {}", if verdict.is_ok() { "ok" } else { "FAILED" });
    tally.record(NAME, &verdict);
    Ok(())
}

fn check(image: &Path, disassembly: &str) -> Result<(), String> {
    let data = std::fs::read(image).map_err(|error| format!("reading {}: {error}", image.display()))?;
    let file = object::File::parse(&*data).map_err(|error| format!("{error}"))?;
    let guard = read_u64(&file, "EXCEPTION_STACK_GUARD").map_err(|error| format!("{error:#}"))?;
    let room = read_u64(&file, "FTRACE_STACK_ROOM_BYTES").map_err(|error| format!("{error:#}"))?;
    let measured = measure(&file, &parse(disassembly), room).map_err(|error| format!("{error:#}"))?;
    println!("  ftrace at a traced function's entry:");
    for (name, frame) in &measured.ftrace.path {
        println!("    {frame:5}  {name}");
    }
    println!("    {RED_ZONE:5}  (red zone of the deepest function)");
    println!("{NAME}: ftrace {} bytes; FTRACE_STACK_ROOM {room}", measured.ftrace.bytes);
    println!("  timer path below the exception frame (an ftrace site counts FTRACE_STACK_ROOM):");
    for (name, frame) in &measured.timer.path {
        println!("    {frame:5}  {name}");
    }
    println!("    {RED_ZONE:5}  (red zone of the deepest function)");
    let own: Vec<&String> = measured.timer.traced.iter().filter(|name| name.starts_with("kernel::")).collect();
    println!(
        "  {} functions on the timer path have an ftrace site; the kernel's own among them: {own:?}",
        measured.timer.traced.len()
    );
    println!("{NAME}: {} bytes below the exception frame; STACK_GUARD {guard}", measured.timer.bytes);
    if measured.ftrace.bytes > room {
        return Err(format!("ftrace needs {} bytes > FTRACE_STACK_ROOM {room}", measured.ftrace.bytes));
    }
    if measured.timer.bytes > guard {
        return Err(format!("{} bytes > STACK_GUARD {guard}", measured.timer.bytes));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DISASSEMBLY: &str = "
0000000000400000 <root>:
  400000:      \tmflr 0
  400004:      \tstdu 1, -112(1)
  400008:      \tbl 0x400100 <middle>
  40000c:      \tbl 0x400200 <emergency_only>
  400010:      \tbl 0x400300 <_RNvNtCs1_4core9panicking9panic_fmt>
  400014:      \tb 0x400400 <leaf+0x8>

0000000000400100 <middle>:
  400100:      \tstdu 1, -64(1)
  400104:      \tbl 0x400400 <leaf>
  400108:      \tb 0x400110 <middle+0x10>

0000000000400200 <emergency_only>:
  400200:      \tstdu 1, -4000(1)
  400204:      \tbctrl

0000000000400300 <_RNvNtCs1_4core9panicking9panic_fmt>:
  400300:      \tstdu 1, -5000(1)

0000000000400400 <leaf>:
  400400:      \tblr
";

    /// A stub, a dispatcher calling through a register, two handlers, the graph hooks.
    const FTRACE: &str = "
0000000000500000 <stubs_start>:
  500000:      \tstd 0, 16(1)
  500004:      \tstdu 1, -400(1)
  500008:      \tbl 0x500200 <stub>

0000000000500100 <regs_stub>:
  500100:      \tstdu 1, -400(1)
  500104:      \tbl 0x500200 <stub>

0000000000500200 <stub>:
  500200:      \tblr

0000000000500300 <assist>:
  500300:      \tstdu 1, -32(1)
  500304:      \tbctrl

0000000000500400 <light>:
  500400:      \tblr

0000000000500500 <heavy>:
  500500:      \tstdu 1, -48(1)
  500504:      \tbl 0x500600 <helper>

0000000000500600 <helper>:
  500600:      \tstdu 1, -16(1)

0000000000500700 <ftrace_graph_caller>:
  500700:      \tb 0x500800 <graph_entry>

0000000000500800 <graph_entry>:
  500800:      \tstdu 1, -32(1)

0000000000500900 <return_to_handler>:
  500900:      \tstdu 1, -64(1)
  500904:      \tbl 0x500a00 <graph_return_handler>

0000000000500a00 <graph_return_handler>:
  500a00:      \tstdu 1, -48(1)
";

    /// The model's dispatcher and the handlers it may call.
    fn ftrace_model() -> Ftrace {
        let mut ftrace = Ftrace::default();
        ftrace.indirect.insert("assist".into(), vec!["light".into(), "heavy".into()]);
        ftrace
    }

    fn ftrace_cost_of(disassembly: &str, ftrace: &Ftrace) -> Result<Budget> {
        ftrace_cost(&parse(disassembly), &["stubs_start".into(), "regs_stub".into()], ftrace, &[])
    }

    #[test]
    fn parses_frames_calls_and_indirect_calls() {
        let functions = parse(DISASSEMBLY);
        assert_eq!(functions["root"].frame, 112);
        assert_eq!(functions["root"].address, 0x400000);
        assert_eq!(
            functions["root"].calls,
            ["middle", "emergency_only", "_RNvNtCs1_4core9panicking9panic_fmt", "leaf"]
        );
        assert_eq!(functions["middle"].calls, ["leaf"], "a branch inside the function is no call");
        assert!(functions["emergency_only"].indirect);
        assert_eq!(functions["leaf"], Function { address: 0x400400, ..Function::default() });
        assert_eq!(containing(&functions, 0x400108).as_deref(), Some("middle"));
    }

    #[test]
    fn sums_the_deepest_chain_plus_the_red_zone_leaving_out_panics_and_the_emergency_stack() {
        let budget = worst_path(&parse(DISASSEMBLY), "root", &["emergency_only"], &Ftrace::default()).unwrap();
        assert_eq!(budget.bytes, 112 + 64 + RED_ZONE);
        assert_eq!(budget.path, [("root".to_string(), 112), ("middle".to_string(), 64), ("leaf".to_string(), 0)]);
    }

    #[test]
    fn refuses_what_it_cannot_bound() {
        let error = worst_path(&parse(DISASSEMBLY), "root", &[], &Ftrace::default()).unwrap_err().to_string();
        assert!(error.contains("emergency_only calls through a register"), "{error}");
        let recursive = "0 <a>:\n  0:\tstdu 1, -32(1)\n  4:\tbl 0x10 <b>\n10 <b>:\n  10:\tbl 0x0 <a>\n";
        let error = worst_path(&parse(recursive), "a", &[], &Ftrace::default()).unwrap_err().to_string();
        assert!(error.contains("recursion through a"), "{error}");
    }

    #[test]
    fn a_site_costs_the_ftrace_bytes_at_the_entry_depth_of_its_function_not_on_top_of_its_frames() {
        let functions = parse(DISASSEMBLY);
        let mut ftrace = Ftrace { site_bytes: 500, ..Ftrace::default() };
        ftrace.sites.insert("middle".into());
        // middle's own chain is 64; through its site, 500 at its entry.
        let budget = worst_path(&functions, "root", &["emergency_only"], &ftrace).unwrap();
        assert_eq!(budget.bytes, 112 + 500 + RED_ZONE);
        assert_eq!(budget.path, [("root".to_string(), 112), ("ftrace site of middle".to_string(), 500)]);
        // A site whose function goes deeper than the ftrace cost changes nothing.
        ftrace.site_bytes = 10;
        let budget = worst_path(&functions, "root", &["emergency_only"], &ftrace).unwrap();
        assert_eq!(budget.bytes, 112 + 64 + RED_ZONE);
    }

    #[test]
    fn sums_the_stub_frame_and_the_deepest_handler_chain_or_the_graph_return() {
        let ftrace = ftrace_model();
        // stub 400 + assist 32 + heavy 48 + helper 16 (deeper than graph_entry 32
        // and than graph_return 64 + 48).
        let cost = ftrace_cost_of(FTRACE, &ftrace).unwrap();
        assert_eq!(cost.bytes, 400 + 32 + 48 + 16 + RED_ZONE);
        let names: Vec<&str> = cost.path.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names[1..], ["assist", "heavy", "helper"]);
        // A deeper return path wins.
        let deep_return = FTRACE.replace("stdu 1, -64(1)", "stdu 1, -600(1)");
        assert_eq!(ftrace_cost_of(&deep_return, &ftrace).unwrap().bytes, 600 + 48 + RED_ZONE);
    }

    #[test]
    fn refuses_ftrace_costs_it_cannot_bound() {
        let ftrace = ftrace_model();
        let no_frame = FTRACE.replace("  500100:      \tstdu 1, -400(1)\n", "");
        let error = ftrace_cost_of(&no_frame, &ftrace).unwrap_err().to_string();
        assert!(error.contains("stub regs_stub pushes no frame"), "{error}");
        let indirect_handler = FTRACE.replace("  500600:      \tstdu 1, -16(1)", "  500600:      \tbctrl");
        let error = ftrace_cost_of(&indirect_handler, &ftrace).unwrap_err().to_string();
        assert!(error.contains("helper calls through a register"), "{error}");
        let mut traced_helper = ftrace_model();
        traced_helper.sites.insert("helper".into());
        let error = ftrace_cost_of(FTRACE, &traced_helper).unwrap_err().to_string();
        assert!(error.contains("reach helper, which has an ftrace site"), "{error}");
        let mut missing_handler = ftrace_model();
        missing_handler.indirect.insert("assist".into(), vec!["gone".into()]);
        let error = ftrace_cost_of(FTRACE, &missing_handler).unwrap_err().to_string();
        assert!(error.contains("gone is called but not in the disassembly"), "{error}");
    }
}
