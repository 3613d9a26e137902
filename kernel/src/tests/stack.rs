//! Tests of the exception path's stack budget: ticks and BUGs at the guard, the emergency stack, runaway recursion.
//!
//! The guard tests make the current thread's livepatch stack look 8 KiB deep
//! (`livepatch_sp` moved up, the space below filled with canary frames), put
//! r1 exactly at the lowest value the exception entry accepts on the thread's
//! own stack (`livepatch_sp + EXCEPTION_STACK_ROOM`), take exceptions there and
//! then check every word below the guard: `thread_info`, `STACK_END_MAGIC` and
//! the canary frames.
use super::settle;
use crate::arch::emergency;
use crate::arch::exceptions::{EXCEPTION_STACK_ROOM, FRAME_SIZE, RED_ZONE, STACK_GUARD};
use crate::arch::registers::timebase;
use crate::bug::BugLocation;
use crate::livepatch::{self, Function, Object, Patch};
use crate::thread::{self, ExitStatus, LIVEPATCH_STACK_OFFSET, MAGIC_OFFSET, STACK_END_MAGIC, State, ThreadInfo};
use crate::trace::{self, Filter, FtraceOps, FtraceRegs, OpsFlags};
use crate::{println, time};
use alloc::format;
use alloc::string::String;
use alloc::vec;
use boot::THREAD_SIZE;
use core::hint::black_box;
use core::mem::{offset_of, size_of};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use macros::{ktest, livepatchable, notrace};

/// Where the pretend livepatch stack ends, from the stack base.
const FAKE_LIVEPATCH_TOP: u64 = 8192;
/// Words in `ThreadInfo`.
const INFO_WORDS: usize = size_of::<ThreadInfo>() / 8;
/// What the guard band is painted with, to find how deep the handler went.
const PAINT: u64 = 0x9a17_7ed0_9a17_7ed0;

/// Word `index` of the canary frames: LivepatchFrame-shaped (toc, link, marker).
fn canary_word(index: u64) -> u64 {
    if index % 3 == 2 { STACK_END_MAGIC } else { 0xca4a_0000_0000_0000 | index }
}

/// Reads a word of a (possibly dead, not yet joined) thread's stack.
#[notrace]
fn word(address: u64) -> u64 {
    // Safety: callers pass addresses inside a stack that stays allocated.
    unsafe { (address as *const u64).read_volatile() }
}

/// Makes the current thread's livepatch stack look FAKE_LIVEPATCH_TOP deep,
/// fills it with canary frames and paints the band above it up to the r1 it
/// returns (guard, exception frame, red zone). Returns
/// the thread_info words as they are now and the r1 just above the guard.
/// The caller restores `livepatch_sp` if the thread goes on.
#[notrace]
fn arm_canary() -> ([u64; INFO_WORDS], u64) {
    let info = thread::current_thread_info();
    let base = info as u64;
    let top = base + FAKE_LIVEPATCH_TOP;
    // Safety: the current thread's own stack, far below anything in use.
    unsafe {
        (*info).livepatch_sp = top;
        let mut address = base + LIVEPATCH_STACK_OFFSET as u64;
        while address < top {
            (address as *mut u64).write_volatile(canary_word((address - base) / 8));
            address += 8;
        }
        while address < top + EXCEPTION_STACK_ROOM as u64 {
            (address as *mut u64).write_volatile(PAINT);
            address += 8;
        }
    }
    let mut words = [0; INFO_WORDS];
    for (index, slot) in words.iter_mut().enumerate() {
        *slot = word(base + 8 * index as u64);
    }
    (words, top + EXCEPTION_STACK_ROOM as u64)
}

