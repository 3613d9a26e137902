//! `objdump`: disassembles the kernel, or some of its functions, with llvm-objdump.

use std::io::{BufRead, BufReader, Write};
use std::process::{ExitCode, Stdio};

use anyhow::{Context, Result, bail};
use object::{Object, ObjectSymbol};

use crate::qemu::{Guard, relative};
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
            let names: Vec<String> =
                file.symbols().filter_map(|symbol| Some(symbol.name().ok()?.to_string())).collect();
            resolve(&names, query)?
        }
        None => Vec::new(),
    };
    let image = relative(&image);
    let llvm_objdump = llvm_objdump()?;
    if llvm_objdump.exists() {
        let mut objdump = command(&llvm_objdump);
        // Raw instruction words are shown by default (this llvm-objdump refuses
        // `--no-show-raw-insn=false`). Names stay mangled, so that the symbols
        // given are the mangled ones, and are demangled (without hash) here.
        objdump.args(["-d", "--print-imm-hex", "--symbolize-operands"]);
        if !symbols.is_empty() {
            objdump.arg(format!("--disassemble-symbols={}", symbols.join(",")));
        }
        objdump.arg(image).stdout(Stdio::piped());
        let mut guard = Guard::spawn(&mut objdump)?;
        let mut stdout = std::io::stdout().lock();
        for line in BufReader::new(guard.child().stdout.take().expect("piped")).lines() {
            // A closed pager or `head` ends the listing early: not an error.
            if writeln!(stdout, "{}", demangle_line(&line?)).is_err() {
                return Ok(ExitCode::SUCCESS);
            }
        }
        let status = guard.child().wait()?;
        if !status.success() {
            bail!("llvm-objdump failed with {status}");
        }
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

/// Where the llvm-tools component keeps llvm-objdump (it may be missing).
pub fn llvm_objdump() -> Result<std::path::PathBuf> {
    let host = output_checked(command("rustc").arg("-vV"))?
        .lines()
        .find_map(|line| line.strip_prefix("host: ").map(str::to_string))
        .context("rustc -vV printed no host")?;
    Ok(packages::sysroot()?.join("lib/rustlib").join(host).join("bin/llvm-objdump"))
}

/// The mangled names that `query` designates: itself if it is a symbol, else every symbol
/// whose demangled name (with or without hash) is `query` or ends with `::query`.
pub fn resolve(names: &[String], query: &str) -> Result<Vec<String>> {
    if names.iter().any(|name| name == query) {
        return Ok(vec![query.to_string()]);
    }
    let full = |name: &String| format!("{}", rustc_demangle::demangle(name));
    let mut found: Vec<String> =
        names.iter().filter(|name| demangle(name) == query || full(name) == query).cloned().collect();
    if found.is_empty() {
        let suffix = format!("::{query}");
        found = names.iter().filter(|name| demangle(name).ends_with(&suffix)).cloned().collect();
    }
    found.sort();
    found.dedup();
    if found.is_empty() {
        let mut similar: Vec<String> =
            names.iter().map(|name| demangle(name)).filter(|name| name.contains(query)).collect();
        similar.sort();
        similar.dedup();
        similar.truncate(10);
        bail!(
            "no symbol {query:?} in the kernel; similar names: {}",
            if similar.is_empty() { "none".into() } else { similar.join(", ") }
        );
    }
    Ok(found)
}

/// `line` with each Rust symbol name (`_R...`, `_ZN...`) demangled, without hash.
pub fn demangle_line(line: &str) -> String {
    let symbol_character = |c: char| c.is_ascii_alphanumeric() || "_$.".contains(c);
    let mut result = String::with_capacity(line.len());
    let mut rest = line;
    while !rest.is_empty() {
        let length = rest.find(|c| !symbol_character(c)).unwrap_or(rest.len()).max(1);
        let (word, tail) = rest.split_at(rest.ceil_char_boundary(length));
        match rustc_demangle::try_demangle(word) {
            Ok(name) if word.starts_with("_R") || word.starts_with("_ZN") => result.push_str(&format!("{name:#}")),
            _ => result.push_str(word),
        }
        rest = tail;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        [
            "_start",
            "_ZN6kernel9boot_main17h0123456789abcdefE",
            "_ZN6kernel5sched9boot_main17hfedcba9876543210E",
            "memcpy",
        ]
        .map(String::from)
        .to_vec()
    }

    #[test]
    fn demangles_names_inside_disassembly() {
        assert_eq!(
            demangle_line("  402230: 48 00 00 01  bl 0x402230 <_RNvCsayIFwoTj0hd_6kernel9power_off+0x8>"),
            "  402230: 48 00 00 01  bl 0x402230 <kernel::power_off+0x8>"
        );
        assert_eq!(demangle_line("0000 <_ZN6kernel9boot_main17h0123456789abcdefE>:"), "0000 <kernel::boot_main>:");
        assert_eq!(demangle_line("<memcpy> é _Rnot"), "<memcpy> é _Rnot");
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
