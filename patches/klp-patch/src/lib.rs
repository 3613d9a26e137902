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
///
/// A patch made for one kernel image names its build id (`cargo xtask
/// patch identify`, or the kernel's `version` command, tells a running
/// kernel's); the loader of any other kernel refuses it. A patch without one
/// loads into any kernel that has the symbols it uses:
///
/// ```ignore
/// klp_patch::klp_patch!(
///     name = "fix",
///     build_id = "0123456789abcdef0123456789abcdef01234567",
///     replace = ["kernel::shell::greeting" => greeting_fixed],
/// );
/// ```
///
/// An atomic replace (cumulative patch), system states and callbacks
/// follow the replacements, in this order, each optional:
///
/// ```ignore
/// klp_patch::klp_patch!(
///     name = "cumulative",
///     replace = ["kernel::shell::greeting" => greeting_v2],
///     atomic_replace = true,
///     states = [(1, 2)],
///     callbacks = ["vmlinux" pre_patch => my_pre_patch, "vmlinux" post_unpatch => my_post_unpatch],
/// );
/// ```
#[macro_export]
macro_rules! klp_patch {
    (
        name = $name:literal,
        $(build_id = $build_id:literal,)?
        $(object = $module:literal,)?
        replace = [$($old:literal => $new:ident $(($flag:ident))?),+ $(,)?]
        $(, atomic_replace = $atomic:ident)?
        $(, states = [$(($id:literal, $version:literal)),* $(,)?])?
        $(, callbacks = [$($object:literal $kind:ident => $callback:ident),* $(,)?])?
        $(,)?
    ) => {
        const _: () = {
            assert!($crate::is_word($name), "a patch name must be non-empty and free of whitespace");
            $(assert!($crate::is_build_id($build_id), "a build id is 40 hexadecimal digits");)?
            $(assert!($crate::is_word($module), "an object name must be non-empty and free of whitespace");)?
            $(
                assert!($crate::is_word($old), "an old function name must be non-empty and free of whitespace");
                // A replacement that does not exist fails to compile here.
                let _ = $new;
                $(assert!($crate::same(stringify!($flag), $crate::ALLOW_INLINED), "the only flag is allow_inlined");)?
            )+
            $($(
                assert!($crate::is_word($object), "an object name must be non-empty and free of whitespace");
                // A callback must exist and have the callback signature.
                let _: $crate::Callback = $callback;
            )*)?
        };
        const KLP_PATCH_TEXT: &str = concat!(
            "klp-patch 1\nname ", $name, "\n",
            $("build-id ", $build_id, "\n",)?
            $("object ", $module, "\n",)?
            $("replace ", $old, " ", stringify!($new), $(" ", stringify!($flag),)? "\n",)+
            $($crate::atomic_replace_line!($atomic),)?
            $($("state ", stringify!($id), " ", stringify!($version), "\n",)*)?
            $($("callback ", $object, " ", $crate::callback_kind!($kind), " ", stringify!($callback), "\n",)*)?
        );
        /// The description the loader reads (`#[used]`: kept although nothing refers to it).
        #[used]
        #[unsafe(link_section = ".klp.patch")]
        static KLP_PATCH: [u8; KLP_PATCH_TEXT.len()] = $crate::bytes(KLP_PATCH_TEXT);
    };
}

/// The signature of a callback: the object's name (`vmlinux` or a module),
/// as a pointer and a length; a pre-patch callback's nonzero return refuses
/// the enable (or the module's load).
pub type Callback = extern "C" fn(object: *const u8, length: usize) -> i32;

/// The `atomic-replace` line for `atomic_replace = true`, none for `false`
/// (any other word fails to compile).
#[doc(hidden)]
#[macro_export]
macro_rules! atomic_replace_line {
    (true) => {
        "atomic-replace\n"
    };
    (false) => {
        ""
    };
}

/// A callback kind's name (any other word fails to compile).
#[doc(hidden)]
#[macro_export]
macro_rules! callback_kind {
    (pre_patch) => {
        "pre_patch"
    };
    (post_patch) => {
        "post_patch"
    };
    (pre_unpatch) => {
        "pre_unpatch"
    };
    (post_unpatch) => {
        "post_unpatch"
    };
}

/// The first line of a loadable target module's description.
pub const MODULE_FORMAT_LINE: &str = "klp-module 1";

/// The section the kernel's loader reads a target module's description from.
pub const MODULE_SECTION: &str = ".klp.module";

