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
//! docs/ARCHITECTURE.md, "The exception stack budget", has the figures.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use object::{Object, ObjectSection, ObjectSymbol};

use crate::symbols::demangle;
use crate::test::{Options, Tally};
use crate::{build, command, objdump, output_checked};

/// Where the timer path starts (after `exception_common` pushed its frame).
const ROOT: &str = "exception_dispatch";
/// Functions that run on the emergency stack, never below the thread's
/// exception frame: `exception_dispatch` calls the first five only when the
/// entry moved to the emergency stack; `emergency::run` moves there itself.
const LEFT_OUT: [&str; 7] = [
    "kernel::exception::program_check",
    "kernel::exception::stack_overflow",
    "kernel::exception::emergency_stack_overflow",
    "kernel::exception::unexpected",
    "kernel::exception::report",
    "kernel::arch::ppc64::emergency::run",
    "call_on_emergency_stack",
];
/// ELFv2: what a function may use below its r1 without a frame.
const RED_ZONE: u64 = 288;
/// The name of this check in test summaries and filters.
const NAME: &str = "stack_budget::timer_path";

/// One function of the disassembly.
#[derive(Debug, Default, PartialEq)]
pub struct Function {
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
        if let Some(name) = line.strip_suffix(">:").and_then(|head| head.split_once(" <")).map(|(_, name)| name) {
            functions.insert(name.to_string(), Function::default());
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
}

/// A chain's bytes and its functions with their frames.
type Chain = (u64, Vec<(String, u64)>);

/// Sums frames along the deepest chain of calls from `root`, leaving out
/// `left_out` (demangled or mangled names) and panics.
pub fn worst_path(functions: &BTreeMap<String, Function>, root: &str, left_out: &[&str]) -> Result<Budget> {
    fn walk(
        functions: &BTreeMap<String, Function>,
        name: &str,
        left_out: &[&str],
        chain: &mut Vec<String>,
        memo: &mut BTreeMap<String, Chain>,
    ) -> Result<Chain> {
        if let Some(known) = memo.get(name) {
            return Ok(known.clone());
        }
        if chain.iter().any(|caller| caller == name) {
            bail!("recursion through {}: no bound", demangle(name));
        }
        let function =
            functions.get(name).with_context(|| format!("{} is called but not in the disassembly", demangle(name)))?;
        if function.indirect {
            bail!("{} calls through a register: the bound cannot follow it", demangle(name));
        }
        if function.dynamic {
            bail!("{} has a frame of run-time size", demangle(name));
        }
        chain.push(name.to_string());
        let mut deepest = (0, Vec::new());
        for callee in &function.calls {
            if panics(callee) || left_out.iter().any(|out| *out == callee || *out == demangle(callee)) {
                continue;
            }
            let below = walk(functions, callee, left_out, chain, memo)?;
            if deepest.1.is_empty() || below.0 > deepest.0 {
                deepest = below;
            }
        }
        chain.pop();
        let mut path = vec![(demangle(name), function.frame)];
        path.extend(deepest.1);
        let result = (function.frame + deepest.0, path);
        memo.insert(name.to_string(), result.clone());
        Ok(result)
    }
    let (frames, path) = walk(functions, root, left_out, &mut Vec::new(), &mut BTreeMap::new())?;
    Ok(Budget { bytes: frames + RED_ZONE, path })
}

/// The u64 at symbol `name` of the ELF image.
fn read_u64(image: &Path, name: &str) -> Result<u64> {
    let data = std::fs::read(image).with_context(|| format!("reading {}", image.display()))?;
    let file = object::File::parse(&*data)?;
    let symbol =
        file.symbols().find(|symbol| symbol.name() == Ok(name)).with_context(|| format!("no symbol {name}"))?;
    let section = file.section_by_index(symbol.section_index().context("symbol without section")?)?;
    let offset = (symbol.address() - section.address()) as usize;
    let bytes = section.data()?.get(offset..offset + 8).context("symbol outside its section")?;
    Ok(u64::from_le_bytes(bytes.try_into().expect("8 bytes")))
}

/// The `cargo xtask test` phase: checks the kernel's timer path against its STACK_GUARD.
pub fn budget_test(options: &Options, tally: &mut Tally) -> Result<()> {
    if options.filter.as_deref().is_some_and(|filter| !NAME.contains(filter)) {
        return Ok(());
    }
    let image = build::main(&build::Options { test: false })?;
    let llvm_objdump = objdump::llvm_objdump()?;
    let disassembly = output_checked(command(&llvm_objdump).args(["-d", "--no-show-raw-insn"]).arg(&image))?;
    let guard = read_u64(&image, "EXCEPTION_STACK_GUARD")?;
    let verdict = match worst_path(&parse(&disassembly), ROOT, &LEFT_OUT) {
        Ok(budget) => {
            for (name, frame) in &budget.path {
                println!("    {frame:5}  {name}");
            }
            println!("    {RED_ZONE:5}  (red zone of the deepest function)");
            println!("{NAME}: {} bytes below the exception frame; STACK_GUARD {guard}", budget.bytes);
            if budget.bytes <= guard { Ok(()) } else { Err(format!("{} bytes > STACK_GUARD {guard}", budget.bytes)) }
        }
        Err(error) => Err(format!("{error:#}")),
    };
    println!("test {NAME} ... {}", if verdict.is_ok() { "ok" } else { "FAILED" });
    tally.record(NAME, &verdict);
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

    #[test]
    fn parses_frames_calls_and_indirect_calls() {
        let functions = parse(DISASSEMBLY);
        assert_eq!(functions["root"].frame, 112);
        assert_eq!(
            functions["root"].calls,
            ["middle", "emergency_only", "_RNvNtCs1_4core9panicking9panic_fmt", "leaf"]
        );
        assert_eq!(functions["middle"].calls, ["leaf"], "a branch inside the function is no call");
        assert!(functions["emergency_only"].indirect);
        assert_eq!(functions["leaf"], Function::default());
    }

    #[test]
    fn sums_the_deepest_chain_plus_the_red_zone_leaving_out_panics_and_the_emergency_stack() {
        let budget = worst_path(&parse(DISASSEMBLY), "root", &["emergency_only"]).unwrap();
        assert_eq!(budget.bytes, 112 + 64 + RED_ZONE);
        assert_eq!(budget.path, [("root".to_string(), 112), ("middle".to_string(), 64), ("leaf".to_string(), 0)]);
    }

    #[test]
    fn refuses_what_it_cannot_bound() {
        let error = worst_path(&parse(DISASSEMBLY), "root", &[]).unwrap_err().to_string();
        assert!(error.contains("emergency_only calls through a register"), "{error}");
        let recursive = "0 <a>:\n  0:\tstdu 1, -32(1)\n  4:\tbl 0x10 <b>\n10 <b>:\n  10:\tbl 0x0 <a>\n";
        let error = worst_path(&parse(recursive), "a", &[]).unwrap_err().to_string();
        assert!(error.contains("recursion through a"), "{error}");
    }
}