/// The first word below the guard of the stack at `base` that differs from
/// what `arm_canary` left, as a message (the scheduler's own writes to `state`
/// and `saved_stack_pointer` aside: the latter must point above the guard or
/// off this stack). Not traceable, like `arm_canary`: with function_graph on,
/// a hooked call between the two would change the thread's `graph_depth`.
#[notrace]
fn check_nothing_below_the_guard_touched(base: u64, before: &[u64; INFO_WORDS]) -> Result<(), String> {
    let scheduler_words = [offset_of!(ThreadInfo, saved_stack_pointer) / 8, offset_of!(ThreadInfo, state) / 8];
    for (index, &expected) in before.iter().enumerate() {
        let found = word(base + 8 * index as u64);
        if !scheduler_words.contains(&index) && found != expected {
            return Err(format!("thread_info word {index} was overwritten: {expected:#x} -> {found:#x}"));
        }
    }
    let saved = word(base + offset_of!(ThreadInfo, saved_stack_pointer) as u64);
    let top = base + FAKE_LIVEPATCH_TOP;
    if saved < top && (base..base + THREAD_SIZE as u64).contains(&saved) {
        return Err(format!("saved r1 {saved:#x} is below the guard"));
    }
    if word(base + MAGIC_OFFSET as u64) != STACK_END_MAGIC {
        return Err(String::from("STACK_END_MAGIC was overwritten"));
    }
    let mut overwritten = 0;
    let mut lowest = top;
    let mut address = base + LIVEPATCH_STACK_OFFSET as u64;
    while address < top {
        if word(address) != canary_word((address - base) / 8) {
            overwritten += 1;
            lowest = lowest.min(address);
        }
        address += 8;
    }
    if overwritten != 0 {
        return Err(format!(
            "{overwritten} livepatch stack words overwritten, down to {} bytes below livepatch_sp",
            top - lowest
        ));
    }
    Ok(())
}

/// Bytes of the painted band, from r1 down, that something wrote.
#[notrace]
fn band_used(base: u64) -> u64 {
    let top = base + FAKE_LIVEPATCH_TOP;
    let mut address = top;
    while address < top + EXCEPTION_STACK_ROOM as u64 && word(address) == PAINT {
        address += 8;
    }
    top + EXCEPTION_STACK_ROOM as u64 - address
}

/// Bytes of the painted guard band written below the exception frame.
#[notrace]
fn guard_used(base: u64) -> u64 {
    let top = base + FAKE_LIVEPATCH_TOP;
    let mut address = top;
    while address < top + STACK_GUARD as u64 && word(address) == PAINT {
        address += 8;
    }
    top + STACK_GUARD as u64 - address
}

/// Spins with r1 = `stack_pointer` and no frame until `count` timer ticks have
/// been taken there, then returns with r1 as before.
#[notrace]
fn wait_for_ticks_at(stack_pointer: u64, count: u64) {
    // This CPU's own ticks (the caller is pinned to it): the global count
    // (`time::ticks`) takes the other CPUs' too, and on a busy host they
    // could make up the whole count while this CPU took none at the guard.
    let ticks = crate::arch::registers::per_cpu().statistics.ticks.as_ptr();
    // Safety: the borrowed r1 lies in this thread's own free stack; the loop
    // stores nothing below it (interrupts save and restore every register).
    unsafe {
        core::arch::asm!(
            "std 1, 0({stack})",          // the borrowed frame's back chain = our r1
            "mr {saved}, 1",              // saved = our r1
            "mr 1, {stack}",              // r1 = the test's stack pointer
            "ld {start}, 0({ticks})",     // start = ticks
            "2: ld {now}, 0({ticks})",    // now = ticks
            "subf {now}, {start}, {now}", // now = ticks taken here
            "cmpld {now}, {count}",
            "blt 2b",                     // until count ticks were taken
            "mr 1, {saved}",              // r1 = ours again
            stack = in(reg_nonzero) stack_pointer,
            ticks = in(reg_nonzero) ticks,
            count = in(reg) count,
            saved = out(reg) _,
            start = out(reg) _,
            now = out(reg) _,
            out("cr0") _,
        );
    }
}

/// Moves r1 to `stack_pointer` and executes a BUG trap there.
#[notrace]
fn bug_at(stack_pointer: u64) -> ! {
    #[allow(clippy::manual_c_str_literals, reason = "a BUG record holds a pointer and a length, not a C string")]
    static LOCATION: BugLocation =
        BugLocation { file_pointer: file!().as_ptr(), file_length: file!().len(), line: line!(), flags: 0 };
    // Safety: the borrowed r1 lies in this thread's own free stack; the BUG
    // handler kills the thread, so nothing returns here.
    unsafe {
        core::arch::asm!(
            "std 1, 0({stack})",  // the borrowed frame's back chain = our r1
            "mr 1, {stack}",      // r1 = the test's stack pointer
            "1: trap",            // BUG
            ".pushsection .bug_table, \"a\"",
            ".balign 8",
            ".quad 1b",
            ".quad {location}",
            ".popsection",
            stack = in(reg_nonzero) stack_pointer,
            location = sym LOCATION,
            options(noreturn),
        );
    }
}

