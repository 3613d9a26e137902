//! Register-preservation tests of every asm path: patterned registers around traced, graph-traced, livepatched, preempted, yielding and sleeping calls.
//!
//! Each test loads a known pattern into every register the path must keep
//! (a poisoned r2, r14-r31, the whole CR, XER, CTR, LR), goes through the path
//! from assembly, and compares what comes back. They exist to kill the
//! mutants of docs/testing.md: a save or a restore removed from a stub, the
//! exception entry or exit, or `switch_context`.
use super::settle;
use crate::arch::registers::toc_pointer;
use crate::arch::text;
use crate::livepatch::{self, Function, Object, Patch};
use crate::thread::{self, ExitStatus};
use crate::trace::{self, Filter, FtraceOps, FtraceRegs, OpsFlags};
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use boot::MINIMAL_FRAME;
use core::fmt;
use core::hint::black_box;
use core::mem::{offset_of, size_of};
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use macros::{ktest, livepatchable, notrace};

/// The registers the helpers below load before and store after the call.
#[repr(C)]
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
struct Registers {
    gpr: [u64; 32],
    condition: u64,
    xer: u64,
    ctr: u64,
    link: u64,
}

/// The helpers' own frame: a header, the caller's r2, r14-r31, CR, and the output pointer.
#[repr(C)]
struct HelperFrame {
    header: [u64; MINIMAL_FRAME / 8],
    toc: u64,
    nonvolatile: [u64; 18],
    condition: u64,
    output: u64,
}
const HELPER_FRAME: usize = size_of::<HelperFrame>().next_multiple_of(16);

/// CR fields 2-4, the non-volatile ones (bits 40-51 of the 64-bit image).
const NONVOLATILE_CR: u64 = 0x00ff_f000;
/// A TOC pointer no code may rely on: the path must hand it back untouched.
const POISONED_TOC: u64 = 0x7070_7070_7070_7070;
/// XER[CA].
const XER_CARRY: u64 = 1 << 29;

