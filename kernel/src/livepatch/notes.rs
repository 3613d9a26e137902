//! Which functions have inlined copies, and what can be replaced safely: the notes xtask writes from the DWARF.
//!
//! A live patch redirects the calls that reach a function's ftrace site. A
//! copy of the function's body that the compiler inlined into a caller has
//! no site: the caller runs the original code whatever is patched. So a patch
//! of `kernel::memory::usage` that `mem` had inlined was accepted and did
//! nothing. xtask reads every `DW_TAG_inlined_subroutine` of the kernel's
//! DWARF after linking and fills `.kernel_function_notes`
//! (`portable::function_notes`) with each function's copies, by the global
//! entry of the function holding them, and with the signature of every
//! `#[livepatchable]` function. `livepatch::add` refuses a target with
//! copies, naming where they are and which of those functions could be
//! patched instead, unless the patch allows it per function.
use super::is_livepatchable;
use crate::reserved::Reserved;
use crate::{symbols, trace};
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use portable::function_notes::{FunctionNotes, Note};

/// Bytes reserved for the notes in the image (xtask fails if they do not fit).
pub const CAPACITY: usize = 128 * 1024;

#[used]
#[unsafe(link_section = ".kernel_function_notes")]
static KERNEL_FUNCTION_NOTES: Reserved<CAPACITY> = Reserved::zeroed();

/// The notes, if xtask filled them.
pub fn table() -> Option<FunctionNotes<'static>> {
    FunctionNotes::parse(KERNEL_FUNCTION_NOTES.bytes())
}

/// The note on the function whose global entry is `entry`.
pub fn note(entry: u64) -> Option<Note<'static>> {
    table()?.at(entry)
}

/// A function holding an inlined copy of another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// Its name as the symbol table spells it.
    pub name: String,
    /// Whether a live patch may replace it (see [`is_patchable`]).
    pub patchable: bool,
}

/// Formats holders as `A, B, C (patchable instead: A, C)`, or `A (none of them is patchable)`.
pub struct Holders<'a>(pub &'a [Holder]);

impl fmt::Display for Holders<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, holder) in self.0.iter().enumerate() {
            write!(formatter, "{}{}", if index == 0 { "" } else { ", " }, holder.name)?;
        }
        let mut patchable = self.0.iter().filter(|holder| holder.patchable).map(|holder| holder.name.as_str());
        match patchable.next() {
            Some(first) => {
                write!(formatter, " (patchable instead: {first}")?;
                patchable.try_for_each(|name| write!(formatter, ", {name}"))?;
                write!(formatter, ")")
            }
            None => write!(formatter, " (none of them is patchable)"),
        }
    }
}

/// The functions holding the inlined copies `note` lists.
pub fn holders(note: &Note) -> Vec<Holder> {
    note.callers()
        .map(|caller| Holder {
            name: symbols::table()
                .and_then(|table| table.lookup(caller))
                .map_or_else(|| alloc::format!("{caller:#x}"), |(symbol, _)| String::from(symbol.name)),
            patchable: is_patchable(caller),
        })
        .collect()
}

/// The functions holding inlined copies of the function at `entry` (none when it has none).
pub fn inlined_into(entry: u64) -> Vec<Holder> {
    note(entry).map(|note| holders(&note)).unwrap_or_default()
}

/// Whether a live patch can replace the function at `entry` safely: it has
/// an ftrace site, is marked `#[livepatchable]`, and no caller holds an
/// inlined copy of it.
pub fn is_patchable(entry: u64) -> bool {
    trace::site_table().index_of(entry).is_some_and(|index| trace::site_table().sites()[index].function == entry)
        && is_livepatchable(entry)
        && !note(entry).is_some_and(|note| note.is_inlined())
}

/// A function `klp patchable` lists.
pub struct Target {
    pub name: &'static str,
    /// `fn NAME(PARAMETER: TYPE, ...) -> TYPE`, from the notes.
    pub signature: Option<&'static str>,
}

/// What `klp patchable GLOB` reports.
#[derive(Default)]
pub struct Targets {
    /// The functions matching the glob that can be replaced safely, by name.
    pub replaceable: Vec<Target>,
    /// `#[livepatchable]` functions matching it that have inlined copies, with where.
    pub inlined: Vec<(&'static str, Vec<Holder>)>,
    /// Functions matching it with a site but not marked `#[livepatchable]`.
    pub unmarked: usize,
}

/// The functions with an ftrace site whose names match `glob`, sorted:
/// which can be replaced safely, and why the others cannot.
pub fn targets(glob: &str) -> Targets {
    let mut targets = Targets::default();
    for site in trace::site_table().sites() {
        if !portable::ftrace::glob_match(glob, site.name) {
            continue;
        }
        if !is_livepatchable(site.function) {
            targets.unmarked += 1;
            continue;
        }
        let note = note(site.function);
        match note {
            Some(note) if note.is_inlined() => targets.inlined.push((site.name, holders(&note))),
            _ => targets.replaceable.push(Target { name: site.name, signature: note.and_then(|note| note.signature) }),
        }
    }
    targets.replaceable.sort_by(|left, right| left.name.cmp(right.name));
    targets.inlined.sort_by(|left, right| left.0.cmp(right.0));
    targets
}
