//! Tests of module unloading under concurrency: the window at `livepatch_handler`'s entry, per-module busy checks, the grace period.
use super::settle;
use crate::arch::livepatch::livepatch_handler;
use crate::arch::registers::Msr;
use crate::livepatch::{self, Blocker, Function, Object, Patch};
use crate::module::{self, LoadError};
use crate::thread::{self, ExitStatus};
use crate::trace::{self, Filter, FtraceOps, FtraceRegs, OpsFlags};
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use boot::PerCpu;
use core::hint::black_box;
use core::mem::offset_of;
use core::sync::atomic::{AtomicU64, Ordering};
use macros::{ktest, livepatchable, notrace};

fn embedded(name: &str) -> &'static [u8] {
    module::embedded::find(name).expect("xtask builds the sample modules into the test kernel")
}

/// What `kernel::shell::greeting` returns without a patch, and with the counter module.
const ORIGINAL_GREETING: &str = "hello from the original kernel";
const COUNTER_GREETING: &str = "hello from the counter patch module";

/// Adds and enables a kernel patch replacing `old_name` by `new_address`.
fn enable_kernel_patch(name: &str, old_name: &str, new_address: u64) {
    let functions =
        vec![Function { old_name: String::from(old_name), old_position: None, new_address, allow_inlined: false }];
    livepatch::add(Patch {
        name: String::from(name),
        objects: vec![Object { module: None, functions, ..Default::default() }],
        ..Default::default()
    })
    .expect("adds");
    settle::enable(name).expect("enables");
}

/// Disables and removes a kernel patch.
fn retire(name: &str) {
    settle::disable(name).expect("enabled");
    livepatch::remove(name).expect("disabled");
}

/// Unloads `name`, retrying while it is busy; returns how often it was busy.
fn unload_when_idle(name: &str) -> u64 {
    let mut busy = 0;
    loop {
        match module::unload(name) {
            Ok(()) => return busy,
            Err(LoadError::Busy(..)) => {
                busy += 1;
                thread::yield_now();
            }
            // Its disable transition left to the worker: wait for it.
            Err(LoadError::InTransition(..)) => settle::wait(),
            Err(other) => panic!("unload {name}: {other}"),
        }
    }
}

// ---- 1. The window between ftrace_caller and the push ---------------------------

core::arch::global_asm!(
    r#"
    .text
    # unload_test_tick_probe: a way into livepatch_handler with a timer tick pending.
    #
    # On entry: exactly as livepatch_handler (r11 = C's global entry, LR = r0 =
    # the return address into A, r1 = A's stack pointer, r2-r10 as at B's
    # entry); r12 and CTR free; MSR[EE] = 0 already (the diverting handler
    # cleared it, so no tick lands before livepatch_handler).
    # Makes a decrementer interrupt pending with MSR[EE] off, then enters
    # livepatch_handler by rfid with EE on, so the tick is taken with NIP =
    # livepatch_handler: the worst moment, C's address only in r11.
    # On exit: at livepatch_handler, every register but r0, r12 and CR0 as
    # on entry (all free there); SRR0 and SRR1 clobbered.
    .globl unload_test_tick_probe
    .type unload_test_tick_probe, @function
unload_test_tick_probe:
    li      12, {msr_ri}
    mtmsrd  12, 1                     # MSR[EE] = 0, RI stays 1 (already so; kept for a direct entry)
    li      12, 3
    mtdec   12                        # DEC = 3: expires at once, as a tick does (one interrupt)
    mftb    0
    addis   0, 0, 1                   # r0 = timebase + 65536 (128 us)
1:  mftb    12
    cmpld   12, 0
    blt     1b                        # wait with EE = 0 until QEMU has raised the tick
    ld      12, {percpu_toc}(13)      # r12 = kernel TOC
    addis   12, 12, livepatch_handler@toc@ha
    addi    12, 12, livepatch_handler@toc@l     # r12 = livepatch_handler
    mtsrr0  12                        # SRR0 = livepatch_handler
    mfmsr   12
    ori     12, 12, {msr_ee}          # r12 = this MSR with EE on
    mtsrr1  12                        # SRR1 = r12
    rfid                              # to livepatch_handler, EE on: the tick is taken there
    .size unload_test_tick_probe, . - unload_test_tick_probe
    "#,
    msr_ri = const Msr::RI.bits(),
    msr_ee = const Msr::EE.bits(),
    percpu_toc = const offset_of!(PerCpu, toc),
);

unsafe extern "C" {
    fn unload_test_tick_probe();
}

