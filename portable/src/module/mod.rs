//! Patch module loader: parses, checks and links a ppc64le relocatable object at an address.
//!
//! A patch module is what `rustc --emit obj` produces for the kernel's target
//! (ET_REL, ELFCLASS64, little-endian, EM_PPC64, ELFv2): one `.text.NAME`
//! section per function, `.data.*`, `.bss.*`, a `.toc`, maybe `.eh_frame`,
//! and a `.klp.patch` section naming the kernel functions it replaces
//! ([`parse_description`]); a loadable target module has a `.klp.module`
//! section instead ([`parse_module_description`]), and is loaded the same way. Loading takes three steps, none of which touches
//! hardware:
//!
//! 1. [`parse`] checks everything that needs no address: headers, section and
//!    symbol tables, every relocation (supported type, field inside its
//!    section, calls out of the module followed by a `nop`), the description.
//!    It never panics and allocates nothing proportional to hostile sizes
//!    beyond the limits below.
//! 2. The kernel allocates [`ModuleImage::memory_size`] bytes aligned to
//!    [`ModuleImage::memory_alignment`].
//! 3. [`ModuleImage::link`] copies the sections there, writes one call stub
//!    per external function ([`stub`] describes its register contract),
//!    applies the relocations against the module's own TOC (or, for a patch
//!    whose description says `toc kernel`, the kernel's TOC pointer the
//!    kernel passes in) and the kernel addresses the resolver returns, and
//!    reports sections, symbols and TOC.
//!
//! Flushing the instruction cache over the module memory is the kernel's job.
//! The supported relocations are in [`relocation::SUPPORTED`]; others are refused by name.

mod description;
mod elf;
mod error;
mod image;
mod klp_symbol;
mod layout;
mod link;
pub mod relocation;
mod relocations;
mod signed;
pub mod stub;
mod symbols;
mod target;
#[cfg(test)]
mod tests;

pub use description::{
    ALLOW_INLINED, CALLBACK_KINDS, CallbackLine, DESCRIPTION_HEADER, PatchDescription, ReplacedFunction,
    parse_description,
};
pub use error::ModuleError;
pub use image::{ModuleImage, parse};
pub use klp_symbol::{KLP_SYMBOL_PREFIX, KlpSymbol, parse_klp_symbol};
pub use layout::{MIN_ALIGNMENT, TOC_BIAS};
pub use link::{LinkedModule, LoadedSection, ModuleSymbol};
pub use relocation::relocation_name;
pub use signed::{SIGNATURE_SIZE, SIGNED_MAGIC, TRAILER_SIZE, signed_trailer, split_signed};
pub use symbols::{TOC_SYMBOL, local_entry_offset};
pub use target::{MODULE_HEADER, MODULE_SECTION, ModuleDescription, parse_module_description};

/// The section that holds the patch description.
pub const DESCRIPTION_SECTION: &str = ".klp.patch";

/// What a module object says it is: a live patch (`.klp.patch`) or a
/// loadable target module (`.klp.module`). An object has exactly one of the two.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Description {
    Patch(PatchDescription),
    Module(ModuleDescription),
}

impl Description {
    /// The patch's or module's name.
    pub fn name(&self) -> &str {
        match self {
            Description::Patch(patch) => &patch.name,
            Description::Module(module) => &module.name,
        }
    }

    /// The patch description, if this is a patch.
    pub fn patch(&self) -> Option<&PatchDescription> {
        match self {
            Description::Patch(patch) => Some(patch),
            Description::Module(_) => None,
        }
    }

    /// Whether the module runs on the kernel's TOC base (a patch's `toc kernel` line).
    pub fn kernel_toc(&self) -> bool {
        self.patch().is_some_and(|patch| patch.kernel_toc)
    }

    /// The target module description, if this is one.
    pub fn module(&self) -> Option<&ModuleDescription> {
        match self {
            Description::Module(module) => Some(module),
            Description::Patch(_) => None,
        }
    }
}

/// Largest object file accepted: 16 MiB.
pub const MAX_FILE_SIZE: u64 = 16 << 20;
/// Largest module memory (sections and stubs): 16 MiB, so every branch inside the module
/// stays within the +/-32 MiB of `bl`.
pub const MAX_MEMORY_SIZE: u64 = 16 << 20;
/// Most section headers accepted.
pub const MAX_SECTIONS: usize = 4096;
/// Most symbols accepted.
pub const MAX_SYMBOLS: u64 = 1 << 20;
/// Most relocations accepted, over all sections.
pub const MAX_RELOCATIONS: u64 = 1 << 20;
/// Largest alignment of a loaded section: 64 KiB.
pub const MAX_ALIGNMENT: u64 = 64 << 10;
