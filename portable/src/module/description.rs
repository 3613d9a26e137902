//! The `.klp.patch` text: which kernel functions a patch module replaces, and with what.
//!
//! ```text
//! klp-patch 1                                   version, the first line that counts
//! name greeting                                 the patch's name, exactly once
//! replace kernel::hello new_hello               one or more: OLD_NAME NEW_SYMBOL
//! replace kernel::util::parse@2 new_parse       OLD_NAME@N: the Nth function of that name (from 1)
//! replace kernel::x new_x allow_inlined         replace it although callers hold inlined copies
//! atomic-replace                                an atomic replace (cumulative patch), at most once
//! state 1 2                                     a system state it handles: STATE_ID VERSION
//! callback vmlinux pre_patch my_pre_patch       OBJECT (vmlinux or a module) KIND SYMBOL, KIND one of
//!                                               pre_patch post_patch pre_unpatch post_unpatch
//! object hello-module                           the replace lines after it name functions of
//!                                               that loadable target module, not the kernel's
//! build-id 0123…(40 hex digits)                 the kernel it was made for, at most once: the
//!                                               loader refuses it in a kernel with another id
//! toc kernel                                    the module's code runs on the kernel's TOC base
//!                                               (`.TOC.` is the kernel's; calls out need no nop)
//! abi-checked                                   the kernel targets need an ftrace site but not
//!                                               `#[livepatchable]` (the generator compared the ABI)
//! # a comment                                   blank lines and '#' lines are ignored
//! ```
//!
//! Trailing NUL bytes (padding of the section) are ignored. Names are runs of
//! printable ASCII without spaces.

use alloc::collections::BTreeSet;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use super::ModuleError;
use crate::build_id::BuildId;

/// The version line every description starts with.
pub const DESCRIPTION_HEADER: &str = "klp-patch 1";

/// What a patch module replaces, read from its `.klp.patch` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatchDescription {
    /// The patch's name (for `klp enable NAME`).
    pub name: String,
    /// The replaced functions, in the order of their `replace` lines.
    pub functions: Vec<ReplacedFunction>,
    /// An atomic replace (the `atomic-replace` line).
    pub atomic_replace: bool,
    /// The system states it handles: (id, version), ids unique.
    pub states: Vec<(u64, u64)>,
    /// Its callbacks, in the order of their lines.
    pub callbacks: Vec<CallbackLine>,
    /// The build id of the kernel it was made for (the `build-id` line);
    /// `None`: any kernel whose exports and symbols it finds.
    pub build_id: Option<BuildId>,
    /// The module shares the kernel's TOC base (the `toc kernel` line): its
    /// `.TOC.` is the kernel's TOC pointer, its calls out need no TOC restore.
    pub kernel_toc: bool,
    /// The patch's kernel targets need not be `#[livepatchable]` (the
    /// `abi-checked` line): the tool that made it compared both builds' ABIs.
    pub abi_checked: bool,
}

impl PatchDescription {
    /// Whether the patch may go into the kernel whose build id is `running`
    /// (`None`: an image xtask did not fill): yes when it names no build id or
    /// names that one; otherwise the error names both.
    pub fn check_build_id(&self, running: Option<BuildId>) -> Result<(), ModuleError> {
        match self.build_id {
            Some(wanted) if Some(wanted) != running => {
                Err(ModuleError::WrongBuild { patch: self.name.clone(), wanted, running })
            }
            _ => Ok(()),
        }
    }
}

/// One `callback` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackLine {
    /// `vmlinux` or a module's name.
    pub object: String,
    /// One of `CALLBACK_KINDS`.
    pub kind: String,
    /// The module's function (`extern "C" fn(*const u8, usize) -> i32`).
    pub symbol: String,
}

/// The kinds of callback, in the order Linux's `struct klp_callbacks` has them.
pub const CALLBACK_KINDS: [&str; 4] = ["pre_patch", "post_patch", "pre_unpatch", "post_unpatch"];

