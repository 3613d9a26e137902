//! Fills the kernel's `.kernel_function_notes` section from its DWARF, and lists the functions a live patch may replace.
//!
//! After linking, xtask reads the kernel's DWARF (`dwarf`) and writes the
//! notes the livepatch core needs (`portable::function_notes`): which
//! functions have inlined copies and in which functions, and the signature of
//! every `#[livepatchable]` function. Kept: the functions with an ftrace site
//! (the only ones a patch could otherwise replace) and the kernel crate's own
//! plain functions that were inlined everywhere (`kernel::...` with no
//! out-of-line copy, not closures or generic instances: a patch naming one
//! learns where its body went). The thousands of
//! `core` and `alloc` helpers inlined everywhere are left out: no patch can
//! name them, and their names alone would take a megabyte.
//!
//! The same reading answers `cargo xtask patch targets [GLOB]`: the
//! functions that can be replaced safely are those with an ftrace site
//! (`__patchable_function_entries`), marked `#[livepatchable]`
//! (`.klp_livepatchable`), and with no inlined copy anywhere. The kernel's
//! `klp patchable` applies the same rule to what it carries.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use anyhow::{Result, bail};
use portable::function_notes::{NoteInput, encode};

use crate::dwarf;
use crate::symbols::{self, Filled, demangle, reservation, section_words};

/// The section that the linker script reserves for the notes.
pub const SECTION: &str = ".kernel_function_notes";
/// The compiler's list of functions with an ftrace site (their global entries).
const SITES: &str = "__patchable_function_entries";
/// The global entries of the `#[livepatchable]` functions.
const LIVEPATCHABLE: &str = ".klp_livepatchable";

/// What the kernel's ELF file and DWARF say about its functions.
pub struct Kernel {
    /// Demangled names of the sized functions, by global entry.
    names: BTreeMap<u64, String>,
    sites: BTreeSet<u64>,
    livepatchable: BTreeSet<u64>,
    notes: Vec<NoteInput>,
}

/// A function a live patch may replace.
#[derive(Debug, PartialEq, Eq)]
pub struct Target {
    pub name: String,
    pub address: u64,
    /// `fn NAME(PARAMETER: TYPE, ...) -> TYPE`, when the DWARF has it.
    pub signature: Option<String>,
}

/// What `Kernel::targets` found for a glob.
#[derive(Debug, Default)]
pub struct Targets {
    /// What can be replaced safely.
    pub replaceable: Vec<Target>,
    /// `#[livepatchable]` functions with inlined copies: (name, the functions holding them).
    pub inlined: Vec<(String, Vec<String>)>,
    /// Functions with a site that are not `#[livepatchable]`.
    pub unmarked: usize,
}

impl Kernel {
    /// Reads the symbols, the sites, the `#[livepatchable]` list and the DWARF of `data`.
    pub fn read(data: &[u8]) -> Result<Kernel> {
        let functions = symbols::functions(data)?;
        let mut names = BTreeMap::new();
        let mut by_symbol: HashMap<&str, u64> = HashMap::new();
        for (symbol, address, _) in &functions {
            names.entry(*address).or_insert_with(|| demangle(symbol));
            by_symbol.insert(symbol.as_str(), *address);
        }
        let sites: BTreeSet<u64> = section_words(data, SITES)?.into_iter().collect();
        let livepatchable: BTreeSet<u64> = section_words(data, LIVEPATCHABLE)?.into_iter().collect();
        let facts = dwarf::read(data, &livepatchable)?;
        let mut notes: BTreeMap<u64, NoteInput> = BTreeMap::new();
        let mut everywhere: Vec<NoteInput> = Vec::new();
        for (symbol, callers) in &facts.inlined {
            // Copies in functions the linker dropped (no symbol) do not run.
            let callers: Vec<u64> = callers.iter().copied().filter(|caller| names.contains_key(caller)).collect();
            if callers.is_empty() {
                continue;
            }
            let name = demangle(symbol);
            match by_symbol.get(symbol.as_str()) {
                Some(&address) if sites.contains(&address) => {
                    notes.insert(address, NoteInput { function: Some(address), name, signature: None, callers });
                }
                None if is_plain_kernel_function(&name) => {
                    everywhere.push(NoteInput { function: None, name, signature: None, callers })
                }
                _ => {}
            }
        }
        for &address in &livepatchable {
            let name = names.get(&address).cloned().unwrap_or_else(|| format!("{address:#x}"));
            let signature = facts.signatures.get(&address).map(|signature| signature.render(&name));
            notes
                .entry(address)
                .or_insert_with(|| NoteInput { function: Some(address), name, signature: None, callers: Vec::new() })
                .signature = signature;
        }
        let notes = notes.into_values().chain(everywhere).collect();
        Ok(Kernel { names, sites, livepatchable, notes })
    }

    /// The notes to embed.
    pub fn notes(&self) -> &[NoteInput] {
        &self.notes
    }

    fn note(&self, address: u64) -> Option<&NoteInput> {
        self.notes.iter().find(|note| note.function == Some(address))
    }

    /// The name of the function at `address`.
    fn name(&self, address: u64) -> String {
        self.names.get(&address).cloned().unwrap_or_else(|| format!("{address:#x}"))
    }

