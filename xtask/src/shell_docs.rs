//! Keeps the README's list of shell commands in step with the shell: a host test compares them.
//!
//! Three places name the shell's commands: the `COMMANDS` table in
//! kernel/src/shell.rs (with each command's help text, which `help` prints),
//! the match arms that run the `klp`, `trace`, `probe`, `ftrace` and `demo` subcommands, and the README's
//! "In the shell" paragraph. The test reads all three as text and fails,
//! naming the difference, when one of them gains or loses a command.

#[cfg(test)]
mod tests {
    use crate::workspace_root;
    use std::collections::BTreeSet;

    fn read(path: &str) -> String {
        std::fs::read_to_string(workspace_root().join(path)).unwrap_or_else(|error| panic!("reading {path}: {error}"))
    }

    /// The quoted text after each `key` in `text` (e.g. every `name: "..."`).
    fn quoted_after<'a>(text: &'a str, key: &str) -> Vec<&'a str> {
        text.match_indices(key)
            .filter_map(|(index, _)| {
                let rest = &text[index + key.len()..];
                let rest = rest.strip_prefix('"')?;
                Some(&rest[..rest.find('"')?])
            })
            .collect()
    }

    /// The shell's table: each command's name and help text.
    fn commands(shell: &str) -> Vec<(String, String)> {
        let table = &shell[shell.find("const COMMANDS").expect("shell.rs has COMMANDS")..];
        let table = &table[..table.find("];").expect("COMMANDS ends")];
        let names = quoted_after(table, "name: ");
        let helps = quoted_after(table, "help: ");
        assert_eq!(names.len(), helps.len(), "every command has a help text");
        names.into_iter().zip(helps).map(|(name, help)| (name.to_string(), help.to_string())).collect()
    }

    /// The subcommands a help text lists: `prefix: cmd a X | b | c Y` -> {a, b, c}.
    fn listed_subcommands(help: &str, command: &str) -> BTreeSet<String> {
        let list = help.split_once(": ").map_or(help, |(_, list)| list);
        list.split('|')
            .map(|part| {
                let mut words = part.split_whitespace();
                let first = words.next().unwrap_or_default();
                if first == command { words.next().unwrap_or_default() } else { first }.to_string()
            })
            .collect()
    }

    /// The string patterns of the match arms in `fn NAME(`'s body.
    fn match_arms(shell: &str, function: &str) -> BTreeSet<String> {
        let start = shell.find(&format!("\nfn {function}(")).unwrap_or_else(|| panic!("shell.rs has fn {function}"));
        let body = &shell[start..];
        let body = &body[..body.find("\n}\n").expect("the function ends")];
        body.lines()
            .filter_map(|line| {
                let line = line.trim_start().strip_prefix('"')?;
                let (word, rest) = line.split_once('"')?;
                (rest.trim_start().starts_with("=>") || rest.trim_start().starts_with("if ")).then(|| word.to_string())
            })
            .collect()
    }

    /// The backticked items of the README's "In the shell" paragraph.
    fn readme_items(readme: &str) -> Vec<String> {
        let start = readme.find("In the shell (`klp> `):").expect("README has the shell paragraph");
        let paragraph = &readme[start + "In the shell (`klp> `):".len()..];
        let paragraph =
            &paragraph[..paragraph.find("`poweroff`").expect("the paragraph ends with poweroff") + "`poweroff`".len()];
        paragraph.split('`').skip(1).step_by(2).map(str::to_string).collect()
    }

    #[test]
    fn readme_help_and_shell_name_the_same_commands() {
        let shell = read("kernel/src/shell.rs");
        let readme = read("README.md");
        let commands = commands(&shell);
        let items = readme_items(&readme);
        let names: BTreeSet<String> = commands.iter().map(|(name, _)| name.clone()).collect();
        // Every backticked item starts with a command name, except the two in
        // the remark on `load` (`load`, `cargo xtask run`); anything else left
        // over is a command the shell does not have, and fails the comparison.
        let remarks = ["load", "cargo"];
        let readme_names: BTreeSet<String> = items
            .iter()
            .filter_map(|item| item.split_whitespace().next())
            .filter(|word| !remarks.contains(word))
            .map(str::to_string)
            .collect();
        assert_eq!(readme_names, names, "README's shell commands vs shell.rs COMMANDS");
        // Each command with subcommands, and the function whose match arms run them.
        let runners =
            [("klp", "klp"), ("trace", "trace"), ("probe", "probe"), ("ftrace", "ftrace"), ("demo", "demo_line")];
        for (command, runner) in runners {
            let help = &commands.iter().find(|(name, _)| name == command).expect("a command").1;
            let in_help = listed_subcommands(help, command);
            let in_code = match_arms(&shell, runner);
            assert_eq!(in_help, in_code, "`{command}`: the subcommands its help lists vs the ones it runs");
            let in_readme: BTreeSet<String> = items
                .iter()
                .filter_map(|item| item.strip_prefix(&format!("{command} ")))
                .filter_map(|rest| rest.split_whitespace().next())
                .map(str::to_string)
                .collect();
            assert_eq!(in_readme, in_code, "`{command}`: the subcommands README lists vs the ones it runs");
        }
    }

    #[test]
    fn help_lists_are_read_as_subcommands() {
        let help = "livepatch: klp list | enable NAME | disable NAME";
        assert_eq!(listed_subcommands(help, "klp"), BTreeSet::from(["list".into(), "enable".into(), "disable".into()]));
        let body = "\nfn klp(a: &str) {\n    match a {\n        \"list\" => {}\n        \"load\" if x => {}\n        _ => {}\n    }\n}\n";
        assert_eq!(match_arms(body, "klp"), BTreeSet::from(["list".into(), "load".into()]));
    }
}