static BYSTANDER_SPINS: AtomicU64 = AtomicU64::new(0);
static STOP: AtomicBool = AtomicBool::new(false);

/// The thread that last took ticks at the guard, and the timebase
/// before and after: only its timer path ran on it then.
static AT_THE_GUARD: spin::Mutex<(u64, u64, u64)> = spin::Mutex::new((0, 0, 0));

/// Takes `ticks` timer ticks with r1 exactly at the lowest value the entry
/// accepts on this thread's stack, switching to a bystander and back and
/// reaping dead threads; returns how many guard bytes the timer path wrote
/// below its frame, or what it damaged below the guard.
fn ticks_at_the_guard(ticks: u64) -> Result<u64, String> {
    STOP.store(false, Ordering::SeqCst);
    let bystander = thread::spawn_on(crate::arch::percpu::BOOT_CPU, "bystander", || {
        while !STOP.load(Ordering::SeqCst) {
            BYSTANDER_SPINS.fetch_add(1, Ordering::SeqCst);
        }
    })
    .unwrap();
    // Threads that die while we wait: our timer path reaps their stacks.
    for _ in 0..4 {
        drop(thread::spawn_on(crate::arch::percpu::BOOT_CPU, "short", || {}).unwrap());
    }
    let base = thread::current_thread_info() as u64;
    // Safety: the current thread's own thread_info.
    let livepatch_sp = unsafe { (*thread::current_thread_info()).livepatch_sp };
    let (before, stack_pointer) = arm_canary();
    let spins = BYSTANDER_SPINS.load(Ordering::SeqCst);
    time::set_jitter(0x2545_f491_4f6c_dd1d);
    let start = timebase();
    wait_for_ticks_at(stack_pointer, ticks);
    let end = timebase();
    time::set_jitter(0);
    *AT_THE_GUARD.lock() = (thread::current_id(), start, end);
    let bystander_ran = BYSTANDER_SPINS.load(Ordering::SeqCst) > spins;
    let used = guard_used(base);
    let nothing_touched = check_nothing_below_the_guard_touched(base, &before);
    // Safety: as above; the livepatch stack was empty before.
    unsafe { (*thread::current_thread_info()).livepatch_sp = livepatch_sp };
    STOP.store(true, Ordering::SeqCst);
    let bystander = bystander.join();
    nothing_touched?;
    if bystander != ExitStatus::Returned {
        return Err(format!("the bystander ended {bystander:?}"));
    }
    if used == 0 {
        return Err(String::from("the timer path wrote nothing below its frame: did the ticks happen?"));
    }
    if !bystander_ran {
        return Err(String::from("the ticks never switched to the bystander and back"));
    }
    Ok(used)
}

#[ktest]
fn timer_ticks_just_above_the_guard_touch_nothing_below_it() {
    let used = ticks_at_the_guard(300).unwrap();
    println!(
        "stack: the timer path used {used} of {STACK_GUARD} guard bytes below its {FRAME_SIZE}-byte frame and {RED_ZONE}-byte red zone"
    );
}

/// A RECURSION_SAFE ops that does nothing: the stub calls it straight from `ftrace_call`, with no stack check.
#[notrace]
extern "C" fn nothing_handler(_: u64, _: u64, _: &FtraceOps, _: &mut FtraceRegs) {}
static NOTHING: FtraceOps = FtraceOps::new("test-nothing-at-the-guard", nothing_handler, OpsFlags::RECURSION_SAFE);

/// What the thread taking ticks at the guard found.
static TICKS_RESULT: spin::Mutex<Option<Result<u64, String>>> = spin::Mutex::new(None);

