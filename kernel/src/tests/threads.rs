//! Tests of threads: life cycle, thread_info placement, preemption, preempt_disable.
use crate::arch::registers::{stack_pointer, timebase};
use crate::thread::{self, ExitStatus, LIVEPATCH_STACK_OFFSET, MAGIC_OFFSET, STACK_END_MAGIC};
use alloc::sync::Arc;
use alloc::vec::Vec;
use boot::THREAD_SIZE;
use core::hint::black_box;
use core::sync::atomic::{AtomicU64, Ordering};
use macros::{ktest, notrace};

#[ktest]
fn threads_spawn_sleep_yield_join() {
    let total = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (1..=4u64)
        .map(|value| {
            let total = total.clone();
            thread::spawn_on(crate::arch::percpu::BOOT_CPU, "worker", move || {
                thread::sleep_milliseconds(5 * value);
                thread::yield_now();
                total.fetch_add(value, Ordering::SeqCst);
            })
            .unwrap()
        })
        .collect();
    for handle in handles {
        assert_eq!(handle.join(), ExitStatus::Returned);
    }
    assert_eq!(total.load(Ordering::SeqCst), 10);
}

#[ktest]
fn thread_info_sits_at_the_stack_base() {
    let handle = thread::spawn_on(crate::arch::percpu::BOOT_CPU, "placement", || {
        let info = thread::current_thread_info() as u64;
        let base = stack_pointer() & !(THREAD_SIZE as u64 - 1);
        assert_eq!(info, base);
        assert_eq!(info % THREAD_SIZE as u64, 0);
        // Safety: our own thread_info and magic word.
        let (livepatch_sp, thread_id, magic) = unsafe {
            let info = &*thread::current_thread_info();
            (info.livepatch_sp, info.thread_id, *((base + MAGIC_OFFSET as u64) as *const u64))
        };
        assert_eq!(thread_id, thread::current_id());
        assert_eq!(magic, STACK_END_MAGIC);
        assert_eq!(livepatch_sp, base + LIVEPATCH_STACK_OFFSET as u64, "livepatch stack starts above the magic");
        assert!(stack_pointer() > base + THREAD_SIZE as u64 / 2, "the normal stack grows down from the top");
    })
    .unwrap();
    assert_eq!(handle.join(), ExitStatus::Returned);
}

/// Spins without yielding until `other` moves or the deadline passes.
fn spin_until_other_moves(mine: &AtomicU64, other: &AtomicU64) -> bool {
    let deadline = timebase() + crate::time::milliseconds_to_timebase(2000);
    while timebase() < deadline {
        mine.fetch_add(1, Ordering::SeqCst);
        if other.load(Ordering::SeqCst) > 1000 && mine.load(Ordering::SeqCst) > 1000 {
            return true;
        }
    }
    false
}

#[ktest]
fn timer_preempts_threads_that_never_yield() {
    let first = Arc::new(AtomicU64::new(0));
    let second = Arc::new(AtomicU64::new(0));
    let (a, b) = (first.clone(), second.clone());
    let one =
        thread::spawn_on(crate::arch::percpu::BOOT_CPU, "spinner-1", move || assert!(spin_until_other_moves(&a, &b)))
            .unwrap();
    let (a, b) = (first.clone(), second.clone());
    let two =
        thread::spawn_on(crate::arch::percpu::BOOT_CPU, "spinner-2", move || assert!(spin_until_other_moves(&b, &a)))
            .unwrap();
    assert_eq!(one.join(), ExitStatus::Returned);
    assert_eq!(two.join(), ExitStatus::Returned);
}

#[ktest]
fn preempt_disable_holds_off_other_threads() {
    static STOP: AtomicU64 = AtomicU64::new(0);
    let counter = Arc::new(AtomicU64::new(0));
    let watched = counter.clone();
    let handle = thread::spawn_on(crate::arch::percpu::BOOT_CPU, "counter", move || {
        while STOP.load(Ordering::SeqCst) == 0 {
            watched.fetch_add(1, Ordering::SeqCst);
        }
    })
    .unwrap();
    thread::yield_now();
    {
        let _guard = thread::preempt_disable();
        let before = counter.load(Ordering::SeqCst);
        let ticks = crate::time::ticks_here();
        while crate::time::ticks_here() < ticks + 3 {}
        assert_eq!(counter.load(Ordering::SeqCst), before, "no other thread ran during 3 ticks");
    }
    let ticks = crate::time::ticks_here();
    while crate::time::ticks_here() < ticks + 3 {}
    let moved = counter.load(Ordering::SeqCst);
    STOP.store(1, Ordering::SeqCst);
    assert_eq!(handle.join(), ExitStatus::Returned);
    assert!(moved > 0, "the other thread runs again once preemption is enabled");
}

