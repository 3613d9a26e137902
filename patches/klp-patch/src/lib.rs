//! `klp_patch!`: the description of a live patch module, in its `.klp.patch` section.
//!
//! A patch module is a `no_std` library compiled to one relocatable object
//! (`cargo xtask patch build NAME`). The kernel's loader reads what to replace
//! from the object's `.klp.patch` section, a short UTF-8 text:
//!
//! ```text
//! klp-patch 1
//! name counter
//! replace kernel::shell::greeting counter_greeting
//! ```
//!
//! one `replace OLD_NAME NEW_SYMBOL` line per replaced function: OLD_NAME as the
//! kernel's symbol table spells it (demangled path, or the plain name of a
//! `#[no_mangle]` function), NEW_SYMBOL a `#[unsafe(no_mangle)]` function of the
//! module with the same signature as the original. This crate holds only a macro
//! and const fns evaluated at compile time, so it adds no code to the object.

#![cfg_attr(not(test), no_std)]

pub mod kernel;

/// The first line of every description: the format and its version.
pub const FORMAT_LINE: &str = "klp-patch 1";

/// The section the kernel's loader reads the description from.
pub const SECTION: &str = ".klp.patch";

/// The flag after a replacement that lets it replace a function with inlined copies.
pub const ALLOW_INLINED: &str = "allow_inlined";

/// Declares the module's description.
///
/// ```ignore
/// klp_patch::klp_patch!(name = "greeting", replace = ["kernel::shell::greeting" => greeting_patched]);
/// ```
///
/// Each replacement must name a function of this crate (a typo is a compile
/// error); names and old names must be non-empty and free of whitespace.
///
/// The kernel refuses to replace a function that callers hold inlined copies
/// of (they would keep running the original; `klp patchable` and `cargo
/// xtask patch targets` list what is safe). A patch that means it anyway
/// says so per function, and `klp list` marks that function:
///
/// ```ignore
/// klp_patch::klp_patch!(name = "usage", replace = ["kernel::memory::usage" => usage_patched (allow_inlined)]);
/// ```
#[macro_export]
macro_rules! klp_patch {
    (name = $name:literal, replace = [$($old:literal => $new:ident $(($flag:ident))?),+ $(,)?] $(,)?) => {
        const _: () = {
            assert!($crate::is_word($name), "a patch name must be non-empty and free of whitespace");
            $(
                assert!($crate::is_word($old), "an old function name must be non-empty and free of whitespace");
                // A replacement that does not exist fails to compile here.
                let _ = $new;
                $(assert!($crate::same(stringify!($flag), $crate::ALLOW_INLINED), "the only flag is allow_inlined");)?
            )+
        };
        const KLP_PATCH_TEXT: &str = concat!(
            "klp-patch 1\nname ", $name, "\n",
            $("replace ", $old, " ", stringify!($new), $(" ", stringify!($flag),)? "\n",)+
        );
        /// The description the loader reads (`#[used]`: kept although nothing refers to it).
        #[used]
        #[unsafe(link_section = ".klp.patch")]
        static KLP_PATCH: [u8; KLP_PATCH_TEXT.len()] = $crate::bytes(KLP_PATCH_TEXT);
    };
}

/// `text` as a byte array of its exact length (evaluated at compile time).
pub const fn bytes<const LENGTH: usize>(text: &str) -> [u8; LENGTH] {
    let source = text.as_bytes();
    assert!(source.len() == LENGTH);
    let mut array = [0; LENGTH];
    let mut index = 0;
    while index < LENGTH {
        array[index] = source[index];
        index += 1;
    }
    array
}

/// Whether two texts are equal (at compile time).
pub const fn same(left: &str, right: &str) -> bool {
    let (left, right) = (left.as_bytes(), right.as_bytes());
    if left.len() != right.len() {
        return false;
    }
    let mut index = 0;
    while index < left.len() {
        if left[index] != right[index] {
            return false;
        }
        index += 1;
    }
    true
}

/// Whether `text` is one non-empty word without whitespace (a description field).
pub const fn is_word(text: &str) -> bool {
    let bytes = text.as_bytes();
    if bytes.is_empty() {
        return false;
    }
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index].is_ascii_whitespace() {
            return false;
        }
        index += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    fn first() -> &'static str {
        "first"
    }

    fn second() -> u64 {
        2
    }

    fn third() {}

    crate::klp_patch!(
        name = "demo",
        replace = ["kernel::shell::greeting" => first, "klp_demo_ten" => second, "kernel::x" => third (allow_inlined),]
    );

    #[test]
    fn the_description_is_the_documented_text() {
        let _ = (first(), second(), third());
        assert_eq!(
            core::str::from_utf8(&KLP_PATCH).unwrap(),
            "klp-patch 1\nname demo\nreplace kernel::shell::greeting first\nreplace klp_demo_ten second\n\
             replace kernel::x third allow_inlined\n"
        );
        assert!(KLP_PATCH_TEXT.starts_with(crate::FORMAT_LINE));
    }

    #[test]
    fn texts_compare_at_compile_time() {
        assert!(crate::same("allow_inlined", crate::ALLOW_INLINED));
        assert!(!crate::same("allow_inline", crate::ALLOW_INLINED));
        assert!(!crate::same("force", "fence"));
    }

    #[test]
    fn words_have_no_whitespace() {
        assert!(crate::is_word("kernel::shell::greeting"));
        assert!(!crate::is_word(""));
        assert!(!crate::is_word("two words"));
        assert!(!crate::is_word("line\n"));
    }
}