core::arch::global_asm!(
    r#"
    .text
    # call_with_registers(r3 = function, r4 = &Registers in, r5 = &mut Registers out)
    #
    # Loads r2, r3-r10, r14-r31, CR and XER from `in`, calls the function's
    # global entry (r12 = CTR = function), then stores r2, r3, r4, r14-r31, CR
    # and XER into `out`. On exit: r2, r14-r31 and CR as on entry (kept in our
    # frame); r0, r3-r12, CTR, XER clobbered.
    .globl registers_test_call_with_registers
    .type registers_test_call_with_registers, @function
registers_test_call_with_registers:
    mflr    0
    std     0, {link_save}(1)         # LR into the caller's frame
    stdu    1, -{frame}(1)            # our HelperFrame
    std     2, {save_toc}(1)
    .irp number, 14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    std     \number, {save_nonvolatile}+8*(\number-14)(1)
    .endr
    mfcr    0
    std     0, {save_condition}(1)
    std     5, {save_output}(1)       # keep &out
    li      0, -1
    std     0, {link_save}(1)         # poison our own LR save slot: only a stub may fill it
    mr      12, 3                     # r12 = function (global entry convention)
    mtctr   3
    ld      0, {in_condition}(4)
    mtcr    0                         # CR = in.condition
    ld      0, {in_xer}(4)
    mtxer   0                         # XER = in.xer
    .irp number, 2,3,5,6,7,8,9,10,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    ld      \number, {in_gpr}+8*\number(4)
    .endr
    ld      4, {in_gpr}+8*4(4)        # r4 last: it was the pointer
    bctrl                             # function(r3..r10)
    ld      11, {save_output}(1)      # r11 = &out
    .irp number, 2,3,4,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    std     \number, {in_gpr}+8*\number(11)
    .endr
    mfcr    12
    std     12, {in_condition}(11)
    mfxer   12
    std     12, {in_xer}(11)
    ld      2, {save_toc}(1)          # the kernel's r2 and non-volatiles again
    .irp number, 14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    ld      \number, {save_nonvolatile}+8*(\number-14)(1)
    .endr
    ld      0, {save_condition}(1)
    mtcr    0
    addi    1, 1, {frame}
    ld      0, {link_save}(1)
    mtlr    0
    blr
    .size registers_test_call_with_registers, . - registers_test_call_with_registers

    # register_soak(r3 = iterations, r4 = &Registers in, r5 = &mut Registers out)
    #
    # Loads every register but r1, r3 and r13 from `in` (r0, r2 poisoned too,
    # CR, XER, CTR, LR), counts r3 down to 0 using only r3 and CR1, then
    # stores them all into `out` (r3 = &out). Timer interrupts and
    # preemption in the loop must give every one of them back.
    .globl registers_test_soak
    .type registers_test_soak, @function
registers_test_soak:
    mflr    0
    std     0, {link_save}(1)
    stdu    1, -{frame}(1)
    std     2, {save_toc}(1)
    .irp number, 14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    std     \number, {save_nonvolatile}+8*(\number-14)(1)
    .endr
    mfcr    0
    std     0, {save_condition}(1)
    std     5, {save_output}(1)
    ld      0, {in_condition}(4)
    mtcr    0
    ld      0, {in_xer}(4)
    mtxer   0
    ld      0, {in_ctr}(4)
    mtctr   0
    ld      0, {in_link}(4)
    mtlr    0
    .irp number, 0,2,5,6,7,8,9,10,11,12,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    ld      \number, {in_gpr}+8*\number(4)
    .endr
    ld      4, {in_gpr}+8*4(4)
1:  cmpdi   1, 3, 0                   # only r3 and CR1 change in the loop
    beq     1, 2f
    addi    3, 3, -1
    b       1b
2:  ld      3, {save_output}(1)       # r3 = &out
    .irp number, 0,2,4,5,6,7,8,9,10,11,12,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    std     \number, {in_gpr}+8*\number(3)
    .endr
    mfcr    0
    std     0, {in_condition}(3)
    mfxer   0
    std     0, {in_xer}(3)
    mfctr   0
    std     0, {in_ctr}(3)
    mflr    0
    std     0, {in_link}(3)
    ld      2, {save_toc}(1)
    .irp number, 14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    ld      \number, {save_nonvolatile}+8*(\number-14)(1)
    .endr
    ld      0, {save_condition}(1)
    mtcr    0
    addi    1, 1, {frame}
    ld      0, {link_save}(1)
    mtlr    0
    blr
    .size registers_test_soak, . - registers_test_soak

    # coroutine: what a crafted SwitchFrame resumes. On entry (from
    # switch_context): r14 = &Coroutine, r2, r15-r31 and CR as the frame
    # held. Inverts r2, r15-r31 and CR (so a register switch_context failed
    # to save or load shows), then switches back to the thread whose stack
    # pointer Coroutine.caller holds; never resumed itself.
    .globl registers_test_coroutine
    .type registers_test_coroutine, @function
registers_test_coroutine:
    not     2, 2
    .irp number, 15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    not     \number, \number
    .endr
    mfcr    0
    not     0, 0
    mtcr    0                         # every CR field inverted
    addi    3, 14, {coroutine_own}    # r3 = &Coroutine.own: where our r1 goes
    ld      4, {coroutine_caller}(14) # r4 = the caller's saved r1
    bl      {switch_context}          # back to the caller, for good
0:  b       0b
    .size registers_test_coroutine, . - registers_test_coroutine

    # clobbering_handler: an ftrace handler that records its call (through
    # registers_record, kernel TOC), then clobbers every register a handler
    # may: r0, r3-r12, CTR, XER and CR0, CR1, CR5-CR7 all become -1.
    .globl registers_test_clobbering_handler
    .type registers_test_clobbering_handler, @function
registers_test_clobbering_handler:
    mflr    0
    std     0, {link_save}(1)
    stdu    1, -{minimal}(1)
    bl      {record}                  # registers_record(ip, parent, ops, regs)
    addi    1, 1, {minimal}
    ld      0, {link_save}(1)
    mtlr    0
    li      0, -1
    .irp number, 3,4,5,6,7,8,9,10,11,12
    li      \number, -1
    .endr
    mtctr   3                         # CTR = -1
    mtxer   3                         # XER = SO, OV, CA and every count bit
    mtcrf   0xc7, 3                   # CR0, CR1, CR5, CR6, CR7 = 0b1111
    blr
    .size registers_test_clobbering_handler, . - registers_test_clobbering_handler
    "#,
    link_save = const boot::LINK_SAVE,
    frame = const HELPER_FRAME,
    minimal = const MINIMAL_FRAME,
    save_toc = const offset_of!(HelperFrame, toc),
    save_nonvolatile = const offset_of!(HelperFrame, nonvolatile),
    save_condition = const offset_of!(HelperFrame, condition),
    save_output = const offset_of!(HelperFrame, output),
    in_gpr = const offset_of!(Registers, gpr),
    in_condition = const offset_of!(Registers, condition),
    in_xer = const offset_of!(Registers, xer),
    in_ctr = const offset_of!(Registers, ctr),
    in_link = const offset_of!(Registers, link),
    record = sym registers_record,
    coroutine_own = const offset_of!(Coroutine, own),
    coroutine_caller = const offset_of!(Coroutine, caller),
    switch_context = sym crate::arch::context::switch_context,
);