/// Calls the probe diverted into `unload_test_tick_probe`.
static PROBED_CALLS: AtomicU64 = AtomicU64::new(0);

/// Runs after the livepatch handler on `kernel::shell::greeting`: a call it
/// sent to `livepatch_handler` goes through the probe instead.
#[notrace]
extern "C" fn divert_through_tick_probe(_ip: u64, _parent_ip: u64, _ops: &FtraceOps, regs: &mut FtraceRegs) {
    if regs.regs.nip == livepatch_handler as *const () as u64 {
        regs.regs.nip = unload_test_tick_probe as *const () as u64;
        PROBED_CALLS.fetch_add(1, Ordering::Relaxed);
        // MSR[EE] = 0 from here to the probe's rfid: the stubs leave the MSR
        // alone, and the probe's first instructions, unlike livepatch_handler's,
        // are not covered by `livepatch::entering`, so a tick taken there would
        // switch the thread out with C's address only in r11, a window the
        // kernel does not have and the test must not add.
        // Safety: clears EE only (RI stays 1); the probe's rfid turns it back on.
        unsafe { core::arch::asm!("mtmsrd {0}, 1", in(reg) 2u64, options(nostack)) };
    }
}

static TICK_PROBE: FtraceOps = FtraceOps::new("unload-tick-probe", divert_through_tick_probe, OpsFlags::RECURSION_SAFE);

/// Patched for the length of a test so that the livepatch ops stays first
/// in the ftrace list (it is unregistered whenever no patch is enabled).
#[livepatchable]
fn anchor_original() -> u64 {
    black_box(1)
}

#[inline(never)]
fn anchor_replacement() -> u64 {
    black_box(2)
}

/// `bctrl`: branch to CTR and link.
const BCTRL: u32 = 0x4e80_0421;

/// The window the timer must not preempt, read from the code itself rather
/// than from the labels `entering` uses: every instruction of
/// `livepatch_handler` from the first up to and including the `bctrl` (C's
/// address is only in r11 or CTR there), and nothing after it or before it.
/// The unload test above parks the tick exactly at the first instruction,
/// but it counts such a switch through `entering` too, so it cannot see
/// `entering` itself shrink.
#[ktest]
fn entering_covers_livepatch_handler_up_to_and_including_its_bctrl() {
    use crate::arch::livepatch::entering;
    let start = livepatch_handler as *const () as u64;
    // Safety: reads the kernel's own text, up to the bctrl within the handler.
    let bctrl = (0..64u64).map(|index| start + 4 * index).find(|&address| unsafe { *(address as *const u32) } == BCTRL);
    let bctrl = bctrl.expect("livepatch_handler calls C with bctrl");
    assert!(!entering(start - 4), "the instruction before livepatch_handler is not in the window");
    for address in (start..=bctrl).step_by(4) {
        assert!(entering(address), "livepatch_handler+{:#x} (C only in r11/CTR) is in the window", address - start);
    }
    assert!(!entering(bctrl + 4), "after the bctrl (C returned) the window is over");
}

