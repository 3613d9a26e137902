//! The `.klp.module` text: what a loadable target module is called, its init and exit, and which of its functions live patches may replace.
//!
//! ```text
//! klp-module 1                         version, the first line that counts
//! name hello-module                    the module's name, exactly once
//! init hello_module_init               optional, at most once: extern "C" fn() -> i32, 0 = success
//! exit hello_module_exit               optional, at most once: extern "C" fn()
//! livepatchable hello_module_message   zero or more: a function a patch may replace
//! # a comment                          blank lines and '#' lines are ignored
//! ```
//!
//! Trailing NUL bytes (padding of the section) are ignored. Names are runs of
//! printable ASCII without spaces; a function is named at most once among the
//! `livepatchable` lines. `klp_patch::klp_module!` writes this text.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use super::ModuleError;

/// The version line every target module description starts with.
pub const MODULE_HEADER: &str = "klp-module 1";

/// The section that holds a target module's description.
pub const MODULE_SECTION: &str = ".klp.module";

/// A loadable target module, read from its `.klp.module` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleDescription {
    /// The module's name (what patches name as their object, `klp unload NAME`).
    pub name: String,
    /// The symbol of its init function, run once it is linked (`extern "C" fn() -> i32`).
    pub init: Option<String>,
    /// The symbol of its exit function, run before it is unloaded (`extern "C" fn()`).
    pub exit: Option<String>,
    /// The functions a live patch may replace, in the order of their lines.
    pub livepatchable: Vec<String>,
}

impl ModuleDescription {
    /// Every function symbol the description names: init, exit, then the livepatchable ones.
    pub fn functions(&self) -> impl Iterator<Item = &str> {
        self.init.iter().chain(self.exit.iter()).chain(self.livepatchable.iter()).map(String::as_str)
    }
}

fn error(line: usize, reason: impl Into<String>) -> ModuleError {
    ModuleError::Description { line, reason: reason.into() }
}

fn is_name(word: &str) -> bool {
    !word.is_empty() && word.bytes().all(|byte| byte.is_ascii_graphic())
}

/// Sets a field that may appear once.
fn once(field: &mut Option<String>, keyword: &str, value: &str, line: usize) -> Result<(), ModuleError> {
    if field.is_some() {
        return Err(error(line, format!("a second {keyword} line")));
    }
    *field = Some(value.to_string());
    Ok(())
}

/// Parses the text of a `.klp.module` section (see the module documentation for the format).
pub fn parse_module_description(text: &[u8]) -> Result<ModuleDescription, ModuleError> {
    let (mut name, mut init, mut exit) = (None, None, None);
    let mut livepatchable: Vec<String> = Vec::new();
    for (number, words) in super::description::body_lines(text, "klp-module", MODULE_HEADER)? {
        match words.as_slice() {
            ["name", value] if is_name(value) => once(&mut name, "name", value, number)?,
            ["init", value] if is_name(value) => once(&mut init, "init", value, number)?,
            ["exit", value] if is_name(value) => once(&mut exit, "exit", value, number)?,
            ["livepatchable", value] if is_name(value) => {
                if livepatchable.iter().any(|known| known == value) {
                    return Err(error(number, format!("{value} is named livepatchable twice")));
                }
                livepatchable.push(value.to_string());
            }
            [keyword @ ("name" | "init" | "exit" | "livepatchable"), ..] => {
                return Err(error(number, format!("expected \"{keyword} SYMBOL\"")));
            }
            ["klp-module", ..] => return Err(error(number, "a second version line")),
            [keyword, ..] => return Err(error(number, format!("unknown keyword {keyword:?}"))),
            [] => {}
        }
    }
    let Some(name) = name else {
        return Err(error(0, "no name line"));
    };
    if init.is_some() && init == exit {
        return Err(error(0, "init and exit are the same function"));
    }
    Ok(ModuleDescription { name, init, exit, livepatchable })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line_of(text: &str) -> usize {
        match parse_module_description(text.as_bytes()) {
            Err(ModuleError::Description { line, .. }) => line,
            other => panic!("{text:?} was not refused: {other:?}"),
        }
    }

    #[test]
    fn reads_every_field() {
        let text = b"# hello\nklp-module 1\nname hello-module\n\ninit hello_init\nexit hello_exit\n\
                     livepatchable hello_message\nlivepatchable hello_other\n\0\0";
        let description = parse_module_description(text).unwrap();
        assert_eq!(
            description,
            ModuleDescription {
                name: "hello-module".into(),
                init: Some("hello_init".into()),
                exit: Some("hello_exit".into()),
                livepatchable: alloc::vec!["hello_message".into(), "hello_other".into()],
            }
        );
        assert_eq!(
            description.functions().collect::<Vec<_>>(),
            ["hello_init", "hello_exit", "hello_message", "hello_other"]
        );
    }

    #[test]
    fn init_exit_and_livepatchable_are_optional() {
        let description = parse_module_description(b"klp-module 1\nname bare\n").unwrap();
        assert_eq!((description.init, description.exit, description.livepatchable.len()), (None, None, 0));
    }

    #[test]
    fn refuses_bad_text_naming_the_line() {
        assert_eq!(line_of(""), 0);
        assert_eq!(line_of("klp-patch 1\nname x\n"), 1);
        assert_eq!(line_of("klp-module 2\nname x\n"), 1);
        assert_eq!(line_of("klp-module 1\ninit a\n"), 0);
        assert_eq!(line_of("klp-module 1\nname x\nname y\n"), 3);
        assert_eq!(line_of("klp-module 1\nname x\ninit a\ninit b\n"), 4);
        assert_eq!(line_of("klp-module 1\nname x\nexit a\nexit b\n"), 4);
        assert_eq!(line_of("klp-module 1\nname x\nlivepatchable f\nlivepatchable f\n"), 4);
        assert_eq!(line_of("klp-module 1\nname x\ninit a b\n"), 3);
        assert_eq!(line_of("klp-module 1\nname x\nlivepatchable\n"), 3);
        assert_eq!(line_of("klp-module 1\nname x\nreplace a b\n"), 3);
        assert_eq!(line_of("klp-module 1\nklp-module 1\nname x\n"), 2);
        assert_eq!(line_of("klp-module 1\nname x\ninit f\nexit f\n"), 0);
        assert_eq!(line_of("klp-module 1\nname x\0y\n"), 0);
        assert!(matches!(
            parse_module_description(b"klp-module 1\nname \xff\n"),
            Err(ModuleError::Description { line: 0, .. })
        ));
    }
}
