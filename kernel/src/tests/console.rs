//! Tests of the console and the symbol table behind reports.
use crate::console::CONSOLE;
use crate::symbols;
use macros::ktest;

#[ktest]
fn console_writes_long_lines_in_chunks() {
    // More than one 16-byte hcall chunk, with a multi-byte UTF-8 character on
    // the boundary. The lock is taken as print! takes it: interrupts off.
    let _interrupts = crate::arch::ppc64::interrupts::disable();
    let mut console = CONSOLE.lock();
    console.write_bytes("console: 0123456789abcde\u{e9}0123456789 done\n".as_bytes());
    assert!(CONSOLE.is_locked());
}

#[ktest]
fn symbol_table_names_kernel_functions() {
    let table = symbols::table().expect("xtask filled the symbol table");
    assert!(table.len() > 100, "only {} symbols", table.len());
    let address = crate::boot_main as *const () as u64;
    let (symbol, offset) = table.lookup(address + 8).expect("boot_main is in the table");
    assert_eq!(symbol.name, "boot_main");
    assert_eq!(offset, 8);
    assert_eq!(alloc::format!("{}", symbols::Symbolized(address)).split('+').next(), Some("boot_main"));
}