#[ktest]
fn unloading_while_callers_are_preempted_entering_the_replacement_never_runs_freed_code() {
    static DONE: AtomicU64 = AtomicU64::new(0);
    static WRONG: AtomicU64 = AtomicU64::new(0);
    static CALLS: AtomicU64 = AtomicU64::new(0);
    DONE.store(0, Ordering::SeqCst);
    WRONG.store(0, Ordering::SeqCst);
    CALLS.store(0, Ordering::SeqCst);
    PROBED_CALLS.store(0, Ordering::SeqCst);
    enable_kernel_patch(
        "unload-anchor",
        "kernel::tests::unload::anchor_original",
        anchor_replacement as *const () as u64,
    );
    trace::register(&TICK_PROBE, Filter::Names(&["kernel::shell::greeting"])).expect("the probe registers");
    let workers: Vec<_> = (0..3)
        .map(|_| {
            thread::spawn_on(crate::arch::percpu::BOOT_CPU, "greeter", || {
                while DONE.load(Ordering::SeqCst) == 0 {
                    let text = crate::shell::greeting();
                    if text != ORIGINAL_GREETING && text != COUNTER_GREETING {
                        WRONG.fetch_add(1, Ordering::SeqCst);
                    }
                    CALLS.fetch_add(1, Ordering::SeqCst);
                    // Between two calls, outside the patched code: where this
                    // thread may switch. Preempted by a tick it has an
                    // exception frame on its stack, which the transition never
                    // trusts, so without this each load (enable) and unload
                    // (disable) of the counter module would stall until DONE.
                    crate::livepatch::safe_point();
                }
            })
            .expect("room for a thread")
        })
        .collect();
    crate::time::set_jitter(0x2545_f491_4f6c_dd1d);
    let mut busy = 0;
    for _ in 0..30 {
        settle::load(embedded("counter")).expect("the counter module loads");
        thread::sleep_milliseconds(1);
        busy += unload_when_idle("counter");
    }
    crate::time::set_jitter(0);
    DONE.store(1, Ordering::SeqCst);
    let statuses: Vec<ExitStatus> = workers.into_iter().map(|worker| worker.join()).collect();
    trace::unregister(&TICK_PROBE).expect("registered");
    retire("unload-anchor");
    crate::println!(
        "unload test: {} calls, {} through the probe, unload busy {busy} times",
        CALLS.load(Ordering::SeqCst),
        PROBED_CALLS.load(Ordering::SeqCst)
    );
    assert!(statuses.iter().all(|status| *status == ExitStatus::Returned), "callers: {statuses:?}");
    assert_eq!(
        module::busy::PARKED_ENTERING.load(Ordering::SeqCst),
        0,
        "no caller was ever switched out before its call of C"
    );
    assert_eq!(WRONG.load(Ordering::SeqCst), 0, "every call returned one of the two greetings");
    assert!(PROBED_CALLS.load(Ordering::SeqCst) > 30, "the probe put callers at the window");
    // The model says more than the scan did: once the disable transition
    // completed, every caller had been seen (reliably) outside the module
    // and gets the original from then on, so the final scan never finds one
    // inside or about to enter it.
    assert_eq!(busy, 0, "the final scan found a caller in the module after the disable transition completed");
    assert!(module::summaries().is_empty());
}

// ---- 2. Busy per module ------------------------------------------------------------

/// Threads parked in `parked_uptime_ticks`, and the flag that lets them go.
static PARKED: AtomicU64 = AtomicU64::new(0);
static RELEASE: AtomicU64 = AtomicU64::new(0);

/// Replaces `klp_uptime_ticks` (which the counter module calls): waits,
/// sleeping, until RELEASE is set. A thread that called it from the module
/// has the module's code as the return target of its livepatch frame.
#[inline(never)]
extern "C" fn parked_uptime_ticks() -> u64 {
    PARKED.fetch_add(1, Ordering::SeqCst);
    while RELEASE.load(Ordering::SeqCst) == 0 {
        thread::sleep_milliseconds(1);
    }
    black_box(7)
}

/// Sleeps until `count` threads are parked.
fn wait_for_parked(count: u64) {
    while PARKED.load(Ordering::SeqCst) < count {
        thread::sleep_milliseconds(1);
    }
}

/// Calls `klp_uptime_ticks` through a pointer, as a module does (its global entry).
fn uptime_ticks_indirectly() -> u64 {
    let function: extern "C" fn() -> u64 = black_box(crate::livepatch::api::klp_uptime_ticks);
    function()
}

/// Asserts that `result` is the refusal of an unload whose disable transition
/// is stalled, for module `module`, by thread `thread` having on its stack
/// a return into `module`'s memory, counted as code of `function`.
fn assert_stalled_by(result: &Result<(), LoadError>, module: &str, thread: &str, function: &str) {
    let Err(LoadError::InTransition(name, blocked)) = result else {
        panic!("unloading '{module}' waits for the disable transition, which '{thread}' stalls: {result:?}")
    };
    assert_eq!(name, module);
    let memory = module::summaries()
        .into_iter()
        .find(|(loaded, ..)| loaded == module)
        .map(|(_, address, size, _)| address..address + size as u64)
        .unwrap_or_else(|| panic!("'{module}' is still loaded"));
    assert!(
        blocked.iter().any(|blocked| blocked.name == thread
            && matches!(&blocked.blocker, Blocker::Function { function: named, address }
                if named == function && memory.contains(address))),
        "'{thread}' blocks the transition with a return into '{module}' ({function}): {blocked:?}"
    );
    assert!(livepatch::in_transition(module), "the patch stays in transition");
    assert_unpoisoned(memory);
}

/// Asserts that module memory was not freed: its words are not the poison
/// (the module's first instruction, and the eight words at its middle that
/// `unloaded_module_memory_is_filled_with_trap_instructions` reads).
fn assert_unpoisoned(memory: core::ops::Range<u64>) {
    let middle = (memory.start + (memory.end - memory.start) / 2) & !3;
    // Safety: the memory of a loaded module (checked by the caller), plain word reads.
    let read = |address: u64| unsafe { (address as *const u32).read_volatile() };
    assert_ne!(read(memory.start), module::POISON, "the module's first word is not poisoned");
    let words: Vec<u32> = (0..8u64).map(|index| read(middle + 4 * index)).collect();
    assert!(words.iter().any(|&word| word != module::POISON), "the module's memory is not poisoned: {words:x?}");
}

