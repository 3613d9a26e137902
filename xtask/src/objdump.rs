//! `objdump`: disassembles the kernel, or some of its functions, with llvm-objdump.

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use object::{Object, ObjectSymbol};

use crate::qemu::relative;
use crate::symbols::demangle;
use crate::{build, command, output_checked, packages, run_checked};

#[derive(clap::Args)]
pub struct Options {
    /// Disassemble only this function: a mangled name, a demangled path
    /// (`kernel::boot_main`) or its last part (`boot_main`).
    pub symbol: Option<String>,
    /// Disassemble the test kernel.
    #[arg(long)]
    pub test: bool,
}

pub fn main(options: &Options) -> Result<ExitCode> {
    let image = build::main(&build::Options { test: options.test })?;
    let symbols = match &options.symbol {
        Some(query) => {
            let data = std::fs::read(&image).with_context(|| format!("reading {}", image.display()))?;
            let file = object::File::parse(&*data)?;
            let names: Vec<String> = file.symbols().filter_map(|symbol| Some(symbol.name().ok()?.to_string())).collect();
            resolve(&names, query)?
        }
        None => Vec::new(),
    };
    let image = relative(&image);
    let host = output_checked(command("rustc").arg("-vV"))?
        .lines()
        .find_map(|line| line.strip_prefix("host: ").map(str::to_string))
        .context("rustc -vV printed no host")?;
    let llvm_objdump = packages::sysroot()?.join("lib/rustlib").join(host).join("bin/llvm-objdump");
    if llvm_objdump.exists() {
        let mut objdump = command(&llvm_objdump);
        objdump.args(["-d", "--no-show-raw-insn=false", "--demangle", "--print-imm-hex", "--symbolize-operands"]);
        if !symbols.is_empty() {
            objdump.arg(format!("--disassemble-symbols={}", symbols.join(",")));
        }
        run_checked(objdump.arg(image))?;
    } else if packages::find_program("powerpc64le-linux-gnu-objdump").is_some() {
        eprintln!("{} is missing (rustup component add llvm-tools); using binutils", llvm_objdump.display());
        let plain = |objdump: &mut std::process::Command| {
            objdump.args(["-d", "-C"]);
        };
        if symbols.is_empty() {
            let mut objdump = command("powerpc64le-linux-gnu-objdump");
            plain(&mut objdump);
            run_checked(objdump.arg(image))?;
        }
        for symbol in &symbols {
            let mut objdump = command("powerpc64le-linux-gnu-objdump");
            plain(&mut objdump);
            run_checked(objdump.arg(format!("--disassemble={symbol}")).arg(image))?;
        }
    } else {
        bail!(
            "no disassembler: install llvm-objdump with `rustup component add llvm-tools` \
             or binutils with `apt-get install binutils-powerpc64le-linux-gnu`"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The mangled names that `query` designates: itself if it is a symbol, else every symbol
/// whose demangled name (with or without hash) is `query` or ends with `::query`.
pub fn resolve(names: &[String], query: &str) -> Result<Vec<String>> {
    if names.iter().any(|name| name == query) {
        return Ok(vec![query.to_string()]);
    }
    let full = |name: &String| format!("{}", rustc_demangle::demangle(name));
    let mut found: Vec<String> = names.iter().filter(|name| demangle(name) == query || full(name) == query).cloned().collect();
    if found.is_empty() {
        let suffix = format!("::{query}");
        found = names.iter().filter(|name| demangle(name).ends_with(&suffix)).cloned().collect();
    }
    found.sort();
    found.dedup();
    if found.is_empty() {
        let mut similar: Vec<String> = names.iter().map(|name| demangle(name)).filter(|name| name.contains(query)).collect();
        similar.sort();
        similar.dedup();
        similar.truncate(10);
        bail!("no symbol {query:?} in the kernel; similar names: {}", if similar.is_empty() { "none".into() } else { similar.join(", ") });
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        ["_start", "_ZN6kernel9boot_main17h0123456789abcdefE", "_ZN6kernel5sched9boot_main17hfedcba9876543210E", "memcpy"]
            .map(String::from)
            .to_vec()
    }

    #[test]
    fn resolves_mangled_demangled_and_last_part() {
        assert_eq!(resolve(&names(), "_start").unwrap(), ["_start"]);
        assert_eq!(resolve(&names(), "kernel::boot_main").unwrap(), ["_ZN6kernel9boot_main17h0123456789abcdefE"]);
        assert_eq!(
            resolve(&names(), "kernel::boot_main::h0123456789abcdef").unwrap(),
            ["_ZN6kernel9boot_main17h0123456789abcdefE"]
        );
        assert_eq!(resolve(&names(), "boot_main").unwrap().len(), 2);
        let error = resolve(&names(), "boot").unwrap_err().to_string();
        assert!(error.contains("kernel::boot_main"), "{error}");
    }
}
