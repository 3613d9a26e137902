//! Keeps the kernel's arch seam one-way: a host test reads kernel/src and fails when a path crosses it the wrong way.
//!
//! The kernel reaches the machine only through `crate::arch` (docs/ARCHITECTURE.md,
//! "The arch seam"), and arch/ imports nothing from the generic kernel, so
//! no import cycle runs through it. Two rules, checked on the code with
//! comments and string literals left out (documentation may name what it
//! likes; assembly templates are strings):
//! - outside kernel/src/arch/, no code names `ppc64`: the architecture's
//!   module is private, and generic code writes `crate::arch::...`;
//! - under kernel/src/arch/, every `crate::` (or `$crate::`) path continues
//!   with `arch`, and no chain of `super::` climbs out of arch/. What the
//!   assembly calls in generic code is declared in arch/mod.rs and resolved
//!   by the linker, not imported.

#[cfg(test)]
mod tests {
    use crate::workspace_root;
    use std::path::Path;

    /// `source` with every comment and every string and character literal
    /// blanked out (newlines kept, so line numbers still hold).
    fn code(source: &str) -> String {
        let characters: Vec<char> = source.chars().collect();
        let mut output = String::with_capacity(source.len());
        let blank = |output: &mut String, character: char| output.push(if character == '\n' { '\n' } else { ' ' });
        let mut index = 0;
        while index < characters.len() {
            let character = characters[index];
            let next = characters.get(index + 1).copied();
            let previous_is_word =
                index > 0 && (characters[index - 1].is_alphanumeric() || characters[index - 1] == '_');
            if character == '/' && next == Some('/') {
                while index < characters.len() && characters[index] != '\n' {
                    index += 1;
                }
            } else if character == '/' && next == Some('*') {
                let mut depth = 0;
                loop {
                    match (characters.get(index), characters.get(index + 1)) {
                        (Some('/'), Some('*')) => depth += 1,
                        (Some('*'), Some('/')) => depth -= 1,
                        (None, _) => break,
                        _ => {}
                    }
                    if depth == 0 {
                        index += 2;
                        break;
                    }
                    blank(&mut output, characters[index]);
                    index += 1;
                }
            } else if character == 'r' && !previous_is_word && matches!(next, Some('"' | '#')) {
                // A raw string: r"...", r#"..."#, and so on.
                let hashes = characters[index + 1..].iter().take_while(|&&c| c == '#').count();
                if characters.get(index + 1 + hashes) != Some(&'"') {
                    output.push(character);
                    index += 1;
                    continue;
                }
                index += 2 + hashes;
                while index < characters.len() {
                    if characters[index] == '"'
                        && characters[index + 1..].iter().take(hashes).filter(|&&c| c == '#').count() == hashes
                    {
                        index += 1 + hashes;
                        break;
                    }
                    blank(&mut output, characters[index]);
                    index += 1;
                }
            } else if character == '"' {
                index += 1;
                while index < characters.len() && characters[index] != '"' {
                    if characters[index] == '\\' {
                        blank(&mut output, characters[index]);
                        index += 1;
                    }
                    if index < characters.len() {
                        blank(&mut output, characters[index]);
                    }
                    index += 1;
                }
                index += 1;
            } else if character == '\'' && (next == Some('\\') || characters.get(index + 2) == Some(&'\'')) {
                // A character literal ('x', '"', '\n', '\u{..}'), not a lifetime.
                index += if next == Some('\\') { 3 } else { 2 };
                while index < characters.len() && characters[index] != '\'' {
                    index += 1;
                }
                index += 1;
            } else {
                output.push(character);
                index += 1;
            }
        }
        output
    }