/// Runs `ticks_at_the_guard` in a thread of its own (a kill must not end the
/// test): its result, or how the thread ended.
fn ticks_at_the_guard_in_a_thread(ticks: u64) -> Result<u64, String> {
    *TICKS_RESULT.lock() = None;
    let status = thread::spawn_on(crate::arch::percpu::BOOT_CPU, "ticks-at-guard", move || {
        let result = ticks_at_the_guard(ticks);
        *TICKS_RESULT.lock() = Some(result);
    })
    .unwrap()
    .join();
    // A killed thread left its bystander spinning.
    STOP.store(true, Ordering::SeqCst);
    if status != ExitStatus::Returned {
        return Err(format!("the healthy thread taking ticks at the guard ended {status:?}"));
    }
    TICKS_RESULT.lock().take().unwrap_or_else(|| Err(String::from("no result")))
}

/// Which tracers are on while the ticks run, every one on every site.
const TRACING: [(&str, bool, bool, bool); 4] = [
    ("the function tracer", true, false, false),
    ("function_graph", false, true, false),
    ("a RECURSION_SAFE do-nothing ops", false, false, true),
    ("all three (the list walker and the graph hook)", true, true, true),
];

/// Calls the function tracer recorded in the thread that took ticks at the
/// guard while it was there: calls of traced functions on its timer path.
fn traced_at_the_guard() -> usize {
    let (thread, start, end) = *AT_THE_GUARD.lock();
    let (events, _) = trace::function::events();
    events.iter().filter(|(_, event)| event.thread == thread && (start..=end).contains(&event.timebase)).count()
}

#[ktest]
fn traced_timer_ticks_just_above_the_guard_touch_nothing_below_it() {
    let mut failures = String::new();
    for (name, function, graph, nothing) in TRACING {
        if function {
            trace::function::start("*").unwrap();
        }
        if graph {
            trace::graph::start("*").unwrap();
        }
        if nothing {
            trace::register(&NOTHING, Filter::Glob("*")).unwrap();
        }
        *AT_THE_GUARD.lock() = (0, 0, 0);
        let result = ticks_at_the_guard_in_a_thread(100);
        let traced = traced_at_the_guard();
        if nothing {
            trace::unregister(&NOTHING).unwrap();
        }
        if graph {
            trace::graph::stop().unwrap();
        }
        if function {
            trace::function::stop().unwrap();
        }
        match result {
            Ok(used) => {
                // Only the function tracer records calls to count.
                let calls = if function { format!(", {traced} calls recorded on it") } else { String::new() };
                println!(
                    "stack: with {name} on every site the timer path used {used} of {STACK_GUARD} guard bytes{calls}"
                );
            }
            Err(error) => failures += &format!("\n  with {name} on every site: {error}"),
        }
        if function && traced == 0 {
            failures += &format!("\n  with {name}: no traced call on the timer path at the guard");
        }
    }
    assert!(failures.is_empty(), "ticks at the guard with tracing on:{failures}");
}

/// Waits (up to 2 s) until thread `id` is dead; its stack stays until it is joined.
fn wait_until_dead(id: u64) {
    for _ in 0..400 {
        if thread::snapshot().iter().any(|summary| summary.id == id && matches!(summary.state, State::Dead(_))) {
            return;
        }
        thread::sleep_milliseconds(5);
    }
}

static VICTIM_BASE: AtomicU64 = AtomicU64::new(0);
static VICTIM_INFO: [AtomicU64; INFO_WORDS] = [const { AtomicU64::new(0) }; INFO_WORDS];

#[ktest]
fn bug_just_above_the_guard_touches_nothing_below_it() {
    VICTIM_BASE.store(0, Ordering::SeqCst);
    let victim = thread::spawn_on(crate::arch::percpu::BOOT_CPU, "bug-at-guard", || {
        let (before, stack_pointer) = arm_canary();
        for (slot, value) in VICTIM_INFO.iter().zip(before) {
            slot.store(value, Ordering::SeqCst);
        }
        VICTIM_BASE.store(thread::current_thread_info() as u64, Ordering::SeqCst);
        bug_at(stack_pointer)
    })
    .unwrap();
    // The victim is dead but not yet joined: its stack is still there to inspect.
    wait_until_dead(victim.id);
    let base = VICTIM_BASE.load(Ordering::SeqCst);
    let before: [u64; INFO_WORDS] = core::array::from_fn(|index| VICTIM_INFO[index].load(Ordering::SeqCst));
    let nothing_touched = check_nothing_below_the_guard_touched(base, &before);
    let written_below_r1 = band_used(base);
    assert_eq!(victim.join(), ExitStatus::Killed("BUG"));
    nothing_touched.unwrap();
    assert_eq!(
        written_below_r1, 0,
        "bytes written below r1 on the thread's stack: the report belongs on the emergency stack"
    );
}

