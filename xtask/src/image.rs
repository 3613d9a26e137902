//! What xtask reads from a built kernel image for gdb: where a function is entered, and the in-kernel tests' names.

use anyhow::{Context, Result, bail};
use object::read::elf::{ElfFile64, Sym};
use object::{Endianness, Object, ObjectSection, ObjectSymbol, elf};

/// The address at which a call from the kernel's own code enters function
/// `name`: its ELFv2 local entry point. A function that sets up its TOC
/// pointer starts with a global entry (two instructions computing r2 from
/// r12) that `bl` from the same module skips; the symbol's `st_other` says by
/// how many bytes (ELFv2 ABI, "Symbol Values"). A breakpoint at the global
/// entry of `boot_main` is never hit, and one after the prologue (gdb's
/// `break boot_main`) stops in whatever is inlined first.
pub fn local_entry(data: &[u8], name: &str) -> Result<u64> {
    let file = ElfFile64::<Endianness>::parse(data).context("the kernel is not a 64-bit ELF file")?;
    let symbol = file
        .symbols()
        .find(|symbol| symbol.name() == Ok(name) && symbol.elf_symbol().st_type() == elf::STT_FUNC)
        .with_context(|| format!("the kernel has no function {name}"))?;
    let encoded = (symbol.elf_symbol().st_other() & elf::STO_PPC64_LOCAL_MASK) >> elf::STO_PPC64_LOCAL_BIT;
    let offset = local_entry_offset(encoded).with_context(|| {
        format!("{name} has the reserved local entry value 7 in its st_other: the kernel's symbol table is malformed")
    })?;
    Ok(symbol.address() + offset)
}

/// The local entry's distance from the global entry for the 3-bit value of `st_other`:
/// 0 and 1 mean one entry point; 2 to 6 mean 2^value bytes; 7 is reserved (`None`).
fn local_entry_offset(encoded: u8) -> Option<u64> {
    match encoded {
        0 | 1 => Some(0),
        2..=6 => Some(1 << encoded),
        _ => None,
    }
}

/// The names of the in-kernel tests in the test kernel `data`, in link
/// order, as the test runner prints them (`kernel::tests::modules::...`).
///
/// Each `#[ktest]` registration is a `KernelTest` static in `.ktests`
/// (kernel/src/ktest.rs): `#[repr(C)]`, its first field the name as a
/// `&'static str`, which is (address, length). The names are read from the
/// image rather than from a boot, so that a name that matches no test is an
/// error before QEMU starts.
pub fn kernel_tests(data: &[u8]) -> Result<Vec<String>> {
    let file = ElfFile64::<Endianness>::parse(data).context("the kernel is not a 64-bit ELF file")?;
    let section =
        file.section_by_name(".ktests").context("the kernel has no .ktests section: is it the test kernel?")?;
    let mut registrations: Vec<(u64, String)> = Vec::new();
    for symbol in file.symbols() {
        if symbol.section_index() != Some(section.index()) || symbol.size() == 0 {
            continue;
        }
        let record = read(&file, symbol.address(), 16)?;
        let address = u64::from_le_bytes(record[..8].try_into().expect("8 bytes"));
        let length = u64::from_le_bytes(record[8..].try_into().expect("8 bytes"));
        let name = (length < 4096)
            .then(|| read(&file, address, length as usize).ok())
            .flatten()
            .and_then(|bytes| String::from_utf8(bytes.to_vec()).ok())
            .filter(|name| name.contains("::"))
            .with_context(|| {
                format!(
                    "the record at {:#x} in .ktests does not start with a test's name: \
                     has KernelTest (kernel/src/ktest.rs) changed its layout?",
                    symbol.address()
                )
            })?;
        registrations.push((symbol.address(), name));
    }
    registrations.sort();
    Ok(registrations.into_iter().map(|(_, name)| name).collect())
}

/// `length` bytes at `address` in the image's initialised sections.
fn read<'data>(file: &ElfFile64<'data, Endianness>, address: u64, length: usize) -> Result<&'data [u8]> {
    for section in file.sections() {
        let start = section.address();
        // A malformed record's address and length may add up past the end of the address space.
        let Some(end) = address.checked_add(length as u64) else { continue };
        if address < start || end > start + section.size() {
            continue;
        }
        let Ok(bytes) = section.data() else { continue };
        let offset = (address - start) as usize;
        if let Some(slice) = bytes.get(offset..offset + length) {
            return Ok(slice);
        }
    }
    bail!("no initialised bytes at {address:#x} (+{length}) in the kernel image")
}