/// On the consistency model a thread inside a module's code blocks the
/// disable transition of the module's patch, so the unload is refused with
/// `InTransition` (not `Busy`: the final scan, `busy::inside`, is not
/// reached; section 4b tests it directly) and the module stays loaded,
/// its memory intact. A thread inside another module, or inside a built-in
/// patch only, does not block it. Once the thread left, unloading succeeds.
#[ktest]
fn a_thread_inside_one_module_stalls_only_that_modules_unload_until_it_leaves() {
    PARKED.store(0, Ordering::SeqCst);
    RELEASE.store(0, Ordering::SeqCst);
    settle::load(embedded("counter")).expect("counter loads");
    settle::load(embedded("ten")).expect("ten loads");
    enable_kernel_patch("park", "klp_uptime_ticks", parked_uptime_ticks as *const () as u64);
    // Inside the counter module: greeting -> counter_greeting -> klp_uptime_ticks -> parked.
    let in_module = thread::spawn_on(crate::arch::percpu::BOOT_CPU, "in-counter", || {
        black_box(crate::shell::greeting());
    })
    .expect("room for a thread");
    // Inside a built-in (kernel) patch only: its livepatch frame returns into the kernel.
    let in_kernel_patch = thread::spawn_on(crate::arch::percpu::BOOT_CPU, "in-kernel-patch", || {
        black_box(uptime_ticks_indirectly());
    })
    .expect("room for a thread");
    wait_for_parked(2);
    // Ten's disable transition is blocked by neither thread; it may still be
    // left to the worker (`livepatch.transition_wait=0`), hence `settle`.
    let ten = settle::unload("ten");
    let counter = module::unload("counter");
    // Checked while the thread is still inside: the module must be intact now.
    assert_stalled_by(&counter, "counter", "in-counter", "kernel::shell::greeting");
    if let Err(LoadError::InTransition(_, blocked)) = &counter {
        assert!(
            blocked.iter().all(|blocked| blocked.name != "in-kernel-patch"),
            "a thread inside a built-in patch only does not block 'counter': {blocked:?}"
        );
    }
    RELEASE.store(1, Ordering::SeqCst);
    assert_eq!(in_module.join(), ExitStatus::Returned);
    assert_eq!(in_kernel_patch.join(), ExitStatus::Returned);
    let counter_after = settle::unload("counter");
    retire("park");
    let _ = settle::unload("ten");
    assert!(ten.is_ok(), "a thread inside another module and one inside a built-in patch do not block 'ten': {ten:?}");
    assert!(counter_after.is_ok(), "once that thread left: {counter_after:?}");
    assert!(module::summaries().is_empty());
}

/// The final scan (`busy::inside`) still has a case of its own: a thread
/// that entered the module by a pointer it was handed, not through the
/// patch. The patch is disabled first (its transition completes: nobody is
/// inside yet); then a thread calls the module's `counter_greeting`
/// directly and parks below it. Unloading finds no transition to wait for,
/// and the scan finds the thread: `Busy`, naming it and an address in the
/// module, which stays loaded and intact; once the thread left, it unloads.
#[ktest]
fn a_thread_that_entered_a_module_by_pointer_after_its_patch_was_disabled_makes_it_busy() {
    static HOLDER: AtomicU64 = AtomicU64::new(0);
    PARKED.store(0, Ordering::SeqCst);
    RELEASE.store(0, Ordering::SeqCst);
    settle::load(embedded("counter")).expect("counter loads");
    enable_kernel_patch("park", "klp_uptime_ticks", parked_uptime_ticks as *const () as u64);
    let replacement = livepatch::list()
        .into_iter()
        .find(|patch| patch.name == "counter")
        .and_then(|patch| patch.functions.into_iter().next())
        .map(|function| function.new)
        .expect("the counter patch replaces kernel::shell::greeting");
    settle::disable("counter").expect("nobody is inside yet");
    // Safety: `counter_greeting`, a `fn() -> &'static str` of the loaded
    // module (its global entry sets up the module's TOC from r12).
    let by_pointer: fn() -> &'static str = unsafe { core::mem::transmute(replacement as usize) };
    let holder = thread::spawn_on(crate::arch::percpu::BOOT_CPU, "by-pointer", move || {
        HOLDER.store(thread::current_id(), Ordering::SeqCst);
        assert_eq!(by_pointer(), COUNTER_GREETING);
    })
    .expect("room for a thread");
    wait_for_parked(1);
    let memory = module::summaries()
        .into_iter()
        .find(|(name, ..)| name == "counter")
        .map(|(_, address, size, _)| address..address + size as u64)
        .expect("counter is loaded");
    let first = module::unload("counter");
    match &first {
        Err(LoadError::Busy(name, holder)) => {
            assert_eq!(name, "counter");
            assert_eq!(holder.thread, HOLDER.load(Ordering::SeqCst), "the thread inside is named: {holder:?}");
            assert!(memory.contains(&holder.address), "with an address inside the module: {holder:?}");
        }
        other => panic!("the final scan finds the thread inside the module: {other:?}"),
    }
    assert_eq!(module::memory_ranges(), vec![memory.clone()], "the module stays loaded");
    assert_unpoisoned(memory);
    RELEASE.store(1, Ordering::SeqCst);
    assert_eq!(holder.join(), ExitStatus::Returned);
    let after = settle::unload("counter");
    retire("park");
    assert!(after.is_ok(), "once the thread left: {after:?}");
    assert!(module::summaries().is_empty());
}

