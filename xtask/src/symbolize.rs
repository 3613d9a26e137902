//! file:line for the addresses in kernel reports, from the kernel ELF's debug info.
//!
//! The kernel prints backtraces as `[0xADDRESS] symbol+offset/size` and
//! registers as `NIP:  0xADDRESS ...`; the host adds where that is in the
//! source, which the kernel (with no DWARF reader) cannot.

use std::path::Path;

/// Looks addresses up in one ELF file.
pub struct Symbolizer {
    loader: addr2line::Loader,
}

impl Symbolizer {
    /// A symbolizer for `elf`, or None if it cannot be read.
    pub fn new(elf: &Path) -> Option<Symbolizer> {
        addr2line::Loader::new(elf).ok().map(|loader| Symbolizer { loader })
    }

    /// `file:line` of `address`, if the debug info knows it.
    pub fn location(&self, address: u64) -> Option<String> {
        let location = self.loader.find_location(address).ok()??;
        Some(format!("{}:{}", location.file?, location.line?))
    }

    /// The annotation for a report line that names an address, if any.
    pub fn annotation(&self, line: &str) -> Option<String> {
        let address = report_address(line)?;
        // A return address points after the call; look up the call itself.
        let lookup = if line.trim_start().starts_with('[') { address.saturating_sub(4) } else { address };
        Some(format!("        at {}", self.location(lookup)?))
    }
}

/// The address a kernel report line is about: `[0x...]` or `NIP:`/`LR:` lines.
fn report_address(line: &str) -> Option<u64> {
    let trimmed = line.trim_start();
    let hex = if let Some(rest) = trimmed.strip_prefix("[0x") {
        rest.split(']').next()?
    } else if let Some(rest) = trimmed.strip_prefix("NIP:").or_else(|| trimmed.strip_prefix("LR:")) {
        rest.trim_start().strip_prefix("0x")?.split_whitespace().next()?
    } else {
        return None;
    };
    u64::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_report_addresses() {
        assert_eq!(report_address("  [0x0000000000403478] kernel::x+0x18/0x40"), Some(0x403478));
        assert_eq!(report_address("NIP:  0x0000000000403478 kernel::x+0x18/0x40"), Some(0x403478));
        assert_eq!(report_address("LR:   0x00000000004147d8 ?"), Some(0x4147d8));
        assert_eq!(report_address("klp> threads"), None);
        assert_eq!(report_address("[0xzz]"), None);
    }

    #[test]
    fn symbolizes_its_own_code() {
        // The xtask binary has debug info for this very function.
        let symbolizer = Symbolizer::new(&std::env::current_exe().unwrap()).expect("own binary readable");
        let address = finds_report_addresses as *const () as u64;
        // Position-independent executables are loaded elsewhere; only check no panic and the format.
        if let Some(location) = symbolizer.location(address) {
            assert!(location.contains(':'));
        }
    }
}