// FtraceOps is Rust data: only its address crosses the "C" boundary.
#[allow(improper_ctypes)]
unsafe extern "C" {
    fn registers_test_call_with_registers(function: u64, input: *const Registers, output: *mut Registers);
    fn registers_test_soak(iterations: u64, input: *const Registers, output: *mut Registers);
    fn registers_test_coroutine();
    safe fn registers_test_clobbering_handler(ip: u64, parent: u64, ops: &FtraceOps, regs: &mut FtraceRegs);
}

/// The two saved stack pointers of the switch_context test.
#[repr(C)]
struct Coroutine {
    /// Where switch_context stores the test thread's r1 (the coroutine resumes it from here).
    caller: u64,
    /// Where the coroutine's r1 goes when it switches back (never used again).
    own: u64,
}

/// Calls `function` with `input`'s registers; returns what came back.
fn call_with(function: u64, input: &Registers) -> Registers {
    let mut output = Registers::default();
    // Safety: the helper keeps every register the ABI asks it to keep; the
    // called functions below take up to eight u64 arguments, as loaded.
    unsafe { registers_test_call_with_registers(function, input, &mut output) };
    output
}

/// A register image derived from `seed`: distinct in every register and every thread.
fn pattern(seed: u64) -> Registers {
    let mut registers = Registers::default();
    for (number, value) in registers.gpr.iter_mut().enumerate() {
        *value = (seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)).rotate_left(number as u32 * 2) ^ (number as u64 * 0x0101);
    }
    registers.condition = (seed.wrapping_mul(0x2545_f491) & 0xffff_ffff) | 0x0050_a000;
    registers.xer = if seed.is_multiple_of(2) { XER_CARRY } else { 0 };
    registers.ctr = seed.wrapping_mul(0x1234_5678_9abc_def1);
    registers.link = seed.wrapping_mul(0x0fed_cba9_8765_4321) & !3;
    registers
}

/// The calls a handler saw, and the register record of the last one.
static RECORDED_CALLS: AtomicUsize = AtomicUsize::new(0);
static RECORDED_TOC: AtomicU64 = AtomicU64::new(0);
static RECORDED_ARGUMENTS: [AtomicU64; 8] = [const { AtomicU64::new(0) }; 8];
/// Calls whose backtrace, walked from inside the handler, reached the asm caller.
static RECORDED_CALLER_FOUND: AtomicUsize = AtomicUsize::new(0);

/// Called by the clobbering handler: counts the call and keeps r2 and the arguments it saw.
#[notrace]
extern "C" fn registers_record(_ip: u64, _parent: u64, _ops: &FtraceOps, regs: &mut FtraceRegs) {
    RECORDED_TOC.store(regs.regs.gpr[2], Ordering::SeqCst);
    for (slot, value) in RECORDED_ARGUMENTS.iter().zip(&regs.regs.gpr[3..=10]) {
        slot.store(*value, Ordering::SeqCst);
    }
    // The stubs store the return address into the caller in the caller's
    // frame (B has none yet), so a backtrace from here reaches the caller.
    let mut found = false;
    crate::backtrace::walk(crate::arch::registers::stack_pointer(), |address, _| {
        let symbol = crate::symbols::table().and_then(|table| table.lookup(address));
        found |= symbol.is_some_and(|(symbol, _)| symbol.name == "registers_test_call_with_registers");
    });
    RECORDED_CALLER_FOUND.fetch_add(usize::from(found), Ordering::SeqCst);
    RECORDED_CALLS.fetch_add(1, Ordering::SeqCst);
}

