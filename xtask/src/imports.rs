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
//!
//! And the ways around those rules that a token scan would miss:
//! - crate aliases: `use crate as k;` or `extern crate self as k;` anywhere
//!   make `k::` a second spelling of `crate::`, so under arch/ an alias path
//!   is checked as a `crate::` path, and defining an alias there is refused;
//! - outside arch/, an `extern` block may not declare a symbol that arch/
//!   defines (a label of its assembly, a `#[no_mangle]` item), and
//!   `#[link_name]` is refused there (it would hide which symbol is meant):
//!   generic code reaches arch through `crate::arch` paths;
//! - outside arch/, a string literal (an `asm!`/`global_asm!` template) may
//!   not branch (`b`, `bl`, `ba`, `bla`) to a symbol arch/ defines: write
//!   `bl {f}` with `f = sym crate::arch::...`, a path the first rule sees.
//!   Other instructions that take an address (`addis`/`ld` of a symbol, a
//!   `.quad` of it) and branches through a register are not checked: the
//!   check reads branch mnemonics, not the assembler's symbol table;
//! - raw strings, byte and C strings included (`r"..."`, `br#"..."#`,
//!   `cr"..."`), are lexed as strings, so their contents never read as code.

#[cfg(test)]
mod tests {
    use crate::workspace_root;
    use std::collections::BTreeSet;
    use std::path::Path;

    /// `source` with every comment and every string and character literal
    /// blanked out (newlines kept, so line numbers still hold).
    fn code(source: &str) -> String {
        lex(source).0
    }

    /// The contents of the string literals of `source` (escapes `\n` and
    /// `\t` decoded), each with the line it starts on.
    fn string_literals(source: &str) -> Vec<(String, usize)> {
        lex(source).1
    }

    fn is_word(character: char) -> bool {
        character.is_alphanumeric() || character == '_'
    }

