//! A host check the compiler cannot make: every `sc 1` in the kernel declares each register PAPR lets the hypervisor change.
//!
//! PAPR (LoPAPR section 14.5.3, summarised in Linux's
//! Documentation/arch/powerpc/papr_hcalls.rst) makes r0, r3-r12, LR, CTR,
//! XER and CR fields 0, 1, 5, 6 and 7 volatile across a hypervisor call. An
//! `asm!` block that leaves one of them undeclared lets the compiler keep a
//! value there across the call, which a hypervisor may then destroy.

/// Registers a hypervisor call may change, as Rust's `asm!` names them.
pub const PAPR_VOLATILE: &[&str] = &[
    "r0", "r3", "r4", "r5", "r6", "r7", "r8", "r9", "r10", "r11", "r12", "lr", "ctr", "xer", "cr0", "cr1", "cr5",
    "cr6", "cr7",
];

/// For each `asm!` block of `source` that contains `sc 1`: the PAPR-volatile
/// registers it does not name as an output, a clobber or an inout operand
/// (`"cr"` names every CR field).
pub fn undeclared(source: &str) -> Vec<Vec<&'static str>> {
    let mut blocks = Vec::new();
    let mut rest = source;
    while let Some(start) = rest.find("asm!(") {
        let body = &rest[start..];
        let end = body.find(");").unwrap_or(body.len());
        let block = &body[..end];
        if block.contains("\"sc 1\"") {
            let declared: Vec<&str> = block
                .split(['(', ')', ','])
                .map(str::trim)
                .filter_map(|word| word.strip_prefix('"')?.strip_suffix('"'))
                .collect();
            let whole_cr = declared.contains(&"cr");
            blocks.push(
                PAPR_VOLATILE
                    .iter()
                    .copied()
                    .filter(|register| !(declared.contains(register) || whole_cr && register.starts_with("cr")))
                    .collect(),
            );
        }
        rest = &body[end..];
    }
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hcall_declares_every_register_papr_lets_the_hypervisor_change() {
        let path = crate::workspace_root().join("kernel/src/arch/ppc64/hcall.rs");
        let source = std::fs::read_to_string(&path).expect("the hcall source");
        let blocks = undeclared(&source);
        assert!(!blocks.is_empty(), "no `sc 1` asm block in {}", path.display());
        for missing in blocks {
            assert!(missing.is_empty(), "an `sc 1` block in {} does not declare {missing:?}", path.display());
        }
    }

    #[test]
    fn reads_outputs_clobbers_and_the_whole_cr() {
        let partial = r#"asm!("sc 1", inlateout("r3") a => b, out("r4") _, out("cr0") _, options(nostack));"#;
        let missing = &undeclared(partial)[0];
        assert!(
            missing.contains(&"cr1")
                && missing.contains(&"lr")
                && !missing.contains(&"r3")
                && !missing.contains(&"cr0")
        );
        let whole = r#"asm!("sc 1", out("r0") _, out("r3") _, out("r4") _, out("r5") _, out("r6") _, out("r7") _,
            out("r8") _, out("r9") _, out("r10") _, out("r11") _, out("r12") _, out("lr") _, out("ctr") _,
            out("xer") _, out("cr") _);"#;
        assert_eq!(undeclared(whole), [Vec::<&str>::new()]);
        assert!(undeclared(r#"asm!("isync");"#).is_empty());
    }
}