/// Replaces `klp_uptime_ticks`: the calling thread is killed here, as a BUG
/// or an Oops would kill it.
#[inline(never)]
extern "C" fn dying_uptime_ticks() -> u64 {
    PARKED.fetch_add(1, Ordering::SeqCst);
    thread::kill_current("killed inside a replacement on purpose");
}

#[ktest]
fn a_thread_killed_inside_a_module_does_not_keep_it_loaded() {
    PARKED.store(0, Ordering::SeqCst);
    settle::load(embedded("counter")).expect("counter loads");
    enable_kernel_patch("die", "klp_uptime_ticks", dying_uptime_ticks as *const () as u64);
    let victim = thread::spawn_on(crate::arch::percpu::BOOT_CPU, "killed-in-counter", || {
        black_box(crate::shell::greeting());
    })
    .expect("room for a thread");
    wait_for_parked(1);
    thread::sleep_milliseconds(5);
    // Dead but not joined: its stack, livepatch frames included, is still there.
    let unloaded = settle::unload("counter");
    retire("die");
    assert_eq!(victim.join(), ExitStatus::Killed("killed inside a replacement on purpose"));
    assert!(unloaded.is_ok(), "a dead thread's frames do not count: {unloaded:?}");
    assert!(module::summaries().is_empty());
}

// ---- 3. The grace period -------------------------------------------------------------

#[ktest]
fn module_memory_outlives_a_reader_that_holds_a_pointer_across_one_switch() {
    static DONE: AtomicU64 = AtomicU64::new(0);
    static CHANGED: AtomicU64 = AtomicU64::new(0);
    static READS: AtomicU64 = AtomicU64::new(0);
    DONE.store(0, Ordering::SeqCst);
    CHANGED.store(0, Ordering::SeqCst);
    READS.store(0, Ordering::SeqCst);
    let reader = thread::spawn_on(crate::arch::percpu::BOOT_CPU, "module-reader", || {
        while DONE.load(Ordering::SeqCst) == 0 {
            // A pointer into the module, taken while it is loaded ...
            let Some((_, address, _, _)) = module::summaries().into_iter().find(|(name, ..)| name == "greeting") else {
                thread::yield_now();
                continue;
            };
            // Safety: the module is loaded now; the word is inside its block.
            let before = unsafe { (address as *const u64).read_volatile() };
            // ... held across one context switch, then used again.
            thread::yield_now();
            // Safety: what the test checks: the block is still the module's.
            let after = unsafe { (address as *const u64).read_volatile() };
            if after != before {
                CHANGED.fetch_add(1, Ordering::SeqCst);
            }
            READS.fetch_add(1, Ordering::SeqCst);
        }
    })
    .expect("room for a thread");
    for _ in 0..50 {
        settle::load(embedded("greeting")).expect("greeting loads");
        thread::yield_now();
        settle::unload("greeting").expect("nobody runs the greeting module's code");
        thread::yield_now();
    }
    DONE.store(1, Ordering::SeqCst);
    assert_eq!(reader.join(), ExitStatus::Returned);
    assert!(READS.load(Ordering::SeqCst) > 10, "{} reads", READS.load(Ordering::SeqCst));
    assert_eq!(CHANGED.load(Ordering::SeqCst), 0, "module memory was freed (poisoned) under a reader");
}