    /// `source` with comments and literals blanked, and the string literals' contents.
    fn lex(source: &str) -> (String, Vec<(String, usize)>) {
        let characters: Vec<char> = source.chars().collect();
        let mut output = String::with_capacity(source.len());
        let mut literals = Vec::new();
        let blank = |output: &mut String, character: char| output.push(if character == '\n' { '\n' } else { ' ' });
        let line_of = |output: &String| 1 + output.bytes().filter(|&byte| byte == b'\n').count();
        let mut index = 0;
        while index < characters.len() {
            let character = characters[index];
            let next = characters.get(index + 1).copied();
            let previous_is_word = index > 0 && is_word(characters[index - 1]);
            // `br"..."`, `cr#"..."#`: a raw string behind a byte or C prefix.
            let prefixed = index > 0
                && matches!(characters[index - 1], 'b' | 'c')
                && !(index > 1 && is_word(characters[index - 2]));
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
            } else if character == 'r' && (!previous_is_word || prefixed) && matches!(next, Some('"' | '#')) {
                // A raw string: r"...", r#"..."#, and so on.
                let hashes = characters[index + 1..].iter().take_while(|&&c| c == '#').count();
                if characters.get(index + 1 + hashes) != Some(&'"') {
                    output.push(character);
                    index += 1;
                    continue;
                }
                if previous_is_word {
                    // The `b` or `c` of the prefix belongs to the literal.
                    output.pop();
                    output.push(' ');
                }
                let line = line_of(&output);
                let mut literal = String::new();
                index += 2 + hashes;
                while index < characters.len() {
                    if characters[index] == '"'
                        && characters[index + 1..].iter().take(hashes).filter(|&&c| c == '#').count() == hashes
                    {
                        index += 1 + hashes;
                        break;
                    }
                    literal.push(characters[index]);
                    blank(&mut output, characters[index]);
                    index += 1;
                }
                literals.push((literal, line));
            } else if character == '"' {
                let line = line_of(&output);
                let mut literal = String::new();
                index += 1;
                while index < characters.len() && characters[index] != '"' {
                    if characters[index] == '\\' {
                        blank(&mut output, characters[index]);
                        index += 1;
                        literal.push(match characters.get(index) {
                            Some('n') => '\n',
                            Some('t') => ' ',
                            Some(&other) => other,
                            None => ' ',
                        });
                    } else if index < characters.len() {
                        literal.push(characters[index]);
                    }
                    if index < characters.len() {
                        blank(&mut output, characters[index]);
                    }
                    index += 1;
                }
                index += 1;
                literals.push((literal, line));
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
        (output, literals)
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

    /// What the check learns from all of kernel/src before it judges a file.
    #[derive(Default)]
    struct Kernel {
        /// Names that alias the crate root (`use crate as k`, `extern crate self as k`).
        aliases: BTreeSet<String>,
        /// Symbols arch/ defines: its assembly's global labels and its `#[no_mangle]` items.
        arch_symbols: BTreeSet<String>,
    }

    impl Kernel {
        /// Learns from `files` (path relative to the workspace, source).
        fn read<'a>(files: impl IntoIterator<Item = (&'a str, &'a str)>) -> Kernel {
            let mut kernel = Kernel::default();
            for (path, source) in files {
                let tokens = tokens(&code(source));
                let text = |index: usize| tokens.get(index).map_or("", |(token, _)| token.as_str());
                for index in 0..tokens.len() {
                    let alias = match (text(index), text(index + 1), text(index + 2), text(index + 3)) {
                        ("crate", "as", alias, _) => alias,
                        ("extern", "crate", "self", "as") => text(index + 4),
                        _ => continue,
                    };
                    if !alias.is_empty() {
                        kernel.aliases.insert(alias.to_string());
                    }
                }
                if !path.starts_with("kernel/src/arch/") {
                    continue;
                }
                for (index, (token, _)) in tokens.iter().enumerate() {
                    if token == "no_mangle" {
                        let item =
                            (index + 1..tokens.len().min(index + 12)).find(|&at| matches!(text(at), "fn" | "static"));
                        if let Some(at) = item {
                            let name = if text(at + 1) == "mut" { text(at + 2) } else { text(at + 1) };
                            kernel.arch_symbols.insert(name.to_string());
                        }
                    }
                }
                for (literal, _) in string_literals(source) {
                    for statement in assembly_statements(&literal) {
                        let words: Vec<&str> = statement.split_whitespace().collect();
                        match words.as_slice() {
                            [".globl" | ".global", name, ..] => {
                                kernel.arch_symbols.insert(name.to_string());
                            }
                            [label, ..] if label.ends_with(':') && symbol_like(&label[..label.len() - 1]) => {
                                kernel.arch_symbols.insert(label[..label.len() - 1].to_string());
                            }
                            _ => {}
                        }
                    }
                }
            }
            kernel
        }
    }

    /// The statements of an assembly template: its lines, and what `;` separates.
    fn assembly_statements(template: &str) -> impl Iterator<Item = &str> {
        template.split(['\n', ';']).map(|statement| statement.split('#').next().unwrap_or("").trim())
    }

    /// A name a label or branch can give: not a local label (`0`, `.L1`), not an operand (`{f}`).
    fn symbol_like(name: &str) -> bool {
        let first = name.chars().next();
        first.is_some_and(|first| first.is_alphabetic() || first == '_' || first == '.')
            && !name.starts_with(".L")
            && name.chars().all(|character| is_word(character) || matches!(character, '.' | '$'))
    }

    /// What in `source` (the file at `path`, relative to the workspace) breaks the rules above.
    fn violations(path: &str, source: &str, kernel: &Kernel) -> Vec<String> {
        let tokens = tokens(&code(source));
        let text = |index: usize| tokens.get(index).map_or("", |(token, _)| token.as_str());
        let mut found = Vec::new();
        let Some(inside) = path.strip_prefix("kernel/src/arch/") else {
            let mut extern_depth = None;
            let mut nesting = 0;
            for (index, (token, line)) in tokens.iter().enumerate() {
                match token.as_str() {
                    "ppc64" => found.push(format!("{path}:{line}: names ppc64 outside arch/ (write crate::arch::...)")),
                    "link_name" => {
                        found.push(format!("{path}:{line}: #[link_name] outside arch/ hides which symbol is declared"))
                    }
                    "extern" if text(index + 1) == "{" => extern_depth = Some(nesting + 1),
                    "{" => nesting += 1,
                    "}" => {
                        if extern_depth == Some(nesting) {
                            extern_depth = None;
                        }
                        nesting -= 1;
                    }
                    "fn" | "static" if extern_depth.is_some() => {
                        let name = if text(index + 1) == "mut" { text(index + 2) } else { text(index + 1) };
                        if kernel.arch_symbols.contains(name) {
                            found.push(format!(
                                "{path}:{line}: an extern block outside arch/ declares {name}, which arch/ defines (use crate::arch::...)"
                            ));
                        }
                    }
                    _ => {}
                }
            }
            for (literal, line) in string_literals(source) {
                for (offset, statement) in literal.split('\n').enumerate() {
                    for statement in assembly_statements(statement) {
                        let mut words = statement.split_whitespace();
                        let (Some("b" | "bl" | "ba" | "bla"), Some(target)) = (words.next(), words.next()) else {
                            continue;
                        };
                        let target = target.split(['@', '+', ',']).next().unwrap_or("");
                        if kernel.arch_symbols.contains(target) {
                            found.push(format!(
                                "{path}:{}: assembly outside arch/ branches to {target}, which arch/ defines (write `bl {{f}}` with `f = sym crate::arch::...`)",
                                line + offset
                            ));
                        }
                    }
                }
            }
            return found;
        };
        let depth = depth_below_arch(inside);
        let mut index = 0;
        while index < tokens.len() {
            let line = tokens[index].1;
            match text(index) {
                "crate" if text(index + 1) == "as" => {
                    found.push(format!("{path}:{line}: arch/ aliases the crate root (`crate as {}`)", text(index + 2)));
                }
                "crate" | "$crate" if text(index + 1) == "::" => heads_outside_arch(&tokens, index, path, &mut found),
                alias
                    if kernel.aliases.contains(alias)
                        && text(index + 1) == "::"
                        && text(index.wrapping_sub(1)) != "::" =>
                {
                    heads_outside_arch(&tokens, index, path, &mut found)
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

    /// For the crate-root path at `tokens[index]` (`crate`, `$crate` or an
    /// alias, then `::`): reports each first module that is not `arch`.
    fn heads_outside_arch(tokens: &[(String, usize)], index: usize, path: &str, found: &mut Vec<String>) {
        let text = |index: usize| tokens.get(index).map_or("", |(token, _)| token.as_str());
        let (root, line) = (text(index), tokens[index].1);
        // root::X..., or root::{X, Y::..., ...}: each X must be arch.
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
        let root = if root == "$crate" { "crate" } else { root };
        for head in heads.iter().filter(|head| *head != "arch") {
            found.push(format!("{path}:{line}: arch/ refers to {root}::{head} (generic code)"));
        }
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
        let sources: Vec<(String, String)> = files
            .iter()
            .map(|file| (file.clone(), std::fs::read_to_string(workspace_root().join(file)).expect("readable source")))
            .collect();
        let kernel = Kernel::read(sources.iter().map(|(file, source)| (file.as_str(), source.as_str())));
        for symbol in ["switch_context", "ftrace_caller", "livepatch_handler", "exception_common"] {
            assert!(kernel.arch_symbols.contains(symbol), "arch/ defines {symbol}: {:?}", kernel.arch_symbols);
        }
        let found: Vec<String> = sources.iter().flat_map(|(file, source)| violations(file, source, &kernel)).collect();
        assert!(found.is_empty(), "the arch seam is crossed the wrong way:\n{}", found.join("\n"));
    }

    /// The violations of `source` at `path`, the kernel learned from it and
    /// from an arch/ file that defines `switch_context` (a label) and
    /// `klp_arch_hook` (a `#[no_mangle]` function).
    fn judged(path: &str, source: &str) -> Vec<String> {
        let arch = "core::arch::global_asm!(r#\"\n    .globl switch_context\nswitch_context:\n    blr\n\"#);\n\
                    #[unsafe(no_mangle)]\npub extern \"C\" fn klp_arch_hook() {}";
        let kernel = Kernel::read([("kernel/src/arch/ppc64/context.rs", arch), (path, source)]);
        violations(path, source, &kernel)
    }

    #[test]
    fn generic_code_naming_ppc64_is_caught() {
        let file = "kernel/src/trace/ops.rs";
        assert_eq!(judged(file, "use crate::arch::ppc64::text;").len(), 1);
        assert_eq!(judged(file, "fn f() { crate::arch::ppc64::registers::timebase(); }").len(), 1);
        assert_eq!(judged(file, "use crate::arch::{ppc64::text, hcall};").len(), 1);
        assert_eq!(judged(file, "use arch::ppc64;").len(), 1);
        assert!(judged(file, "use crate::arch::text; // not arch::ppc64::text\nfn f() {}").is_empty());
        assert!(judged(file, "const NAME: &str = \"arch::ppc64 on ppc64le\";").is_empty());
        assert!(judged(file, "/* arch::ppc64 */ fn ppc64le() {}").is_empty());
        assert!(judged("kernel/src/arch/ppc64/text.rs", "use super::ppc64;").is_empty());
    }

    #[test]
    fn arch_code_reaching_generic_code_is_caught() {
        let file = "kernel/src/arch/ppc64/emergency.rs";
        let caught = |source: &str| judged(file, source);
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
        assert_eq!(judged("kernel/src/arch/ppc64/mod.rs", "use super::super::thread;").len(), 1);
        assert_eq!(judged("kernel/src/arch/mod.rs", "use super::thread;").len(), 1);
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

    #[test]
    fn a_crate_alias_is_a_crate_path_under_arch() {
        let file = "kernel/src/arch/ppc64/emergency.rs";
        assert_eq!(
            judged(file, "use crate as k;\nfn f() { k::thread::kill_current(); }"),
            [
                "kernel/src/arch/ppc64/emergency.rs:1: arch/ aliases the crate root (`crate as k`)",
                "kernel/src/arch/ppc64/emergency.rs:2: arch/ refers to k::thread (generic code)"
            ]
        );
        // An alias made elsewhere (the crate root's `extern crate self as kernel`) counts too.
        let kernel = Kernel::read([("kernel/src/main.rs", "extern crate self as kernel;")]);
        assert_eq!(violations(file, "use kernel::{arch::text, trace::ops};", &kernel).len(), 1);
        assert!(violations(file, "use kernel::arch::text; fn f() { x::kernel::y(); }", &kernel).is_empty());
    }

    #[test]
    fn an_extern_block_outside_arch_declaring_an_arch_symbol_is_caught() {
        let file = "kernel/src/trace/ops.rs";
        assert_eq!(
            judged(file, "unsafe extern \"C\" {\n    fn switch_context(a: u64, b: u64);\n}"),
            [
                "kernel/src/trace/ops.rs:2: an extern block outside arch/ declares switch_context, which arch/ defines (use crate::arch::...)"
            ]
        );
        assert_eq!(judged(file, "unsafe extern \"C\" { static mut klp_arch_hook: u8; }").len(), 1);
        assert_eq!(judged(file, "unsafe extern \"C\" { #[link_name = \"switch_context\"] fn other(); }").len(), 1);
        // Its own symbols and the linker's are fine, and so are Rust functions of the same name.
        assert!(judged(file, "unsafe extern \"C\" { static __bug_table_start: u8; fn my_probe(); }").is_empty());
        assert!(judged(file, "fn switch_context() {}").is_empty());
    }

    #[test]
    fn assembly_outside_arch_branching_to_an_arch_symbol_is_caught() {
        let file = "kernel/src/tests/registers.rs";
        assert_eq!(
            judged(file, "global_asm!(r#\"\n    mr 3, 4\n    bl      switch_context   # back\n\"#);"),
            [
                "kernel/src/tests/registers.rs:3: assembly outside arch/ branches to switch_context, which arch/ defines (write `bl {f}` with `f = sym crate::arch::...`)"
            ]
        );
        assert_eq!(judged(file, "asm!(\"nop\", \"b klp_arch_hook\");").len(), 1);
        assert_eq!(judged(file, "asm!(\"nop\\n  bl switch_context@notoc\");").len(), 1);
        assert_eq!(judged(file, "asm!(\"li 3, 1; bl switch_context\");").len(), 1);
        // Through a sym operand (a Rust path the other rules judge), to a symbol of its own, or in a comment: fine.
        assert!(judged(file, "global_asm!(\"bl {f}\", f = sym crate::arch::context::switch_context);").is_empty());
        assert!(judged(file, "global_asm!(\"my_probe:\\n bl my_probe\\n b 0b # bl switch_context\");").is_empty());
    }

    #[test]
    fn raw_byte_and_c_strings_are_strings() {
        // The raw string is `a\`: what follows is code.
        assert_eq!(code("br\"a\\\" crate::thread z").split_whitespace().collect::<Vec<_>>(), ["crate::thread", "z"]);
        assert_eq!(
            code("let x = br#\"\"crate\"\"#; y").split_whitespace().collect::<Vec<_>>(),
            ["let", "x", "=", ";", "y"]
        );
        assert_eq!(code("cr\"\\\" q").split_whitespace().collect::<Vec<_>>(), ["q"]);
        // The prefix letter of a longer word is no prefix: `nbr` then a normal string.
        assert_eq!(code("nbr\"a\\\"b\" z").split_whitespace().collect::<Vec<_>>(), ["nbr", "z"]);
        let file = "kernel/src/arch/ppc64/emergency.rs";
        assert!(judged(file, "const M: &[u8] = br\"\\\"; use super::text; // \"\nconst N: u8 = 0;").is_empty());
        assert_eq!(judged(file, "const M: &[u8] = br\"\\\";\nuse crate::thread;").len(), 1);
        assert_eq!(string_literals("x(br#\"bl f\"#, \"a\\nb\")"), [("bl f".to_string(), 1), ("a\nb".to_string(), 1)]);
    }
}