/// What `--test NAME` boots, chosen as `cargo xtask test NAME` chooses: the
/// tests whose names contain NAME.
#[derive(Debug, PartialEq, Eq)]
pub enum Selection {
    /// NAME is one test's whole name, or part of one name only: it runs alone (`ktest.only`).
    One(String),
    /// NAME is part of several names: they run one after another in one boot (`ktest.filter`).
    Several(Vec<String>),
}

impl Selection {
    /// The kernel command line that selects the tests.
    pub fn boot_argument(&self, query: &str) -> String {
        match self {
            Selection::One(name) => format!("ktest.only={name}"),
            Selection::Several(_) => format!("ktest.filter={query}"),
        }
    }
}

/// The tests of `names` that `query` selects; an error naming what exists when it selects none.
pub fn select(names: &[String], query: &str) -> Result<Selection> {
    if query.is_empty() || query.contains(char::is_whitespace) {
        bail!("--test takes a test's name or a part of it, without spaces (got {query:?})");
    }
    if names.iter().any(|name| name == query) {
        return Ok(Selection::One(query.to_string()));
    }
    let matching: Vec<String> = names.iter().filter(|name| name.contains(query)).cloned().collect();
    match matching.len() {
        0 => {
            let near = similar(names, query);
            let hint = if near.is_empty() {
                format!("the test kernel has {} tests, named like {}", names.len(), names.first().map_or("?", |n| n))
            } else {
                format!("tests with a similar name: {}", near.join(", "))
            };
            bail!("no kernel test is named {query:?} or has it in its name ({hint})")
        }
        1 => Ok(Selection::One(matching.into_iter().next().expect("one"))),
        _ => Ok(Selection::Several(matching)),
    }
}

/// Up to five names whose function shares the most words (of four letters or
/// more) with the last part of `query`, for a name that matched nothing.
fn similar<'a>(names: &'a [String], query: &str) -> Vec<&'a str> {
    let words: Vec<&str> =
        query.rsplit("::").next().unwrap_or(query).split('_').filter(|word| word.len() >= 4).collect();
    let mut scored: Vec<(usize, &str)> = names
        .iter()
        .map(|name| {
            let function = name.rsplit("::").next().unwrap_or(name);
            (words.iter().filter(|word| function.contains(*word)).count(), name.as_str())
        })
        .filter(|(score, _)| *score > 0)
        .collect();
    // Best first; among equals, in link order.
    scored.sort_by_key(|(score, _)| std::cmp::Reverse(*score));
    scored.into_iter().take(5).map(|(_, name)| name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        ["kernel::tests::shell::greeting_prints", "kernel::tests::modules::loads_a_module", "kernel::tests::modules::x"]
            .map(String::from)
            .to_vec()
    }

    #[test]
    fn selects_by_whole_name_or_part_as_the_test_runner_does() {
        let names = names();
        let one = |name: &str| Selection::One(name.to_string());
        assert_eq!(select(&names, "kernel::tests::modules::x").unwrap(), one("kernel::tests::modules::x"));
        assert_eq!(select(&names, "greeting").unwrap(), one("kernel::tests::shell::greeting_prints"));
        assert_eq!(
            select(&names, "loads_a").unwrap().boot_argument("loads_a"),
            "ktest.only=kernel::tests::modules::loads_a_module"
        );
        let several = select(&names, "modules::").unwrap();
        assert_eq!(several, Selection::Several(names[1..].to_vec()));
        assert_eq!(several.boot_argument("modules::"), "ktest.filter=modules::");
    }

    #[test]
    fn a_name_that_matches_nothing_is_an_error_that_says_what_exists() {
        let error = select(&names(), "loads_the_module").unwrap_err().to_string();
        assert!(error.starts_with("no kernel test is named \"loads_the_module\""), "{error}");
        assert!(error.contains("kernel::tests::modules::loads_a_module"), "{error}");
        let error = select(&names(), "nothing_alike").unwrap_err().to_string();
        assert!(error.contains("the test kernel has 3 tests"), "{error}");
        assert!(select(&names(), "").is_err());
    }

    #[test]
    fn local_entry_offsets_follow_the_abi_encoding() {
        assert_eq!([0, 1, 2, 3, 4, 6].map(local_entry_offset), [0, 0, 4, 8, 16, 64].map(Some));
        assert_eq!(local_entry_offset(7), None);
    }
}