#[livepatchable]
fn emergency_original(value: u64) -> u64 {
    black_box(value + 1)
}

static EMERGENCY_LIVEPATCH_SP: AtomicU64 = AtomicU64::new(0);
static EMERGENCY_RESULT: AtomicU64 = AtomicU64::new(0);

#[inline(never)]
fn emergency_replacement(value: u64) -> u64 {
    // Safety: the thread_info of the stack this runs on.
    EMERGENCY_LIVEPATCH_SP.store(unsafe { (*thread::current_thread_info()).livepatch_sp }, Ordering::SeqCst);
    black_box(value * 10)
}

/// Runs on the emergency stack, as a report would: calls the patched function, then ends the thread.
extern "C" fn call_patched_on_the_emergency_stack(argument: u64) -> ! {
    EMERGENCY_RESULT.store(emergency_original(black_box(argument)), Ordering::SeqCst);
    thread::exit(ExitStatus::Returned)
}

#[ktest]
fn patched_call_on_the_emergency_stack_uses_its_livepatch_stack() {
    // Low memory where a frame pushed with livepatch_sp = 0 would land.
    let low = || (word(8), word(16));
    let low_before = low();
    let name = "kernel::tests::stack::emergency_original";
    let function = Function {
        old_name: String::from(name),
        old_position: None,
        new_address: emergency_replacement as *const () as u64,
        allow_inlined: false,
    };
    livepatch::add(Patch {
        name: String::from("emergency"),
        objects: vec![Object { module: None, functions: vec![function], ..Default::default() }],
        ..Default::default()
    })
    .unwrap();
    settle::enable("emergency").unwrap();
    let status = thread::spawn_on(crate::arch::percpu::BOOT_CPU, "emergency", || {
        emergency::run(call_patched_on_the_emergency_stack, 4)
    })
    .unwrap()
    .join();
    settle::disable("emergency").unwrap();
    livepatch::remove("emergency").unwrap();
    assert_eq!(status, ExitStatus::Returned);
    assert_eq!(EMERGENCY_RESULT.load(Ordering::SeqCst), 40, "the replacement ran");
    let (base, top) = emergency::bounds();
    let livepatch_sp = EMERGENCY_LIVEPATCH_SP.load(Ordering::SeqCst);
    assert!(
        (base + LIVEPATCH_STACK_OFFSET as u64..top).contains(&livepatch_sp),
        "the frame went on the emergency stack's own livepatch stack: livepatch_sp {livepatch_sp:#x}, stack {base:#x}..{top:#x}"
    );
    assert_eq!(low(), low_before, "low memory untouched");
    assert_eq!(word(base + MAGIC_OFFSET as u64), STACK_END_MAGIC, "the emergency stack has its STACK_END_MAGIC");
    assert_eq!(word(base + offset_of!(ThreadInfo, thread_id) as u64), thread::EMERGENCY_THREAD_ID);
}

/// The entry of the runaway recursion: the handler starts it from this function's site.
#[inline(never)]
fn runaway_start(value: u64) -> u64 {
    black_box(value)
}

/// Traced (it has a site and the ops below traces it), recursing without end.
#[inline(never)]
#[allow(unconditional_recursion)] // on purpose: the stack must run out
fn runaway(depth: u64) -> u64 {
    let mut frame = [depth; 32];
    black_box(&mut frame);
    let below = black_box(runaway(depth + 1));
    frame[depth as usize % 32] + below
}