// ---- 4. What the scan reads: an interrupted NIP, a return address on the stack ----------

core::arch::global_asm!(
    r#"
    .text
    # unload_test_return_with_tick: stands in for klp_uptime_ticks (a
    # NIP-changing ftrace handler sends the call here).
    #
    # On entry (from ftrace_caller): LR = r0 = the return address into the
    # caller (module code here); no arguments; r12 and CTR free.
    # Returns 7 to the caller with a decrementer tick pending, so the tick is
    # taken at the return address: the thread is switched out with NIP in
    # the module, and LR pointing at the rfid below, not into the module.
    # On exit: r3 = 7; r0, r12, CR0, LR, SRR0, SRR1 clobbered.
    .globl unload_test_return_with_tick
    .type unload_test_return_with_tick, @function
unload_test_return_with_tick:
    li      3, 7                      # r3 = the result
    mflr    12
    mtsrr0  12                        # SRR0 = the return address into the caller
    li      12, {msr_ri}
    mtmsrd  12, 1                     # MSR[EE] = 0, RI stays 1
    li      12, 3
    mtdec   12                        # DEC = 3: expires at once, as a tick does (one interrupt)
    mftb    0
    addis   0, 0, 1                   # r0 = timebase + 65536 (128 us)
2:  mftb    12
    cmpld   12, 0
    blt     2b                        # wait with EE = 0 until QEMU has raised the tick
    mfmsr   12
    ori     12, 12, {msr_ee}          # r12 = this MSR with EE on
    mtsrr1  12                        # SRR1 = r12
    bl      1f                        # LR = the rfid: no module address left in LR
1:  rfid                              # return, EE on: the tick is taken at the return address
    .size unload_test_return_with_tick, . - unload_test_return_with_tick
    "#,
    msr_ri = const Msr::RI.bits(),
    msr_ee = const Msr::EE.bits(),
);

unsafe extern "C" {
    fn unload_test_return_with_tick() -> u64;
}

/// Where the probe on the kernel exports the counter module calls sends the call: 1 = return with a
/// tick pending, 2 = park in `parked_in_kernel`.
static DIVERSION: AtomicU64 = AtomicU64::new(0);
/// Calls the probe diverted.
static DIVERTED: AtomicU64 = AtomicU64::new(0);

/// Stands in for `klp_uptime_ticks`, entered as if its caller had called it:
/// saves the return address into the module in the caller's LR slot, then
/// sleeps until RELEASE. Only that stack slot shows the module is in use.
#[inline(never)]
extern "C" fn parked_in_kernel() -> u64 {
    while RELEASE.load(Ordering::SeqCst) == 0 {
        thread::sleep_milliseconds(1);
    }
    black_box(7)
}

#[notrace]
extern "C" fn divert_uptime_ticks(_ip: u64, _parent_ip: u64, _ops: &FtraceOps, regs: &mut FtraceRegs) {
    let target = match DIVERSION.load(Ordering::Relaxed) {
        1 => unload_test_return_with_tick as *const () as u64,
        2 => parked_in_kernel as *const () as u64,
        _ => return,
    };
    regs.regs.nip = target;
    DIVERTED.fetch_add(1, Ordering::Relaxed);
}

static UPTIME_PROBE: FtraceOps =
    FtraceOps::new("unload-uptime-probe", divert_uptime_ticks, OpsFlags::IPMODIFY.union(OpsFlags::RECURSION_SAFE));

