//! Linux's klp relocation symbols: `.klp.sym.MODULE.SYMBOL,POSITION`, how a patch names a symbol of a loadable target module.
//!
//! A patch refers to a target module's own symbol (a static, a function)
//! through an undefined symbol of that name, written in its extern block
//! as `#[link_name = ".klp.sym.hello-module.HELLO_MODULE_CALLS,0"]`. The
//! kernel resolves it against the module's symbol table: POSITION 0 wants
//! the only symbol of that name, N >= 1 the Nth of several (in the module's
//! symbol table order), as Linux's sympos. MODULE may not contain '.'.

/// The prefix of every klp relocation symbol.
pub const KLP_SYMBOL_PREFIX: &str = ".klp.sym.";

/// The prefix of a klp relocation symbol naming the kernel's own symbol (module `vmlinux`).
pub const KERNEL_KLP_PREFIX: &str = ".klp.sym.vmlinux.";

/// A parsed `.klp.sym.MODULE.SYMBOL,POSITION`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KlpSymbol<'a> {
    pub module: &'a str,
    pub symbol: &'a str,
    /// 0: the only one of that name; N: the Nth.
    pub position: usize,
}

/// `name` as a klp relocation symbol; None if it is not one, or malformed
/// (no module, no symbol, no `,POSITION`, a position that is not a number).
pub fn parse_klp_symbol(name: &str) -> Option<KlpSymbol<'_>> {
    let rest = name.strip_prefix(KLP_SYMBOL_PREFIX)?;
    let (rest, position) = rest.rsplit_once(',')?;
    if position.is_empty() || !position.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    let position = position.parse().ok()?;
    let (module, symbol) = rest.split_once('.')?;
    (!module.is_empty() && !symbol.is_empty()).then_some(KlpSymbol { module, symbol, position })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_module_symbol_and_position() {
        assert_eq!(
            parse_klp_symbol(".klp.sym.hello-module.HELLO_MODULE_CALLS,0"),
            Some(KlpSymbol { module: "hello-module", symbol: "HELLO_MODULE_CALLS", position: 0 })
        );
        assert_eq!(
            parse_klp_symbol(".klp.sym.m.a.b,12"),
            Some(KlpSymbol { module: "m", symbol: "a.b", position: 12 }),
            "the module ends at the first dot"
        );
    }

    #[test]
    fn anything_else_is_not_one() {
        for name in [
            "klp_print",
            ".klp.sym.m.s",
            ".klp.sym.m.s,",
            ".klp.sym.m.s,x",
            ".klp.sym.m.s,-1",
            ".klp.sym..s,0",
            ".klp.sym.m.,0",
            ".klp.sym.m,0",
        ] {
            assert_eq!(parse_klp_symbol(name), None, "{name}");
        }
    }
}
