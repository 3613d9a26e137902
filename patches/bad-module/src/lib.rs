//! Target module `bad-module`: its description names an init function the module does not have, so the kernel refuses it (a test fixture).

#![no_std]

/// Written by hand (`klp_module!` would not compile with a missing
/// function): `init bad_module_missing_init` names nothing in the object.
const TEXT: &str = "klp-module 1\nname bad-module\ninit bad_module_missing_init\nlivepatchable bad_module_value\n";

#[used]
#[unsafe(link_section = ".klp.module")]
static KLP_MODULE: [u8; TEXT.len()] = klp_patch::bytes(TEXT);

/// A function with a site, which the kernel must not leave registered.
#[unsafe(no_mangle)]
#[inline(never)]
pub fn bad_module_value() -> u64 {
    core::hint::black_box(5)
}
