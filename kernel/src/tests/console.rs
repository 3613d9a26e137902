//! Tests of the console and the symbol table behind reports.
use crate::console;
use crate::thread::{self, ExitStatus};
use crate::{bug, println, symbols};
use macros::ktest;

#[ktest]
fn console_writes_long_lines_in_chunks() {
    // Three 16-byte hcall chunks, with the two bytes of a UTF-8 character on
    // either side of the first boundary (bytes 15 and 16). xtask checks that
    // the line arrives whole, as announced.
    const LINE: &str = "console: 012345\u{e9}6789abcdef0123456789 done\n";
    assert_eq!(LINE.find('\u{e9}'), Some(15));
    crate::ktest::expect_line(LINE.trim_end());
    {
        // The lock is taken as print! takes it: interrupts off.
        let _interrupts = crate::arch::interrupts::disable();
        console::lock().write_bytes(LINE.as_bytes());
    }
    assert!(!console::is_locked(), "the console lock is free again");
}

/// A BUG taken while the console lock is held (on purpose here; in life, a
/// fault in code called under it) is reported, not a hang: the report breaks
/// the lock (`console::begin_report`), and the console works afterwards.
/// Before, the report spun on the lock with interrupts off: the machine hung.
#[ktest]
fn a_bug_taken_while_the_console_is_held_is_reported_and_the_console_works_after() {
    crate::ktest::expect_line("------------[ cut here ]------------");
    crate::ktest::expect_line("console: usable after the report");
    let victim = thread::spawn_on(crate::arch::percpu::BOOT_CPU, "console-holder", || {
        // As print! holds it: interrupts off. The thread dies holding both.
        let _interrupts = crate::arch::interrupts::disable();
        let _console = console::lock();
        bug!();
    })
    .unwrap();
    assert_eq!(victim.join(), ExitStatus::Killed("BUG"));
    assert!(!console::is_locked(), "the report left the console lock free");
    println!("console: usable after the report");
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