#[ktest]
fn a_thread_switched_out_in_module_code_or_below_it_stalls_the_unload_until_it_leaves() {
    for diversion in [1, 2] {
        DIVERSION.store(diversion, Ordering::SeqCst);
        DIVERTED.store(0, Ordering::SeqCst);
        RELEASE.store(0, Ordering::SeqCst);
        settle::load(embedded("counter")).expect("counter loads");
        // The counter module calls these one after the other: with diversion 1
        // its thread is switched out in the module three times, so a grace
        // period alone (one more time slice) would not see it out of the module.
        let names = ["klp_uptime_ticks", "klp_thread_id", "klp_print"];
        trace::register(&UPTIME_PROBE, Filter::Names(&names)).expect("the probe registers");
        let victim = thread::spawn_on(crate::arch::percpu::BOOT_CPU, "in-counter", || {
            assert_eq!(crate::shell::greeting(), COUNTER_GREETING);
        })
        .expect("room for a thread");
        // The victim runs when this thread yields, and is switched out where the probe put it.
        while DIVERTED.load(Ordering::SeqCst) == 0 {
            thread::yield_now();
        }
        // Diversion 1 leaves the victim nowhere to stall the unload for
        // long: its disable transition may still be left to the worker
        // (`livepatch.transition_wait=0`), which `settle::unload` waits for.
        let first = match diversion {
            1 => settle::unload("counter"),
            _ => module::unload("counter"),
        };
        if diversion == 2 {
            // Checked while the victim is still asleep below the module.
            assert_stalled_by(&first, "counter", "in-counter", "kernel::shell::greeting");
        }
        RELEASE.store(1, Ordering::SeqCst);
        let status = victim.join();
        trace::unregister(&UPTIME_PROBE).expect("registered");
        let after = settle::unload("counter");
        assert_eq!(status, ExitStatus::Returned, "diversion {diversion}: the victim came back from the module");
        match diversion {
            // Preempted with NIP in the module: its stack has an exception
            // frame, which the walker never trusts, so the disable transition
            // waits until the victim has left the module and exited (its
            // last safe point), then the unload succeeds.
            1 => assert!(first.is_ok(), "{first:?}"),
            // Asleep below the module (a return address into it on its
            // stack): the walk is reliable and finds the module's code, so
            // the disable transition stalls (`InTransition`, checked above;
            // the final scan, which used to answer `Busy` here, is not
            // reached); once the victim has left, the unload succeeds.
            _ => assert!(after.is_ok(), "{after:?}"),
        }
        assert!(module::summaries().is_empty());
    }
    DIVERSION.store(0, Ordering::SeqCst);
}

// ---- 4b. A tick in a callee's epilogue: the return address only in r0 and the caller's LR slot ----

core::arch::global_asm!(
    r#"
    .text
    # unload_test_stand_in_module: plays module code (C) for the scan: a
    # function with a frame that calls a kernel function.
    #
    # On entry: r3 = &PARKED (the flag the callee sets); LR = the return
    # address into the Rust caller. On exit: r3 = 7; r0, r12, CR0
    # clobbered; non-volatile registers kept.
    .globl unload_test_stand_in_module
    .type unload_test_stand_in_module, @function
unload_test_stand_in_module:
    mflr    0
    std     0, 16(1)                  # caller's LR slot = the return address into Rust
    stdu    1, -32(1)                 # C's frame
    bl      unload_test_epilogue_tick # the kernel callee; returns here, into "module code"
    addi    1, 1, 32                  # pop C's frame
    ld      0, 16(1)
    mtlr    0                         # LR = the return address into Rust
    blr
    .size unload_test_stand_in_module, . - unload_test_stand_in_module
    .globl unload_test_stand_in_module_end
unload_test_stand_in_module_end:

    # unload_test_epilogue_tick: the kernel callee; waits in its epilogue,
    # after its frame is popped, until the test has looked.
    #
    # On entry: LR = the return address into C; r1 = C's frame; r3 = &PARKED.
    # Saves the return address in C's LR slot and pushes a frame, as a
    # prologue does; makes LR a stale kernel address, as a call would; then
    # pops the frame and loads r0 from C's LR slot, as an epilogue does, and
    # spins before its `mtlr` (EE on, a tick made pending to switch it out
    # soon) with PARKED = 1 until the test sets it to 2: wherever a tick lands
    # in the loop, NIP and LR are kernel addresses and the return into C is
    # only in r0 and in C's LR slot, the slot just above the interrupt frame.
    # On exit: r3 = 7; r0, r12, CR0, LR clobbered.
    .globl unload_test_epilogue_tick
    .type unload_test_epilogue_tick, @function
unload_test_epilogue_tick:
    mflr    0
    std     0, 16(1)                  # C's LR slot = the return address into C
    stdu    1, -32(1)                 # a frame of its own
    bl      3f                        # LR = 3f: a stale kernel address, as after a call
3:  li      12, 3
    mtdec   12                        # DEC = 3: a tick soon, to switch this thread out
    addi    1, 1, 32                  # epilogue: pop the frame (r1 = C's frame)
    ld      0, 16(1)                  # r0 = the return address into C
    li      12, 1
    std     12, 0(3)                  # PARKED = 1: in the window from here to the `mtlr`
4:  ld      12, 0(3)
    cmpdi   12, 1
    beq     4b                        # wait for the test (PARKED = 2)
    li      3, 7                      # r3 = the result
    mtlr    0                         # LR = the return address into C
    blr
    .size unload_test_epilogue_tick, . - unload_test_epilogue_tick
    "#,
);