    /// The identifiers and `::`, `{`, `}`, `,` of `code`, each with its line.
    fn tokens(code: &str) -> Vec<(String, usize)> {
        let mut tokens = Vec::new();
        for (number, line) in code.lines().enumerate() {
            let characters: Vec<char> = line.chars().collect();
            let mut index = 0;
            while index < characters.len() {
                let character = characters[index];
                if character.is_alphanumeric() || character == '_' || character == '$' {
                    let start = index;
                    index += 1;
                    while index < characters.len() && (characters[index].is_alphanumeric() || characters[index] == '_')
                    {
                        index += 1;
                    }
                    tokens.push((characters[start..index].iter().collect(), number + 1));
                } else if character == ':' && characters.get(index + 1) == Some(&':') {
                    tokens.push(("::".to_string(), number + 1));
                    index += 2;
                } else {
                    if matches!(character, '{' | '}' | ',' | ';') {
                        tokens.push((character.to_string(), number + 1));
                    }
                    index += 1;
                }
            }
        }
        tokens
    }

    /// How many modules below `kernel/src/arch` the file `path` (relative to
    /// kernel/src/arch) is: how many `super`s stay inside arch.
    fn depth_below_arch(path: &str) -> usize {
        let components = path.split('/').count();
        if path.ends_with("mod.rs") { components - 1 } else { components }
    }

    /// What in `source` (the file at `path`, relative to the workspace) breaks the rules above.
    fn violations(path: &str, source: &str) -> Vec<String> {
        let tokens = tokens(&code(source));
        let text = |index: usize| tokens.get(index).map_or("", |(token, _)| token.as_str());
        let mut found = Vec::new();
        let Some(inside) = path.strip_prefix("kernel/src/arch/") else {
            for (token, line) in &tokens {
                if token == "ppc64" {
                    found.push(format!("{path}:{line}: names ppc64 outside arch/ (write crate::arch::...)"));
                }
            }
            return found;
        };
        let depth = depth_below_arch(inside);
        let mut index = 0;
        while index < tokens.len() {
            let line = tokens[index].1;
            match text(index) {
                "crate" | "$crate" if text(index + 1) == "::" => {
                    // crate::X..., or crate::{X, Y::..., ...}: each X must be arch.
                    let mut heads = Vec::new();
                    if text(index + 2) == "{" {
                        let (mut cursor, mut nesting, mut at_head) = (index + 3, 0, true);
                        while cursor < tokens.len() && !(nesting == 0 && text(cursor) == "}") {
                            match text(cursor) {
                                "{" => nesting += 1,
                                "}" => nesting -= 1,
                                "," if nesting == 0 => at_head = true,
                                head if at_head => {
                                    heads.push(head.to_string());
                                    at_head = false;
                                }
                                _ => {}
                            }
                            cursor += 1;
                        }
                    } else {
                        heads.push(text(index + 2).to_string());
                    }
                    for head in heads.iter().filter(|head| *head != "arch") {
                        found.push(format!("{path}:{line}: arch/ refers to crate::{head} (generic code)"));
                    }
                }
                "super" => {
                    let mut supers = 1;
                    while text(index + 2 * supers - 1) == "::" && text(index + 2 * supers) == "super" {
                        supers += 1;
                    }
                    if supers > depth {
                        found.push(format!("{path}:{line}: {} climbs out of arch/", vec!["super"; supers].join("::")));
                    }
                    index += 2 * supers - 1;
                }
                _ => {}
            }
            index += 1;
        }
        found
    }