    /// The functions with a site whose names match `glob`, sorted by name:
    /// which can be replaced safely, and why the others cannot.
    pub fn targets(&self, glob: &str) -> Targets {
        let mut targets = Targets::default();
        for &address in &self.sites {
            let name = self.name(address);
            if !portable::ftrace::glob_match(glob, &name) {
                continue;
            }
            if !self.livepatchable.contains(&address) {
                targets.unmarked += 1;
                continue;
            }
            match self.note(address) {
                Some(note) if !note.callers.is_empty() => {
                    targets.inlined.push((name, note.callers.iter().map(|caller| self.name(*caller)).collect()))
                }
                note => targets.replaceable.push(Target {
                    name,
                    address,
                    signature: note.and_then(|note| note.signature.clone()),
                }),
            }
        }
        targets.replaceable.sort_by(|left, right| left.name.cmp(&right.name));
        targets.inlined.sort();
        targets
    }
}

/// Whether `name` is a plain function of the kernel crate, one a patch could
/// name: a `kernel::` path, not a closure, not a generic instance.
fn is_plain_kernel_function(name: &str) -> bool {
    name.starts_with("kernel::") && !name.contains(['{', '<'])
}

/// Writes the notes of `kernel` into `data` (a linked kernel) at the section's file offset.
pub fn fill(data: &mut [u8], kernel: &Kernel) -> Result<Filled> {
    let Some((offset, capacity)) = reservation(data, SECTION)? else {
        return Ok(Filled::NoSection);
    };
    let Some(table) = encode(kernel.notes(), capacity) else {
        let needed = encode(kernel.notes(), usize::MAX).map_or(0, |table| table.len());
        bail!(
            "the notes on {} functions need {needed} bytes but section {SECTION} holds only {capacity}; \
             enlarge the reservation in the kernel",
            kernel.notes().len()
        );
    };
    let target = &mut data[offset..offset + capacity];
    target.fill(0);
    target[..table.len()].copy_from_slice(&table);
    Ok(Filled::Table { count: kernel.notes().len(), used: table.len(), capacity })
}

/// The signature line `patch targets` prints for `target`.
pub fn describe(target: &Target) -> String {
    target.signature.clone().unwrap_or_else(|| format!("{} (no signature in the DWARF)", target.name))
}

/// The name of the check of the test kernel's notes in test summaries and filters.
pub const CHECK: &str = "function_notes::test_kernel_targets";

/// The check `cargo xtask test` runs on the test kernel it just built: what
/// the host reads from its ELF and DWARF about the deliberately inlined test
/// target (kernel/src/tests/inlined.rs) is what `patch targets` must say.
pub fn check_test_kernel(image: &std::path::Path) -> Result<(), String> {
    let data = std::fs::read(image).map_err(|error| format!("reading {}: {error}", image.display()))?;
    let kernel = Kernel::read(&data).map_err(|error| format!("{error:#}"))?;
    let targets = kernel.targets("kernel::tests::inlined::*");
    let replaceable: Vec<String> = targets.replaceable.iter().map(describe).collect();
    let expected = ["fn kernel::tests::inlined::livepatchable_holder(value: u64) -> u64"];
    if replaceable != expected {
        return Err(format!("replaceable {replaceable:?}, expected {expected:?}"));
    }
    let holders = ["kernel::tests::inlined::livepatchable_holder", "kernel::tests::inlined::plain_holder"];
    let sorted = |found: &[String]| {
        let mut found = found.to_vec();
        found.sort();
        found
    };
    match targets.inlined.as_slice() {
        [(name, found)] if name == "kernel::tests::inlined::inlined_target" && sorted(found) == holders => Ok(()),
        other => Err(format!("inlined {other:?}, expected inlined_target in {holders:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kernel of five functions with sites: two marked, of which one has
    /// inlined copies; one inlined everywhere; one without a site.
    fn kernel() -> Kernel {
        let names =
            [(0x100, "k::marked"), (0x200, "k::copied"), (0x300, "k::plain"), (0x400, "k::holder"), (0x500, "x")];
        Kernel {
            names: names.iter().map(|(address, name)| (*address, name.to_string())).collect(),
            sites: BTreeSet::from([0x100, 0x200, 0x300, 0x400]),
            livepatchable: BTreeSet::from([0x100, 0x200]),
            notes: vec![
                NoteInput {
                    function: Some(0x100),
                    name: "k::marked".into(),
                    signature: Some("fn k::marked()".into()),
                    callers: vec![],
                },
                NoteInput {
                    function: Some(0x200),
                    name: "k::copied".into(),
                    signature: None,
                    callers: vec![0x400, 0x300],
                },
                NoteInput { function: None, name: "k::gone".into(), signature: None, callers: vec![0x400] },
            ],
        }
    }

    #[test]
    fn targets_are_marked_with_a_site_and_inlined_nowhere() {
        let targets = kernel().targets("*");
        assert_eq!(
            targets.replaceable,
            [Target { name: "k::marked".into(), address: 0x100, signature: Some("fn k::marked()".into()) }]
        );
        assert_eq!(targets.inlined, [("k::copied".to_string(), vec!["k::holder".to_string(), "k::plain".to_string()])]);
        assert_eq!(targets.unmarked, 2, "k::plain and k::holder");
        let none = kernel().targets("k::p*");
        assert!(none.replaceable.is_empty() && none.inlined.is_empty());
        assert_eq!(none.unmarked, 1);
    }

    #[test]
    fn only_plain_kernel_functions_are_kept_when_inlined_everywhere() {
        assert!(is_plain_kernel_function("kernel::memory::usage"));
        assert!(!is_plain_kernel_function("kernel::module::load::{closure#0}"));
        assert!(!is_plain_kernel_function("kernel::tests::replaced::<u64>"));
        assert!(!is_plain_kernel_function("core::ptr::drop_in_place"));
    }
}