static CLOBBERING: FtraceOps =
    FtraceOps::new("test-clobbering", registers_test_clobbering_handler, OpsFlags::RECURSION_SAFE);
static CLOBBERING_REGS: FtraceOps = FtraceOps::new(
    "test-clobbering-regs",
    registers_test_clobbering_handler,
    OpsFlags::RECURSION_SAFE.union(OpsFlags::SAVE_REGS),
);

/// The traced function: eight arguments, no TOC use, touches neither XER nor CR2-4.
#[inline(never)]
extern "C" fn register_target(a: u64, b: u64, c: u64, d: u64, e: u64, f: u64, g: u64, h: u64) -> u64 {
    black_box(a ^ b.rotate_left(7) ^ c.rotate_left(14) ^ d.rotate_left(21) ^ e.rotate_left(28))
        ^ f.rotate_left(35)
        ^ g.rotate_left(42)
        ^ h.rotate_left(49)
}

fn target_address() -> u64 {
    register_target as *const () as u64
}

/// Registers for a call of `register_target`: the pattern, a poisoned r2, arguments 1..=8.
fn traced_call_input(seed: u64) -> Registers {
    let mut input = pattern(seed);
    input.gpr[2] = POISONED_TOC;
    for (number, argument) in (3..=10).zip(1u64..) {
        input.gpr[number] = argument * 0x1111;
    }
    input
}

fn expected_target_result(input: &Registers) -> u64 {
    let g = &input.gpr;
    register_target(g[3], g[4], g[5], g[6], g[7], g[8], g[9], g[10])
}

/// r14-r31 and CR2-4, the registers the ELFv2 ABI makes every callee keep, came back as they went in.
fn assert_nonvolatiles_kept(input: &Registers, output: &Registers, what: fmt::Arguments<'_>) {
    for number in 14..32 {
        assert_eq!(output.gpr[number], input.gpr[number], "{what}: r{number}");
    }
    assert_eq!(output.condition & NONVOLATILE_CR, input.condition & NONVOLATILE_CR, "{what}: CR2-4");
}

/// What must come back from any traced call: r2, r14-r31 and CR2-4 unchanged, the result in r3.
fn assert_call_kept(input: &Registers, output: &Registers, path: &str) {
    assert_eq!(output.gpr[2], POISONED_TOC, "{path}: the caller's r2");
    assert_eq!(output.gpr[3], expected_target_result(input), "{path}: the result");
    assert_nonvolatiles_kept(input, output, format_args!("{path}"));
}

#[ktest]
fn the_test_target_needs_no_toc() {
    // Otherwise a poisoned r2 would break the target itself, not the path under test.
    assert_eq!(text::local_entry(target_address()), target_address());
    let input = traced_call_input(1);
    assert_call_kept(&input, &call_with(target_address(), &input), "untraced");
}

#[ktest]
fn both_stubs_keep_r2_nonvolatiles_and_arguments_under_a_clobbering_handler() {
    for (seed, ops) in [(2, &CLOBBERING), (3, &CLOBBERING_REGS)] {
        let input = traced_call_input(seed);
        let calls = RECORDED_CALLS.load(Ordering::SeqCst);
        let found = RECORDED_CALLER_FOUND.load(Ordering::SeqCst);
        trace::register(ops, Filter::Addresses(&[target_address()])).unwrap();
        let output = call_with(target_address(), &input);
        let direct = register_target(black_box(1), 2, 3, 4, 5, 6, 7, 8);
        trace::unregister(ops).unwrap();
        assert_eq!(RECORDED_CALLS.load(Ordering::SeqCst), calls + 2, "{}: the handler ran", ops.name);
        assert_eq!(
            RECORDED_CALLER_FOUND.load(Ordering::SeqCst),
            found + 1,
            "{}: a backtrace reached the asm caller",
            ops.name
        );
        assert_eq!(direct, register_target(1, 2, 3, 4, 5, 6, 7, 8), "{}: a direct call's arguments", ops.name);
        assert_eq!(RECORDED_TOC.load(Ordering::SeqCst), toc_pointer(), "{}: the direct call's r2", ops.name);
        let seen: Vec<u64> = RECORDED_ARGUMENTS.iter().map(|slot| slot.load(Ordering::SeqCst)).collect();
        assert_eq!(seen, [1, 2, 3, 4, 5, 6, 7, 8], "{}: the arguments the handler saw", ops.name);
        assert_call_kept(&input, &output, ops.name);
    }
}

