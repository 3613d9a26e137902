//! RTAS (Run-Time Abstraction Services) calls through QEMU's KVMPPC_H_RTAS hypercall: power off, os-term, start-cpu.
use super::hcall;
use spin::Once;

/// Tokens read from the device tree's /rtas node.
pub struct Tokens {
    pub power_off: u32,
    pub os_term: Option<u32>,
    pub start_cpu: Option<u32>,
}

static TOKENS: Once<Tokens> = Once::new();

/// Records the tokens; called once after the device tree is parsed.
pub fn init(tokens: Tokens) {
    TOKENS.call_once(|| tokens);
}

/// Makes one RTAS call: `token`, `arguments`, then `results.len()` results.
/// Returns the RTAS status (the first result) or None without tokens.
pub fn call(token: u32, arguments: &[u32], results: &mut [u32]) -> i32 {
    // Big-endian cells: token, argument count, result count, arguments, results.
    let mut block = [0u32; 16];
    block[0] = token.to_be();
    block[1] = (arguments.len() as u32).to_be();
    block[2] = (results.len() as u32).to_be();
    for (cell, argument) in block[3..].iter_mut().zip(arguments) {
        *cell = argument.to_be();
    }
    hcall::hcall(hcall::RTAS, [block.as_mut_ptr() as u64, 0, 0, 0, 0, 0]);
    let first = 3 + arguments.len();
    for (index, result) in results.iter_mut().enumerate() {
        *result = u32::from_be(block[first + index]);
    }
    results.first().map(|&status| status as i32).unwrap_or(0)
}

/// Powers the machine off (QEMU exits 0). Returns only if RTAS is unknown or fails.
pub fn power_off() {
    if let Some(tokens) = TOKENS.get() {
        call(tokens.power_off, &[u32::MAX, u32::MAX], &mut [0]);
    }
}

/// Starts the stopped CPU whose interrupt server is `server` at `entry` (real
/// mode, big-endian) with r3 = `argument`: RTAS `start-cpu`. Returns its
/// status, or None without the token.
pub fn start_cpu(server: u32, entry: u64, argument: u32) -> Option<i32> {
    let token = TOKENS.get()?.start_cpu?;
    Some(call(token, &[server, entry as u32, argument], &mut [0]))
}

/// Ends the machine with a failure: ibm,os-term with `message` (NUL-terminated);
/// QEMU runs with `-action panic=exit-failure` and exits 1.
pub fn terminate(message: &[u8]) {
    if let Some(os_term) = TOKENS.get().and_then(|tokens| tokens.os_term) {
        call(os_term, &[message.as_ptr() as u32], &mut [0]);
    }
}
