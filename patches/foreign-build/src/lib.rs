//! Live patch module `foreign-build`: refused on purpose, it was made for a kernel image with another build id.

#![no_std]

klp_patch::klp_patch!(
    name = "foreign-build",
    // No kernel image has this id (a SHA-256 prefix of its loaded bytes would have to be exactly this).
    build_id = "0123456789abcdef0123456789abcdef01234567",
    replace = ["kernel::shell::greeting" => foreign_build_greeting],
);

/// A well-formed replacement of an existing, livepatchable function: only the
/// build id is wrong. (The end-to-end test writes the running kernel's id over
/// that one, signs the object again, and loads it: then `hello` prints this.)
#[unsafe(no_mangle)]
pub fn foreign_build_greeting() -> &'static str {
    klp_patch::kernel::intern("hello from foreign-build, made for this kernel image")
}
