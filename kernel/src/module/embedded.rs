//! Signed sample modules (patches and target modules) built into the image by xtask, so the shell and tests can load them.
//!
//! xtask builds `patches/*` and hands their `.klp` files to the kernel build
//! (`KLP_TEST_MODULES_DIR`); a build without them embeds empty files.

/// (name, signed module file) for each sample; an empty file was not built in.
pub static EMBEDDED: [(&str, &[u8]); 21] = [
    ("greeting", include_bytes!(concat!(env!("OUT_DIR"), "/greeting.klp"))),
    ("counter", include_bytes!(concat!(env!("OUT_DIR"), "/counter.klp"))),
    ("ten", include_bytes!(concat!(env!("OUT_DIR"), "/ten.klp"))),
    // Keeps a count in a shadow variable of a kernel object.
    ("shadow", include_bytes!(concat!(env!("OUT_DIR"), "/shadow.klp"))),
    // Refused on purpose (tests of bad patches).
    ("missing-target", include_bytes!(concat!(env!("OUT_DIR"), "/missing-target.klp"))),
    ("notrace-target", include_bytes!(concat!(env!("OUT_DIR"), "/notrace-target.klp"))),
    ("unmarked-target", include_bytes!(concat!(env!("OUT_DIR"), "/unmarked-target.klp"))),
    // Allows the inlined copies of the test kernel's `kernel::tests::inlined::inlined_target`.
    ("inlined-target", include_bytes!(concat!(env!("OUT_DIR"), "/inlined-target.klp"))),
    // The samples of callbacks, system states and atomic replace.
    ("callbacks", include_bytes!(concat!(env!("OUT_DIR"), "/callbacks.klp"))),
    ("states", include_bytes!(concat!(env!("OUT_DIR"), "/states.klp"))),
    ("cumulative", include_bytes!(concat!(env!("OUT_DIR"), "/cumulative.klp"))),
    // Loadable target modules (`.klp.module`), and a patch of one of them.
    ("hello-module", include_bytes!(concat!(env!("OUT_DIR"), "/hello-module.klp"))),
    ("hello-module-fix", include_bytes!(concat!(env!("OUT_DIR"), "/hello-module-fix.klp"))),
    ("busy-module", include_bytes!(concat!(env!("OUT_DIR"), "/busy-module.klp"))),
    ("target-module", include_bytes!(concat!(env!("OUT_DIR"), "/target-module.klp"))),
    // Refused on purpose: a description naming a missing function, an init that fails.
    ("bad-module", include_bytes!(concat!(env!("OUT_DIR"), "/bad-module.klp"))),
    ("failing-module", include_bytes!(concat!(env!("OUT_DIR"), "/failing-module.klp"))),
    // A patch of `klp_demo_ten` that refers to target-module's symbols (klp relocations).
    ("klp-sym-reader", include_bytes!(concat!(env!("OUT_DIR"), "/klp-sym-reader.klp"))),
    // Refused on purpose: made for a kernel image with another build id.
    ("foreign-build", include_bytes!(concat!(env!("OUT_DIR"), "/foreign-build.klp"))),
    // Shaped like a patch made from a diff: `toc kernel`, `abi-checked`, klp relocations to the kernel.
    ("kernel-sym-reader", include_bytes!(concat!(env!("OUT_DIR"), "/kernel-sym-reader.klp"))),
    // Refused on purpose: a klp relocation to a kernel symbol that does not exist.
    ("kernel-sym-missing", include_bytes!(concat!(env!("OUT_DIR"), "/kernel-sym-missing.klp"))),
];

/// The signed file of the embedded module `name`, if built in.
pub fn find(name: &str) -> Option<&'static [u8]> {
    EMBEDDED.iter().find(|(embedded, file)| *embedded == name && !file.is_empty()).map(|(_, file)| *file)
}