/// An ftrace handler with a bug: from `runaway_start`'s site it recurses until the stack runs out.
#[notrace]
extern "C" fn runaway_handler(ip: u64, _: u64, _: &FtraceOps, _: &mut FtraceRegs) {
    let start = runaway_start as *const () as u64;
    if (start..start + 64).contains(&ip) {
        black_box(runaway(0));
    }
}
static RUNAWAY: FtraceOps = FtraceOps::new("test-runaway", runaway_handler, OpsFlags::empty());

#[ktest(isolated)]
fn runaway_recursion_in_a_traced_handler_is_reported_as_a_stack_overflow() {
    let functions = [runaway_start as *const () as u64, runaway as *const () as u64];
    trace::register(&RUNAWAY, Filter::Addresses(&functions)).unwrap();
    let victim = thread::spawn_on(crate::arch::percpu::BOOT_CPU, "runaway", || {
        black_box(runaway_start(black_box(1)));
    })
    .unwrap();
    let status = victim.join();
    trace::unregister(&RUNAWAY).unwrap();
    assert_eq!(status, ExitStatus::Killed("stack overflow"));
}

/// Moves r1 to `stack_pointer` and calls `thread::kill_current(reason)` there.
#[notrace]
fn kill_at(stack_pointer: u64, reason: &'static str) -> ! {
    // Safety: the borrowed r1 lies in this thread's own free stack;
    // kill_current never returns.
    unsafe {
        core::arch::asm!(
            "std 1, 0({stack})",  // the borrowed frame's back chain = our r1
            "mr 1, {stack}",      // r1 = the test's stack pointer
            "bl {kill}",          // kill_current(reason): never returns
            "trap",
            stack = in(reg_nonzero) stack_pointer,
            kill = sym thread::kill_current,
            in("r3") reason.as_ptr(),
            in("r4") reason.len(),
            options(noreturn),
        );
    }
}

/// How far above `livepatch_sp` the kill test calls `kill_current`: less
/// than the kill's message and scheduling need, more than its own frame and
/// the move to the emergency stack.
const KILL_ROOM: u64 = 512;

#[ktest]
fn kill_just_above_the_livepatch_stack_touches_nothing_below_it() {
    VICTIM_BASE.store(0, Ordering::SeqCst);
    let victim = thread::spawn_on(crate::arch::percpu::BOOT_CPU, "kill-at-guard", || {
        let (before, _) = arm_canary();
        for (slot, value) in VICTIM_INFO.iter().zip(before) {
            slot.store(value, Ordering::SeqCst);
        }
        let base = thread::current_thread_info() as u64;
        VICTIM_BASE.store(base, Ordering::SeqCst);
        kill_at(base + FAKE_LIVEPATCH_TOP + KILL_ROOM, "killed at the guard")
    })
    .unwrap();
    wait_until_dead(victim.id);
    let base = VICTIM_BASE.load(Ordering::SeqCst);
    let before: [u64; INFO_WORDS] = core::array::from_fn(|index| VICTIM_INFO[index].load(Ordering::SeqCst));
    let nothing_touched = check_nothing_below_the_guard_touched(base, &before);
    assert_eq!(victim.join(), ExitStatus::Killed("killed at the guard"));
    nothing_touched.unwrap();
}

static LEFT_OVER: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

extern "C" fn look_at_the_emergency_thread_info(_: u64) -> ! {
    let (base, _) = emergency::bounds();
    // Safety: this CPU's emergency stack's thread_info, which this code runs under.
    let info = unsafe { &*(base as *const ThreadInfo) };
    LEFT_OVER[0].store(info.livepatch_sp - (base + LIVEPATCH_STACK_OFFSET as u64), Ordering::SeqCst);
    LEFT_OVER[1].store(info.graph_depth, Ordering::SeqCst);
    LEFT_OVER[2].store(info.trace_recursion, Ordering::SeqCst);
    thread::exit(ExitStatus::Returned)
}