#[ktest]
fn a_thread_a_tick_switches_to_after_it_yielded_keeps_its_time_slice() {
    static DONE: AtomicU64 = AtomicU64::new(0);
    static EXTRA: AtomicU64 = AtomicU64::new(0);
    DONE.store(0, Ordering::SeqCst);
    EXTRA.store(0, Ordering::SeqCst);
    // Never yields: only a tick takes the CPU from it, and that tick switches to the yielder.
    let spinner = thread::spawn_on(crate::arch::percpu::BOOT_CPU, "spinner", || {
        while DONE.load(Ordering::SeqCst) == 0 {
            core::hint::spin_loop();
        }
    })
    .unwrap();
    let spinner_id = spinner.id;
    let spinner_switches = move || {
        thread::snapshot().iter().find(|summary| summary.id == spinner_id).map_or(0, |summary| summary.switches)
    };
    let yielder = thread::spawn_on(crate::arch::percpu::BOOT_CPU, "yielder", move || {
        for _ in 0..5 {
            let before = spinner_switches();
            // The spinner runs until a tick switches back here. The decrementer
            // is still expired then: unless the tick re-armed it before
            // switching, this thread takes another tick at once and the
            // spinner gets a second slice before this one has run at all.
            thread::yield_now();
            EXTRA.fetch_add(spinner_switches() - before - 1, Ordering::SeqCst);
        }
        DONE.store(1, Ordering::SeqCst);
    })
    .unwrap();
    assert_eq!(yielder.join(), ExitStatus::Returned);
    DONE.store(1, Ordering::SeqCst);
    assert_eq!(spinner.join(), ExitStatus::Returned);
    assert_eq!(EXTRA.load(Ordering::SeqCst), 0, "slices the spinner got in place of the yielder");
}

/// A thread killed while it holds the scheduler lock (a trap in traced code
/// inside the scheduler's critical section) cannot be killed the usual way:
/// that takes the same lock. The kernel must end with a report, not hang.
#[ktest(should_panic)]
fn a_kill_inside_the_scheduler_lock_ends_the_kernel_instead_of_hanging() {
    let killed = thread::spawn_on(crate::arch::percpu::BOOT_CPU, "killed-under-lock", || {
        thread::with_scheduler_locked(|| thread::kill_current("test kill under the scheduler lock"));
    })
    .expect("room for a thread");
    let _ = killed.join();
}

/// What the probes below write inside their sections: a private static, so
/// the compiler knows that no other code reaches it and that the pointer
/// `current_thread_info` makes from r1 is not it, and may move its accesses
/// past the count's unless something stops it.
static mut SECTION_DATA: u64 = 0;

/// Short preemption-disabled sections in a loop, each adding to
/// `SECTION_DATA`: a compiler free to move the accesses keeps the sum in a
/// register and stores it once, after the last section.
#[notrace]
#[inline(never)]
fn add_with_preemption_disabled(count: u64) {
    for value in 0..count {
        let guard = thread::preempt_disable();
        // Safety: only this test's thread touches SECTION_DATA.
        unsafe { (&raw mut SECTION_DATA).write((&raw const SECTION_DATA).read() + value) };
        drop(guard);
    }
}

/// A section's store that a later one overwrites: a compiler free to move
/// it past the decrement finds it dead and drops it.
#[notrace]
#[inline(never)]
fn store_with_preemption_disabled_then_again(first: u64, second: u64) {
    let guard = thread::preempt_disable();
    // Safety: as above.
    unsafe { (&raw mut SECTION_DATA).write(first) };
    drop(guard);
    // Safety: as above.
    unsafe { (&raw mut SECTION_DATA).write(second) };
}

/// The machine code of `function`, from its entry to its first blr: the
/// number of preempt_count stores, and of sections (an increment, then a
/// decrement) with another store between them. Stores of the count are
/// `std` with the count's offset as displacement (from the thread_info base
/// that r1 gives); the probes are leaves without a frame, so their only
/// other stores are to `SECTION_DATA` (TOC-relative).
fn sections_with_their_store(function: u64) -> (usize, usize) {
    let count_offset = core::mem::offset_of!(thread::ThreadInfo, preempt_count) as i16;
    let (mut address, mut count_stores, mut sections_with_a_store, mut stored) = (function, 0, 0, false);
    loop {
        let word = crate::arch::text::read(address);
        if word == portable::instruction::BLR {
            return (count_stores, sections_with_a_store);
        }
        // std: primary opcode 62, DS form, XO (the low two bits) 0.
        if word >> 26 == 62 && word & 3 == 0 {
            let displacement = (word & 0xfffc) as u16 as i16;
            if displacement == count_offset {
                count_stores += 1;
                // An even store is a decrement: it closes a section.
                if count_stores % 2 == 0 && stored {
                    sections_with_a_store += 1;
                }
                stored = false;
            } else {
                stored = true;
            }
        }
        address += 4;
    }
}

#[ktest]
fn a_preemption_disabled_section_keeps_its_memory_accesses() {
    // Safety: only this thread touches SECTION_DATA.
    unsafe { (&raw mut SECTION_DATA).write(1) };
    add_with_preemption_disabled(black_box(5));
    // Safety: as above.
    assert_eq!(unsafe { (&raw const SECTION_DATA).read() }, 11);
    store_with_preemption_disabled_then_again(3, 4);
    // Safety: as above.
    assert_eq!(unsafe { (&raw const SECTION_DATA).read() }, 4);
    for (name, function) in [
        ("add_with_preemption_disabled", add_with_preemption_disabled as *const () as u64),
        ("store_with_preemption_disabled_then_again", store_with_preemption_disabled_then_again as *const () as u64),
    ] {
        let (count_stores, sections) = sections_with_their_store(function);
        assert!(count_stores >= 2 && count_stores % 2 == 0, "{name}: {count_stores} stores of preempt_count");
        assert_eq!(sections, count_stores / 2, "{name}: sections whose store stayed inside them");
    }
}