    /// Every .rs file under `directory`, as paths relative to the workspace.
    fn rust_files(directory: &Path, files: &mut Vec<String>) {
        let root = workspace_root();
        for entry in std::fs::read_dir(directory).unwrap_or_else(|error| panic!("{}: {error}", directory.display())) {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                rust_files(&path, files);
            } else if path.extension().is_some_and(|extension| extension == "rs") {
                let relative = path.strip_prefix(&root).expect("inside the workspace");
                files.push(relative.to_string_lossy().replace('\\', "/"));
            }
        }
    }

    #[test]
    fn the_arch_seam_is_one_way() {
        let mut files = Vec::new();
        rust_files(&workspace_root().join("kernel/src"), &mut files);
        let arch_files = files.iter().filter(|file| file.starts_with("kernel/src/arch/")).count();
        assert!(
            arch_files >= 10 && files.len() > arch_files + 20,
            "kernel/src read: {} files, {arch_files} in arch/",
            files.len()
        );
        let found: Vec<String> = files
            .iter()
            .flat_map(|file| {
                let source = std::fs::read_to_string(workspace_root().join(file)).expect("readable source");
                violations(file, &source)
            })
            .collect();
        assert!(found.is_empty(), "the arch seam is crossed the wrong way:\n{}", found.join("\n"));
    }

    #[test]
    fn generic_code_naming_ppc64_is_caught() {
        let file = "kernel/src/trace/ops.rs";
        assert_eq!(violations(file, "use crate::arch::ppc64::text;").len(), 1);
        assert_eq!(violations(file, "fn f() { crate::arch::ppc64::registers::timebase(); }").len(), 1);
        assert_eq!(violations(file, "use crate::arch::{ppc64::text, hcall};").len(), 1);
        assert_eq!(violations(file, "use arch::ppc64;").len(), 1);
        assert!(violations(file, "use crate::arch::text; // not arch::ppc64::text\nfn f() {}").is_empty());
        assert!(violations(file, "const NAME: &str = \"arch::ppc64 on ppc64le\";").is_empty());
        assert!(violations(file, "/* arch::ppc64 */ fn ppc64le() {}").is_empty());
        assert!(violations("kernel/src/arch/ppc64/text.rs", "use super::ppc64;").is_empty());
    }

    #[test]
    fn arch_code_reaching_generic_code_is_caught() {
        let file = "kernel/src/arch/ppc64/emergency.rs";
        let caught = |source: &str| violations(file, source);
        assert_eq!(
            caught("use crate::thread::ThreadInfo;"),
            ["kernel/src/arch/ppc64/emergency.rs:1: arch/ refers to crate::thread (generic code)"]
        );
        assert_eq!(caught("global_asm!(\"bl {f}\", f = sym crate::exception::exception_dispatch);").len(), 1);
        assert_eq!(
            caught("fn f() {\n    crate::println!(\"{}\", 1);\n}")[0],
            "kernel/src/arch/ppc64/emergency.rs:2: arch/ refers to crate::println (generic code)"
        );
        assert_eq!(caught("use crate::{arch::text, thread::{self, ThreadInfo}, trace};").len(), 2);
        assert_eq!(caught("use super::super::super::exception;").len(), 1);
        assert_eq!(violations("kernel/src/arch/ppc64/mod.rs", "use super::super::thread;").len(), 1);
        assert_eq!(violations("kernel/src/arch/mod.rs", "use super::thread;").len(), 1);
        // What stays inside arch/.
        assert!(caught("use super::thread_info::ThreadInfo;\nuse super::super::exception_dispatch;").is_empty());
        assert!(caught("static L: $crate::arch::bug::BugLocation = x; use crate::{arch::text};").is_empty());
        assert!(
            caught("// crate::thread::ThreadInfo\n/// see crate::trace\nconst A: &str = \"crate::thread\";").is_empty()
        );
        assert!(caught("global_asm!(r#\"\n  bl crate::trace # \"quoted\"\n\"#, x = const 1);").is_empty());
        assert!(caught("fn f<'a>(x: &'a u8) -> char { let _ = b'\"'; '\"' }\nuse super::text;").is_empty());
    }

    #[test]
    fn comments_and_literals_are_left_out() {
        assert_eq!(code("a // b\nc"), "a \nc");
        assert_eq!(code("a /* b /* c */ d */ e").split_whitespace().collect::<Vec<_>>(), ["a", "e"]);
        assert_eq!(code("x(\"s\\\"t\") y").split_whitespace().collect::<Vec<_>>(), ["x(", ")", "y"]);
        assert_eq!(code("r##\"a \"# b\"## z").trim(), "z");
        assert_eq!(code("'\"' q '\\'' w 'a z").split_whitespace().collect::<Vec<_>>(), ["q", "w", "'a", "z"]);
        assert_eq!(code("for r in x { r#\"\nq\n\"# }").lines().count(), 3);
    }
}