/// Changes every non-volatile GPR, CR2-4 and XER[CA] in pt_regs, after checking what it was given.
#[notrace]
extern "C" fn rewriting_handler(_: u64, _: u64, _: &FtraceOps, regs: &mut FtraceRegs) {
    let expected = traced_call_input(REWRITE_SEED.load(Ordering::SeqCst));
    let regs = &mut regs.regs;
    let mut wrong = 0;
    for number in (2..=10).chain(14..32) {
        wrong += u64::from(regs.gpr[number] != expected.gpr[number]);
    }
    wrong += u64::from(regs.ccr & NONVOLATILE_CR != expected.condition & NONVOLATILE_CR);
    wrong += u64::from(regs.xer & XER_CARRY != expected.xer & XER_CARRY);
    wrong += u64::from(regs.ctr != target_address());
    wrong += u64::from(!regs.gpr[1].is_multiple_of(16) || regs.gpr[0] != regs.link);
    REWRITE_MISMATCHES.store(wrong, Ordering::SeqCst);
    for number in 14..32 {
        regs.gpr[number] = !regs.gpr[number];
    }
    regs.ccr ^= NONVOLATILE_CR;
    regs.xer ^= XER_CARRY;
    RECORDED_CALLS.fetch_add(1, Ordering::SeqCst);
}
static REWRITE_MISMATCHES: AtomicU64 = AtomicU64::new(u64::MAX);
/// The pattern the caller used (even seeds set XER[CA], odd ones clear it).
static REWRITE_SEED: AtomicU64 = AtomicU64::new(0);
static REWRITING: FtraceOps =
    FtraceOps::new("test-rewriting", rewriting_handler, OpsFlags::RECURSION_SAFE.union(OpsFlags::SAVE_REGS));

#[ktest]
fn full_stub_saves_every_register_and_applies_what_a_handler_writes() {
    // Both XER[CA] values: whatever CA the code after the handler leaves, one of them shows a lost restore.
    for seed in [4, 5] {
        REWRITE_SEED.store(seed, Ordering::SeqCst);
        REWRITE_MISMATCHES.store(u64::MAX, Ordering::SeqCst);
        let input = traced_call_input(seed);
        trace::register(&REWRITING, Filter::Addresses(&[target_address()])).unwrap();
        let output = call_with(target_address(), &input);
        trace::unregister(&REWRITING).unwrap();
        assert_eq!(REWRITE_MISMATCHES.load(Ordering::SeqCst), 0, "pt_regs held the caller's registers (seed {seed})");
        assert_eq!(output.gpr[2], POISONED_TOC);
        assert_eq!(output.gpr[3], expected_target_result(&input));
        for number in 14..32 {
            assert_eq!(output.gpr[number], !input.gpr[number], "r{number} as the handler wrote it");
        }
        assert_eq!(output.condition & NONVOLATILE_CR, (input.condition ^ NONVOLATILE_CR) & NONVOLATILE_CR, "CR2-4");
        assert_eq!(output.xer & XER_CARRY, (input.xer ^ XER_CARRY) & XER_CARRY, "XER[CA] (seed {seed})");
    }
}

/// Returns 128 bits: two result registers, r3 and r4.
#[inline(never)]
fn wide_target(value: u64) -> u128 {
    black_box((u128::from(value.rotate_left(32) ^ 0x5a5a) << 64) | u128::from(value ^ 0xa5a5_0000_0000_a5a5))
}

#[ktest]
fn graph_tracer_returns_both_result_registers_and_the_callers_toc() {
    let wide_expected = wide_target(black_box(0x1234_5678));
    let input = traced_call_input(5);
    trace::graph::start("*tests::registers::*_target").unwrap();
    let wide = wide_target(black_box(0x1234_5678));
    let output = call_with(target_address(), &input);
    trace::graph::stop().unwrap();
    assert_eq!(wide, wide_expected, "r3 and r4 both came back through return_to_handler");
    assert_call_kept(&input, &output, "function_graph");
    let lines = trace::graph::render(Some(thread::current_id()), false);
    assert!(lines.iter().any(|line| line.contains("register_target")), "{lines:?}");
}