unsafe extern "C" {
    fn unload_test_stand_in_module(parked: *const AtomicU64) -> u64;
    static unload_test_stand_in_module_end: u8;
}

#[ktest]
fn a_tick_in_a_callees_epilogue_still_shows_the_caller_is_inside() {
    static PARKED: AtomicU64 = AtomicU64::new(0);
    let code = unload_test_stand_in_module as *const () as u64..&raw const unload_test_stand_in_module_end as u64;
    PARKED.store(0, Ordering::SeqCst);
    let victim = thread::spawn_on(crate::arch::percpu::BOOT_CPU, "epilogue", || {
        // Safety: the asm above, with the flag it sets and waits on.
        assert_eq!(unsafe { unload_test_stand_in_module(&PARKED) }, 7);
    })
    .expect("room for a thread");
    // This thread runs again only once the victim is switched out, and the
    // victim spins in the window until PARKED = 2: it is there now.
    while PARKED.load(Ordering::SeqCst) != 1 {
        thread::yield_now();
    }
    let inside = {
        let _preempt = thread::preempt_disable();
        module::busy::inside(code.clone()).is_some()
    };
    PARKED.store(2, Ordering::SeqCst);
    assert_eq!(victim.join(), ExitStatus::Returned);
    assert!(inside, "a thread about to return into C (only r0 and C's LR slot hold it) is not seen inside C");
}

// ---- 5. Freed module memory is poisoned ----------------------------------------------

#[ktest]
fn unloaded_module_memory_is_filled_with_trap_instructions() {
    settle::load(embedded("greeting")).expect("greeting loads");
    let (_, address, size, _) = module::summaries().into_iter().next().expect("loaded");
    settle::unload("greeting").expect("unloads");
    // Nothing else allocates in this test; the allocator keeps its own
    // bookkeeping at the start of a free block, so look at the second half.
    let _preempt = thread::preempt_disable();
    let middle = (address + size as u64 / 2) & !3;
    let words: Vec<u32> = (0..8u64)
        // Safety: the freed block, not reused yet (see above); plain word reads.
        .map(|index| unsafe { ((middle + 4 * index) as *const u32).read_volatile() })
        .collect();
    assert!(words.iter().all(|&word| word == module::POISON), "a branch into it traps: {words:x?}");
}

// ---- The final scan reads what an interrupted thread can still use ----------------

/// The address of the first kernel text word equal to `word` for which
/// `also` holds.
fn kernel_word(word: u32, also: impl Fn(u64) -> bool) -> u64 {
    let text = crate::symbols::table().expect("the kernel has its symbol table");
    let start = text.iter().next().expect("symbols").address;
    (start..)
        .step_by(4)
        .take_while(|&address| crate::arch::stacktrace::is_kernel_text(address))
        // Safety: aligned words of the kernel's text.
        .find(|&address| unsafe { (address as *const u32).read() } == word && also(address))
        .expect("the kernel's text has the instruction")
}

#[ktest]
fn the_final_scan_counts_ctr_and_the_lr_slot_only_where_they_are_about_to_be_used() {
    use crate::arch::exceptions::PtRegs;
    const TARGET: u64 = 0x5a5a_0000;
    const STALE: u64 = 0xa5a5_0000;
    let bctrl = kernel_word(0x4e80_0421, |address| !crate::arch::livepatch::entering(address));
    let blr = kernel_word(0x4e80_0020, |_| true);
    let reload = kernel_word(0xe801_0010, |_| true);
    let registers = |nip: u64| PtRegs { nip, ctr: TARGET, gpr: [STALE; 32], ..PtRegs::default() };
    // About to branch through CTR: its value counts.
    let (seen, _) = module::busy::interrupted_addresses(&registers(bctrl));
    assert!(seen.contains(&TARGET), "CTR before a bctrl: {seen:x?}");
    // At a return: CTR (stale) does not, nor r3-r12, but r0 and r14-r31 do.
    let (seen, slot) = module::busy::interrupted_addresses(&registers(blr));
    assert!(!seen.contains(&TARGET), "CTR at a blr: {seen:x?}");
    assert_eq!(seen.iter().filter(|&&address| address == STALE).count(), 1 + 2 + 18, "r0, r1, r2, r14-r31");
    assert!(!slot, "the LR slot is dead at a return");
    // At an epilogue's reload of its return address: the slot counts.
    let (_, slot) = module::busy::interrupted_addresses(&registers(reload));
    assert!(slot, "the LR slot is live at `ld r0,16(r1)`");
}