/// One `replace` line: a kernel function and the module symbol that replaces it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplacedFunction {
    /// The loadable target module the function is in (the last `object`
    /// line before this `replace` line), `None` for the kernel.
    pub object: Option<String>,
    /// The function's name, as the kernel (or the object's module) symbol table spells it.
    pub old_name: String,
    /// Which of several kernel functions with that name (1-based), from an `@N` suffix.
    pub old_position: Option<usize>,
    /// The module symbol (a function defined in the module) that replaces it.
    pub new_symbol: String,
    /// Replace it even though callers hold inlined copies of it, which keep
    /// running the original (the `allow_inlined` flag after NEW_SYMBOL).
    pub allow_inlined: bool,
}

/// The flag that lets a `replace` line name a function with inlined copies.
pub const ALLOW_INLINED: &str = "allow_inlined";

/// An error at 1-based `line`.
fn error(line: usize, reason: impl Into<String>) -> ModuleError {
    ModuleError::Description { line, reason: reason.into() }
}

/// Whether `word` is a usable name: non-empty printable ASCII without spaces.
fn is_name(word: &str) -> bool {
    !word.is_empty() && word.bytes().all(|byte| byte.is_ascii_graphic())
}

/// Splits `OLD_NAME@N` into the name and the position.
fn old_function(line: usize, word: &str) -> Result<(String, Option<usize>), ModuleError> {
    let Some((name, position)) = word.rsplit_once('@') else {
        return Ok((word.to_string(), None));
    };
    let number = match position.parse::<usize>() {
        Ok(number) if number >= 1 && position.bytes().all(|byte| byte.is_ascii_digit()) => number,
        _ => return Err(error(line, format!("position {position:?} of {name} is not a number from 1"))),
    };
    if !is_name(name) {
        return Err(error(line, format!("{word:?} has no function name before '@'")));
    }
    Ok((name.to_string(), Some(number)))
}

/// The lines after a description's header (`header`, e.g. "klp-patch 1",
/// whose first word is `keyword`), each as (1-based line number, words):
/// trailing NUL padding ignored, blank and `#` lines skipped. The errors
/// every description shares: not UTF-8, a NUL inside, another first line,
/// no header at all.
pub(super) fn body_lines<'t>(
    text: &'t [u8],
    keyword: &str,
    header: &str,
) -> Result<Vec<(usize, Vec<&'t str>)>, ModuleError> {
    let end = text.iter().rposition(|&byte| byte != 0).map_or(0, |last| last + 1);
    let text = core::str::from_utf8(&text[..end]).map_err(|_| error(0, "not UTF-8 text"))?;
    if text.contains('\0') {
        return Err(error(0, "NUL byte inside the text"));
    }
    let mut seen_header = false;
    let mut lines = Vec::new();
    for (index, line) in text.split('\n').enumerate() {
        let number = index + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let words: Vec<&str> = line.split_ascii_whitespace().collect();
        if !seen_header {
            if words.join(" ") != header {
                return Err(match words.as_slice() {
                    [first, version] if first == &keyword => error(number, format!("unsupported version {version}")),
                    _ => error(number, format!("expected {header:?} first, found {line:?}")),
                });
            }
            seen_header = true;
            continue;
        }
        lines.push((number, words));
    }
    if !seen_header {
        return Err(error(0, format!("empty, expected {header:?}")));
    }
    Ok(lines)
}