/// A livepatchable copy of the target, so the livepatch path has its own site.
#[livepatchable]
extern "C" fn livepatched_target(a: u64, b: u64, c: u64, d: u64, e: u64, f: u64, g: u64, h: u64) -> u64 {
    black_box(a ^ b ^ c ^ d ^ e ^ f ^ g ^ h)
}

/// Replacement: the same function as `register_target` (so the expected result is known).
#[inline(never)]
extern "C" fn livepatched_replacement(a: u64, b: u64, c: u64, d: u64, e: u64, f: u64, g: u64, h: u64) -> u64 {
    register_target(a, b, c, d, e, f, g, h)
}

#[ktest]
fn livepatch_handler_gives_back_a_poisoned_r2_and_every_nonvolatile() {
    let function = Function {
        old_name: String::from("kernel::tests::registers::livepatched_target"),
        old_position: None,
        new_address: livepatched_replacement as *const () as u64,
        allow_inlined: false,
    };
    livepatch::add(Patch {
        name: String::from("registers"),
        objects: vec![Object { module: None, functions: vec![function], ..Default::default() }],
        ..Default::default()
    })
    .unwrap();
    settle::enable("registers").unwrap();
    let address = livepatched_target as *const () as u64;
    assert_eq!(text::local_entry(address), address, "the patched function needs no TOC");
    let input = traced_call_input(6);
    let light = call_with(address, &input);
    // A SAVE_REGS user of the same site moves it to ftrace_regs_caller, which must hand r11 over too.
    trace::register(&CLOBBERING_REGS, Filter::Addresses(&[address])).unwrap();
    let full = call_with(address, &input);
    trace::unregister(&CLOBBERING_REGS).unwrap();
    settle::disable("registers").unwrap();
    livepatch::remove("registers").unwrap();
    assert_call_kept(&input, &light, "livepatch through ftrace_caller");
    assert_call_kept(&input, &full, "livepatch through ftrace_regs_caller");
}
/// Jittered ticks (2-64 us) until dropped.
struct Jitter;
impl Jitter {
    fn on(seed: u64) -> Jitter {
        crate::time::set_jitter(seed);
        Jitter
    }
}
impl Drop for Jitter {
    fn drop(&mut self) {
        crate::time::set_jitter(0);
    }
}

/// Spins with every register patterned; returns (registers before, after, ticks taken).
fn soak(seed: u64, iterations: u64) -> (Registers, Registers, u64) {
    let input = pattern(seed);
    let (mut reference, mut soaked) = (Registers::default(), Registers::default());
    // Safety: the helper keeps every register the ABI asks it to keep.
    unsafe { registers_test_soak(0, &input, &mut reference) };
    let ticks = crate::time::ticks_here();
    // Safety: as above.
    unsafe { registers_test_soak(iterations, &input, &mut soaked) };
    (reference, soaked, crate::time::ticks_here() - ticks)
}

#[ktest]
fn interrupts_and_preemption_give_back_every_register() {
    let _jitter = Jitter::on(0x5eed);
    let workers: Vec<_> = [11u64, 12]
        .into_iter()
        .map(|seed| {
            thread::spawn_on(crate::arch::percpu::BOOT_CPU, "soak", move || {
                // Soak until at least 100 ticks have hit the loop (the host may be fast or slow).
                let (mut total, mut rounds) = (0, 0);
                while total < 100 {
                    let (reference, soaked, ticks) = soak(seed, 200_000);
                    let input = pattern(seed);
                    for number in (0..32).filter(|number| ![1, 3, 13].contains(number)) {
                        assert_eq!(reference.gpr[number], input.gpr[number], "the helper loaded r{number}");
                    }
                    for number in (0..32).filter(|number| ![1, 13].contains(number)) {
                        assert_eq!(soaked.gpr[number], reference.gpr[number], "r{number} after {ticks} ticks");
                    }
                    assert_eq!(soaked.condition, reference.condition, "CR after {ticks} ticks");
                    assert_eq!(soaked.xer, reference.xer, "XER after {ticks} ticks");
                    assert_eq!(soaked.ctr, reference.ctr, "CTR after {ticks} ticks");
                    assert_eq!(soaked.link, reference.link, "LR after {ticks} ticks");
                    total += ticks;
                    rounds += 1;
                    assert!(rounds < 100_000, "only {total} ticks in {rounds} soaks");
                }
            })
            .unwrap()
        })
        .collect();
    for worker in workers {
        assert_eq!(worker.join(), ExitStatus::Returned);
    }
}