/// Declares a loadable target module: its name, init and exit functions,
/// and the functions live patches may replace.
///
/// ```ignore
/// klp_patch::klp_module!(
///     name = "hello-module",
///     init = hello_module_init,      // extern "C" fn() -> i32: 0 loads the module, anything else refuses it
///     exit = hello_module_exit,      // extern "C" fn(): runs before the module is unloaded
///     livepatchable = [hello_module_message],
/// );
/// ```
///
/// Each function must be `#[unsafe(no_mangle)] pub` (the description names
/// its symbol; a typo is a compile error). Build with `cargo xtask patch
/// build NAME`, which gives the module's functions ftrace sites, as the
/// kernel's: only a function with a site and named `livepatchable` here can
/// be replaced, and it must be `#[inline(never)]` so that every call reaches
/// that site (see patches/README.md). The macro takes the address of every
/// function it names in a `#[used]` static, so the compiler keeps each one,
/// out of line, and cannot assume it knows all its callers.
#[macro_export]
macro_rules! klp_module {
    (name = $name:literal $(, init = $init:ident)? $(, exit = $exit:ident)? $(, livepatchable = [$($function:ident),* $(,)?])? $(,)?) => {
        const _: () = assert!($crate::is_word($name), "a module name must be non-empty and free of whitespace");
        $(const _: extern "C" fn() -> i32 = $init;)?
        $(const _: extern "C" fn() = $exit;)?
        const KLP_MODULE_TEXT: &str = concat!(
            "klp-module 1\nname ", $name, "\n",
            $("init ", stringify!($init), "\n",)?
            $("exit ", stringify!($exit), "\n",)?
            $($("livepatchable ", stringify!($function), "\n",)*)?
        );
        /// The description the loader reads (`#[used]`: kept although nothing refers to it).
        #[used]
        #[unsafe(link_section = ".klp.module")]
        static KLP_MODULE: [u8; KLP_MODULE_TEXT.len()] = $crate::bytes(KLP_MODULE_TEXT);
        /// Every function the description names, address-taken: kept out of
        /// line, and never assumed to have only the callers the compiler sees.
        #[used]
        static KLP_MODULE_FUNCTIONS: $crate::Functions = $crate::Functions(&[
            $($init as *const (),)? $($exit as *const (),)? $($($function as *const (),)*)?
        ]);
    };
}

/// The addresses of a module's functions, as `klp_module!` keeps them.
pub struct Functions(pub &'static [*const ()]);

// Safety: function addresses, never written nor dereferenced as data.
unsafe impl Sync for Functions {}

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

/// Whether `text` is a build id: 40 hexadecimal digits (at compile time).
pub const fn is_build_id(text: &str) -> bool {
    let bytes = text.as_bytes();
    if bytes.len() != 40 {
        return false;
    }
    let mut index = 0;
    while index < bytes.len() {
        if !bytes[index].is_ascii_hexdigit() {
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

    mod built_for {
        fn fixed() {}
        crate::klp_patch!(
            name = "fix",
            build_id = "0123456789abcdef0123456789ABCDEF01234567",
            object = "hello-module",
            replace = ["message" => fixed],
        );

        #[test]
        fn the_build_id_is_a_line_after_the_name() {
            fixed();
            assert_eq!(
                core::str::from_utf8(&KLP_PATCH).unwrap(),
                "klp-patch 1\nname fix\nbuild-id 0123456789abcdef0123456789ABCDEF01234567\nobject hello-module\n\
                 replace message fixed\n"
            );
        }

        #[test]
        fn build_ids_are_40_hex_digits() {
            assert!(crate::is_build_id("0123456789abcdef0123456789abcdef01234567"));
            assert!(!crate::is_build_id("0123456789abcdef0123456789abcdef0123456"));
            assert!(!crate::is_build_id("0123456789abcdef0123456789abcdef012345678"));
            assert!(!crate::is_build_id("0123456789abcdef0123456789abcdef0123456g"));
        }
    }

    mod full {
        fn replacement() {}
        extern "C" fn before(_: *const u8, _: usize) -> i32 {
            0
        }
        crate::klp_patch!(
            name = "full",
            replace = ["kernel::x" => replacement],
            atomic_replace = true,
            states = [(1, 2), (7, 1)],
            callbacks = ["vmlinux" pre_patch => before, "target-module" post_unpatch => before],
        );

        #[test]
        fn atomic_replace_states_and_callbacks_are_lines_of_the_description() {
            let _ = (replacement(), before(core::ptr::null(), 0));
            assert_eq!(
                core::str::from_utf8(&KLP_PATCH).unwrap(),
                "klp-patch 1\nname full\nreplace kernel::x replacement\natomic-replace\nstate 1 2\nstate 7 1\n\
                 callback vmlinux pre_patch before\ncallback target-module post_unpatch before\n"
            );
        }
    }

    mod module {
        extern "C" fn start() -> i32 {
            0
        }

        extern "C" fn stop() {}

        fn message() -> u64 {
            7
        }

        crate::klp_module!(name = "hello-module", init = start, exit = stop, livepatchable = [message, start]);

        #[test]
        fn the_module_description_is_the_documented_text() {
            let _ = (start(), stop(), message());
            assert_eq!(
                core::str::from_utf8(&KLP_MODULE).unwrap(),
                "klp-module 1\nname hello-module\ninit start\nexit stop\nlivepatchable message\nlivepatchable start\n"
            );
            assert!(KLP_MODULE_TEXT.starts_with(crate::MODULE_FORMAT_LINE));
            assert_eq!(KLP_MODULE_FUNCTIONS.0.len(), 4);
            assert_eq!(KLP_MODULE_FUNCTIONS.0[2], message as *const ());
        }
    }

    mod object {
        fn fixed() -> u64 {
            8
        }

        crate::klp_patch!(name = "fix", object = "hello-module", replace = ["message" => fixed]);

        #[test]
        fn an_object_line_precedes_the_replace_lines() {
            let _ = fixed();
            assert_eq!(
                core::str::from_utf8(&KLP_PATCH).unwrap(),
                "klp-patch 1\nname fix\nobject hello-module\nreplace message fixed\n"
            );
        }
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