/// Parses the text of a `.klp.patch` section (see the module documentation for the format).
pub fn parse_description(text: &[u8]) -> Result<PatchDescription, ModuleError> {
    let mut name: Option<String> = None;
    let mut functions: Vec<ReplacedFunction> = Vec::new();
    let mut replaced: BTreeSet<(Option<String>, String, Option<usize>)> = BTreeSet::new();
    let mut object: Option<String> = None;
    let mut atomic_replace = false;
    let mut states: Vec<(u64, u64)> = Vec::new();
    let mut callbacks: Vec<CallbackLine> = Vec::new();
    let mut build_id: Option<BuildId> = None;
    let mut kernel_toc = false;
    let mut abi_checked = false;
    for (number, words) in body_lines(text, "klp-patch", DESCRIPTION_HEADER)? {
        match words.as_slice() {
            ["object", module] if is_name(module) => object = Some(module.to_string()),
            ["name", patch] if is_name(patch) => {
                if name.is_some() {
                    return Err(error(number, "a second name line"));
                }
                name = Some(patch.to_string());
            }
            ["replace", old, new, flags @ ..] if is_name(old) && is_name(new) && flags.len() <= 1 => {
                let (old_name, old_position) = old_function(number, old)?;
                let allow_inlined = match flags {
                    [] => false,
                    [flag] if *flag == ALLOW_INLINED => true,
                    _ => {
                        let flags = flags.join(" ");
                        return Err(error(number, format!("unknown flag {flags:?} (expected {ALLOW_INLINED:?})")));
                    }
                };
                if !replaced.insert((object.clone(), old_name.clone(), old_position)) {
                    return Err(error(number, format!("{old} is replaced twice")));
                }
                functions.push(ReplacedFunction {
                    object: object.clone(),
                    old_name,
                    old_position,
                    new_symbol: new.to_string(),
                    allow_inlined,
                });
            }
            ["atomic-replace"] => {
                if atomic_replace {
                    return Err(error(number, "a second atomic-replace line"));
                }
                atomic_replace = true;
            }
            ["state", id, version] => {
                let (Ok(id), Ok(version)) = (id.parse::<u64>(), version.parse::<u64>()) else {
                    return Err(error(number, format!("state {id} {version}: expected two numbers")));
                };
                if states.iter().any(|(other, _)| *other == id) {
                    return Err(error(number, format!("state {id} is declared twice")));
                }
                states.push((id, version));
            }
            ["callback", object, kind, symbol] if is_name(object) && is_name(symbol) => {
                if !CALLBACK_KINDS.contains(kind) {
                    return Err(error(
                        number,
                        format!("unknown callback kind {kind:?} (expected one of {CALLBACK_KINDS:?})"),
                    ));
                }
                if callbacks.iter().any(|line| line.object == *object && line.kind == *kind) {
                    return Err(error(number, format!("a second {kind} callback for {object}")));
                }
                callbacks.push(CallbackLine {
                    object: object.to_string(),
                    kind: kind.to_string(),
                    symbol: symbol.to_string(),
                });
            }
            ["build-id", hex] => {
                if build_id.is_some() {
                    return Err(error(number, "a second build-id line"));
                }
                let Some(id) = BuildId::parse(hex) else {
                    return Err(error(number, format!("build id {hex:?} is not 40 hexadecimal digits")));
                };
                build_id = Some(id);
            }
            ["toc", "kernel"] => {
                if kernel_toc {
                    return Err(error(number, "a second toc line"));
                }
                kernel_toc = true;
            }
            ["abi-checked"] => {
                if abi_checked {
                    return Err(error(number, "a second abi-checked line"));
                }
                abi_checked = true;
            }
            ["toc", ..] => return Err(error(number, "expected \"toc kernel\"")),
            ["abi-checked", ..] => return Err(error(number, "abi-checked takes no argument")),
            ["build-id", ..] => return Err(error(number, "expected \"build-id HEX\"")),
            ["state", ..] => return Err(error(number, "expected \"state ID VERSION\"")),
            ["callback", ..] => return Err(error(number, "expected \"callback OBJECT KIND SYMBOL\"")),
            ["atomic-replace", ..] => return Err(error(number, "atomic-replace takes no argument")),
            ["name", ..] => return Err(error(number, "expected \"name NAME\"")),
            ["object", ..] => return Err(error(number, "expected \"object MODULE\"")),
            ["replace", ..] => {
                return Err(error(number, "expected \"replace OLD_NAME[@N] NEW_SYMBOL [allow_inlined]\""));
            }
            ["klp-patch", ..] => return Err(error(number, "a second version line")),
            [keyword, ..] => return Err(error(number, format!("unknown keyword {keyword:?}"))),
            [] => {}
        }
    }
    let Some(name) = name else {
        return Err(error(0, "no name line"));
    };
    if functions.is_empty() {
        return Err(error(0, "no replace line"));
    }
    // The claim holds for the kernel whose builds were compared, and no other.
    if abi_checked && build_id.is_none() {
        return Err(error(0, "abi-checked without a build-id line: the claim holds for one kernel image only"));
    }
    Ok(PatchDescription { name, functions, atomic_replace, states, callbacks, build_id, kernel_toc, abi_checked })
}