#[ktest]
fn yielding_threads_keep_their_own_nonvolatile_registers() {
    let workers: Vec<_> = [21u64, 22]
        .into_iter()
        .map(|seed| {
            thread::spawn_on(crate::arch::percpu::BOOT_CPU, "yielder", move || {
                let mut input = pattern(seed);
                input.gpr[2] = toc_pointer();
                for round in 0..200 {
                    let output = call_with(thread::yield_now as *const () as u64, &input);
                    assert_eq!(output.gpr[2], input.gpr[2], "r2 after yield {round}");
                    assert_nonvolatiles_kept(&input, &output, format_args!("after yield {round}"));
                }
            })
            .unwrap()
        })
        .collect();
    for worker in workers {
        assert_eq!(worker.join(), ExitStatus::Returned);
    }
}

/// Yields from a frame 2 KiB below its caller's, so that the switch away
/// leaves this thread's saved r1 far below where its later calls put their
/// frames (and the frame there is overwritten once it runs again).
#[inline(never)]
fn yield_from_a_deep_frame() {
    let mut padding = [0u64; 256];
    black_box(&mut padding);
    thread::yield_now();
    black_box(&mut padding);
}

/// The end-to-end crash, made certain. A thread whose sleep is already over
/// when `schedule` looks (here a 0 ms sleep; there a 10 ms one in a guest
/// the host had stalled) was woken by that same `schedule` and, nothing else
/// being ready, picked as the next thread: `switch_context` from the thread
/// to itself loaded its saved r1, stale while it runs (its last switch away,
/// here from the deep frame above, overwritten since), and resumed it with
/// what lay there: wrong r2 and non-volatiles, a return into data. The first
/// sleep fails that way through `sleep_milliseconds`' own `schedule`; the
/// jittered ticks used to land between its marking the thread Sleeping and
/// `schedule` too, where the timer's `schedule` did the same (the way the
/// shell thread crashed), until `asleep_until_switched` kept interrupts off
/// there: they now wait for the switch.
#[ktest]
fn a_thread_whose_sleep_is_over_before_it_switches_away_keeps_running_with_its_registers() {
    let _jitter = Jitter::on(0x51ee_7e11);
    let mut input = pattern(24);
    input.gpr[2] = toc_pointer();
    input.gpr[3] = 0; // sleep_milliseconds(0): over before `schedule` looks
    let ticks = crate::time::ticks_here();
    let mut round = 0;
    // Until 300 ticks have come (the first jittered one once the 10 ms interval armed before is over).
    while crate::time::ticks_here() - ticks < 300 {
        assert!(round < 10_000, "only {} ticks in {round} rounds", crate::time::ticks_here() - ticks);
        // Ready, so that the yield really switches away; it ends at once.
        let partner = thread::spawn_on(crate::arch::percpu::BOOT_CPU, "partner", || {}).expect("room for a thread");
        yield_from_a_deep_frame();
        assert_eq!(partner.join(), ExitStatus::Returned);
        // Nothing else is ready now (the runner joins this thread; idle never queues).
        for sleep in 0..100 {
            let output = call_with(thread::sleep_milliseconds as *const () as u64, &input);
            assert_eq!(output.gpr[2], input.gpr[2], "r2 after sleep {sleep} of round {round}");
            assert_nonvolatiles_kept(&input, &output, format_args!("after sleep {sleep} of round {round}"));
        }
        round += 1;
    }
}

