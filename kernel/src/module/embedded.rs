//! Signed sample modules built into the image by xtask, so the shell and tests can load them.
//!
//! xtask builds `patches/*` and hands their `.klp` files to the kernel build
//! (`KLP_TEST_MODULES_DIR`); a build without them embeds empty files.

/// (name, signed module file) for each sample; an empty file was not built in.
pub static EMBEDDED: [(&str, &[u8]); 11] = [
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
];

/// The signed file of the embedded module `name`, if built in.
pub fn find(name: &str) -> Option<&'static [u8]> {
    EMBEDDED.iter().find(|(embedded, file)| *embedded == name && !file.is_empty()).map(|(_, file)| *file)
}
