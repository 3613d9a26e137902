//! Keeps `klp_patch::kernel` in step with the kernel's exports: a host test compares them.
//!
//! Three places name what a patch module may link against: the `export!`
//! lines of kernel/src/livepatch/api.rs (what the loader resolves), the
//! declarations and wrappers of patches/klp-patch/src/kernel.rs (what a patch
//! author calls), and the export list of docs/modules.md. The test reads all
//! three as text and fails, naming the difference, when one gains or loses
//! a name. The compiler's own helpers (`memcpy`, `memmove`, `memset`,
//! `memcmp`) are exported for the calls the compiler emits by itself and
//! have no wrapper.

#[cfg(test)]
mod tests {
    use crate::workspace_root;
    use std::collections::BTreeSet;

    /// Exported for the compiler's own calls, not for patch authors.
    const COMPILER_HELPERS: [&str; 4] = ["memcpy", "memmove", "memset", "memcmp"];

    fn read(path: &str) -> String {
        std::fs::read_to_string(workspace_root().join(path)).unwrap_or_else(|error| panic!("reading {path}: {error}"))
    }

    /// The names of `export!(NAME)` and `export!(function NAME)` lines.
    fn exports(api: &str) -> BTreeSet<String> {
        api.lines()
            .filter_map(|line| line.trim().strip_prefix("export!(")?.strip_suffix(");"))
            .map(|inside| inside.strip_prefix("function ").unwrap_or(inside).trim().to_string())
            .collect()
    }

    /// The names declared in the `unsafe extern` blocks: `pub fn NAME(` and `pub static NAME:`.
    fn declared(kernel: &str) -> BTreeSet<String> {
        let mut names = BTreeSet::new();
        let mut inside = false;
        for line in kernel.lines() {
            let line = line.trim();
            if line.starts_with("unsafe extern") {
                inside = true;
            } else if line == "}" {
                inside = false;
            } else if inside {
                let item = line.strip_prefix("pub fn ").or_else(|| line.strip_prefix("pub static "));
                if let Some(name) = item.and_then(|rest| rest.split(['(', ':']).next()) {
                    names.insert(name.trim().to_string());
                }
            }
        }
        names
    }

    /// The declared names some `pub fn` wrapper outside the extern blocks calls.
    fn wrapped(kernel: &str, declared: &BTreeSet<String>) -> BTreeSet<String> {
        let wrappers = kernel.split("\npub fn ").skip(1).collect::<Vec<_>>().join("\n");
        declared
            .iter()
            .filter(|name| wrappers.contains(&format!("{name}(")) || wrappers.contains(&format!("{{ {name} }}")))
            .cloned()
            .collect()
    }

    /// The backticked names of the docs' sentence on what modules link against.
    fn documented(modules: &str) -> BTreeSet<String> {
        let start =
            modules.find("Modules link only against the kernel's exports").expect("docs/modules.md has the list");
        let sentence = &modules[start..];
        let sentence = &sentence[..sentence.find("Any other undefined symbol").expect("the list ends")];
        sentence.split('`').skip(1).step_by(2).filter(|item| !item.starts_with('.')).map(str::to_string).collect()
    }

    #[test]
    fn every_export_has_a_declaration_and_a_wrapper_and_is_documented() {
        let exports = exports(&read("kernel/src/livepatch/api.rs"));
        let kernel = read("patches/klp-patch/src/kernel.rs");
        let declared = declared(&kernel);
        let for_authors: BTreeSet<String> =
            exports.iter().filter(|name| !COMPILER_HELPERS.contains(&name.as_str())).cloned().collect();
        assert!(COMPILER_HELPERS.iter().all(|helper| exports.contains(*helper)), "the compiler's helpers are exported");
        assert_eq!(declared, for_authors, "klp_patch::kernel's declarations vs the kernel's exports");
        assert_eq!(wrapped(&kernel, &declared), declared, "every declaration has a safe wrapper");
        assert_eq!(
            documented(&read("docs/modules.md")),
            exports,
            "docs/modules.md's export list vs the kernel's exports"
        );
    }

    #[test]
    fn reads_exports_declarations_and_wrappers() {
        let api = "export!(function klp_print);\nexport!(klp_kernel_version);\nmacro_rules! export {\n";
        assert_eq!(exports(api), BTreeSet::from(["klp_print".into(), "klp_kernel_version".into()]));
        let kernel = "unsafe extern \"C\" {\n    pub fn klp_print(bytes: *const u8);\n    pub static klp_kernel_version: u64;\n}\n\
                      unsafe extern \"Rust\" {\n    pub fn klp_demo_ten(a: u64) -> u64;\n}\n\
                      pub fn print() {\n    unsafe { klp_print(p) }\n}\npub fn kernel_version() -> u64 {\n    unsafe { klp_kernel_version }\n}\n";
        let declared = declared(kernel);
        assert_eq!(declared, BTreeSet::from(["klp_print".into(), "klp_kernel_version".into(), "klp_demo_ten".into()]));
        assert_eq!(wrapped(kernel, &declared), BTreeSet::from(["klp_print".into(), "klp_kernel_version".into()]));
    }
}