#[ktest]
fn switch_context_saves_and_loads_every_nonvolatile_register() {
    use crate::arch::context::{SWITCH_FRAME_SIZE, SwitchFrame, switch_context};
    // A second context on a stack of our own: a SwitchFrame that resumes the coroutine above.
    let mut stack = vec![0u64; 1024];
    let mut coroutine = Coroutine { caller: 0, own: 0 };
    let top = (stack.as_mut_ptr() as u64 + 8 * 1024) & !15;
    let frame_address = top - SWITCH_FRAME_SIZE as u64 - MINIMAL_FRAME as u64;
    let theirs = pattern(32);
    // Safety: the frame lies inside `stack`, 16-byte aligned.
    let frame = unsafe { &mut *(frame_address as *mut SwitchFrame) };
    frame.header = [0; MINIMAL_FRAME / 8];
    frame.nonvolatile.copy_from_slice(&theirs.gpr[14..32]);
    frame.nonvolatile[0] = &raw mut coroutine as u64;
    frame.toc = !POISONED_TOC;
    frame.condition = theirs.condition;
    frame.link = registers_test_coroutine as *const () as u64;
    // Ours: a poisoned r2, the pattern in r14-r31 and CR; r3 = where our r1 goes, r4 = theirs.
    let mut input = pattern(31);
    input.gpr[2] = POISONED_TOC;
    input.gpr[3] = &raw mut coroutine.caller as u64;
    input.gpr[4] = frame_address;
    let output = {
        // switch_context wants interrupts off; nothing may run on the coroutine's stack.
        let _interrupts = crate::arch::interrupts::disable();
        call_with(switch_context as *const () as u64, &input)
    };
    assert_ne!(coroutine.own, 0, "the coroutine ran and switched back");
    assert_eq!(output.gpr[2], POISONED_TOC, "r2");
    assert_nonvolatiles_kept(&input, &output, format_args!("after the switch back"));
    drop(stack);
}

/// Set once `check_openfirmware_call` ran at boot.
static OPENFIRMWARE_CHECKED: AtomicBool = AtomicBool::new(false);
/// Bit n: rn differed after the firmware call; bit 32: CR2-4; bit 33: the call failed.
static OPENFIRMWARE_MISMATCHES: AtomicU64 = AtomicU64::new(0);

/// Called by boot_main in the test kernel, before the device tree is
/// flattened (the firmware is still alive): one harmless client interface
/// call (`finddevice "/"`) through `enter_openfirmware` with a poisoned r2 and
/// r14-r31 patterned in both halves. The firmware runs in 32-bit mode and keeps
/// only the low halves of non-volatile registers, so each high half that
/// comes back was restored by `enter_openfirmware` itself.
pub fn check_openfirmware_call(entry: u64) {
    let path = b"/\0";
    let service = b"finddevice\0";
    // Big-endian cells: service, one argument, one result, the path, the result.
    let mut block: [u32; 5] =
        [(service.as_ptr() as u32).to_be(), 1u32.to_be(), 1u32.to_be(), (path.as_ptr() as u32).to_be(), 0];
    let mut input = pattern(41);
    input.gpr[2] = POISONED_TOC;
    input.gpr[3] = block.as_mut_ptr() as u64;
    input.gpr[4] = entry;
    let output = call_with(boot::enter_openfirmware as *const () as u64, &input);
    let mut mismatches = 0;
    for number in (14..32).chain([2]) {
        mismatches |= u64::from(output.gpr[number] != input.gpr[number]) << number;
    }
    mismatches |= u64::from(output.condition & NONVOLATILE_CR != input.condition & NONVOLATILE_CR) << 32;
    // Safety: the firmware wrote the result cell behind the compiler's back.
    let phandle = u32::from_be(unsafe { core::ptr::read_volatile(&block[4]) });
    mismatches |= u64::from(output.gpr[3] != 0 || phandle == 0) << 33;
    OPENFIRMWARE_MISMATCHES.store(mismatches, Ordering::SeqCst);
    OPENFIRMWARE_CHECKED.store(true, Ordering::SeqCst);
}

#[ktest]
fn open_firmware_call_gives_back_r2_and_both_halves_of_every_nonvolatile_register() {
    assert!(OPENFIRMWARE_CHECKED.load(Ordering::SeqCst), "boot_main ran the check");
    assert_eq!(OPENFIRMWARE_MISMATCHES.load(Ordering::SeqCst), 0, "bit n: rn, bit 32: CR2-4, bit 33: the call failed");
}