#[ktest]
fn entering_the_emergency_stack_afresh_clears_what_an_earlier_report_left() {
    let (base, _) = emergency::bounds();
    {
        let _interrupts = crate::arch::interrupts::disable();
        // Safety: the emergency stack is not in use (interrupts are off, and
        // this thread is not on it); this is what a report killed inside a
        // patched, graph-traced and traced call leaves behind.
        unsafe {
            let info = base as *mut ThreadInfo;
            (*info).livepatch_sp += 2 * core::mem::size_of::<crate::arch::livepatch::LivepatchFrame>() as u64;
            (*info).graph_depth = 3;
            (*info).trace_recursion = 1;
        }
    }
    let status = thread::spawn_on(crate::arch::percpu::BOOT_CPU, "emergency-reset", || {
        emergency::run(look_at_the_emergency_thread_info, 0)
    })
    .unwrap()
    .join();
    assert_eq!(status, ExitStatus::Returned);
    let left: [u64; 3] = core::array::from_fn(|index| LEFT_OVER[index].load(Ordering::SeqCst));
    assert_eq!(left, [0, 0, 0], "livepatch stack bytes, graph depth and recursion bit left from an earlier report");
}

static NESTED_WRONG: AtomicU64 = AtomicU64::new(u64::MAX);

/// Runs on the emergency stack: takes a program check there (the emulated
/// trap of `tests::exceptions`, which the handler steps over), then checks
/// that its own frame and locals survived the nested exception's frame.
extern "C" fn trap_on_the_emergency_stack(argument: u64) -> ! {
    let locals: [u64; 16] = core::array::from_fn(|index| black_box(argument ^ index as u64));
    let mut registers = [0u64; 18];
    // Safety: the probe keeps the ABI (it saves and restores r14-r31).
    unsafe { crate::tests::exceptions::exceptions_test_trap_probe(&mut registers) };
    let mut wrong = 0;
    for (index, local) in black_box(&locals).iter().enumerate() {
        wrong += u64::from(*local != argument ^ index as u64);
    }
    for number in 14..=31 {
        wrong += u64::from(registers[number - 14] != crate::tests::exceptions::emulated_value(number));
    }
    NESTED_WRONG.store(wrong, Ordering::SeqCst);
    thread::exit(ExitStatus::Returned)
}

#[ktest]
fn a_nested_exception_on_the_emergency_stack_stays_below_the_code_it_interrupts() {
    NESTED_WRONG.store(u64::MAX, Ordering::SeqCst);
    let status = thread::spawn_on(crate::arch::percpu::BOOT_CPU, "nested", || {
        emergency::run(trap_on_the_emergency_stack, 0x5eed_0000)
    })
    .unwrap()
    .join();
    assert_eq!(status, ExitStatus::Returned, "the code on the emergency stack came back from the trap and ended");
    assert_eq!(
        NESTED_WRONG.load(Ordering::SeqCst),
        0,
        "locals intact and r14-r31 as the handler wrote them after a program check on the emergency stack"
    );
}

/// Recurses on the emergency stack, taking the emulated trap of
/// `tests::exceptions` at every level (interrupts are off there, so only a
/// synchronous exception lets the entry look at r1), until the entry finds r1
/// within the emergency stack's own guard.
#[inline(never)]
fn descend_with_traps(depth: u64) -> u64 {
    if depth > 100_000 {
        return depth; // not reached: the emergency stack overflows long before
    }
    let mut frame = [depth; 32];
    black_box(&mut frame);
    let mut registers = [0u64; 18];
    // Safety: the probe keeps the ABI (it saves and restores r14-r31).
    unsafe { crate::tests::exceptions::exceptions_test_trap_probe(&mut registers) };
    frame[depth as usize % 32] + descend_with_traps(black_box(depth + 1))
}

extern "C" fn overflow_the_emergency_stack(_: u64) -> ! {
    black_box(descend_with_traps(0));
    thread::exit(ExitStatus::Returned)
}

/// An overflow of the emergency stack itself ends the kernel ("stack overflow
/// on the emergency stack"): there is no other stack left to report from.
/// Reported as a thread's overflow instead, the thread would be killed and
/// this test would return: a failure for a should_panic case.
#[ktest(should_panic)]
fn an_overflow_of_the_emergency_stack_itself_panics() {
    let status = thread::spawn_on(crate::arch::percpu::BOOT_CPU, "emergency-overflow", || {
        emergency::run(overflow_the_emergency_stack, 0)
    })
    .unwrap()
    .join();
    println!("the emergency stack overflowed and the kernel went on: {status:?}");
}
