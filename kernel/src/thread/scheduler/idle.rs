//! The idle thread of every CPU: made before the CPU starts, its loop, and the secondary CPUs' way in.
use super::{NO_THREAD, State, Thread, set_name, with_scheduler, yield_now};
use crate::arch::interrupts;
use crate::arch::percpu::smp_processor_id;
use crate::arch::smp;
use crate::thread::info::{self, ThreadInfo, ThreadState};
use crate::trace::graph::ReturnStack;
use alloc::boxed::Box;

/// Makes the stack at `base`, on which CPU `cpu` will start, that CPU's idle
/// thread (`idle/N`), before the CPU starts: it is the thread the CPU runs
/// from its first instruction, so the CPU is never without a current thread.
///
/// # Safety
/// `base` is a THREAD_SIZE-aligned stack nothing runs on yet, owned by CPU
/// `cpu` for good; the CPU has not started.
pub unsafe fn add_idle(cpu: usize, base: u64) {
    let id = with_scheduler(|scheduler| {
        let id = scheduler.next_id;
        scheduler.next_id += 1;
        id
    });
    let name = alloc::format!("idle/{cpu}");
    let return_stack = Box::new(ReturnStack::new());
    // Safety: the caller's promise: nothing runs on the stack.
    unsafe {
        info::initialise(base, id);
        let info = &mut *(base as *mut ThreadInfo);
        info.graph_stack = &*return_stack as *const ReturnStack as u64;
        info.state = ThreadState::Running as u64;
        info.cpu = cpu as u64;
        set_name(info, &name);
    }
    with_scheduler(|scheduler| {
        scheduler.threads.insert(
            id,
            Box::new(Thread {
                detached: true,
                running_on: Some(cpu),
                last_cpu: cpu,
                affinity: Some(cpu),
                ..Thread::new(name, State::Running, None, base, return_stack)
            }),
        );
        scheduler.current[cpu] = id;
        scheduler.idle[cpu] = id;
        scheduler.idling = scheduler.idling.with(cpu);
    });
    crate::debug::thread_created(base);
}

/// Forgets the idle thread of CPU `cpu`, which was not started after all
/// (its stack stays allocated: the CPU's area may still name it).
pub fn remove_idle(cpu: usize) {
    let removed = with_scheduler(|scheduler| {
        let id = core::mem::replace(&mut scheduler.idle[cpu], NO_THREAD);
        scheduler.current[cpu] = NO_THREAD;
        scheduler.idling = scheduler.idling.without(cpu);
        scheduler.threads.remove(&id)
    });
    if let Some(thread) = removed {
        crate::debug::thread_removed(thread.stack_base);
    }
}

/// The idle thread of every CPU: switches to any thread that may run here,
/// otherwise cedes to the hypervisor until an interrupt (a reschedule IPI
/// when a thread becomes ready, the tick otherwise). The test for work is
/// made with interrupts off and H_CEDE returns at once if one is pending, so
/// a wake-up sent between the test and the cede is not lost.
///
/// Interrupts stay off in the idle thread except inside the cede (which
/// returns with them off): an interrupt, and so a preemption by the tick,
/// finds it only at `interrupts::ceded_at`, where the reliable stack walk
/// knows its context. A livepatch transition can therefore always check and
/// switch an idle thread that a busy CPU keeps switched out; otherwise it
/// switches at the safe point at the top of the loop.
pub(super) fn idle_loop() {
    let _off = interrupts::disable();
    loop {
        // Woken by a livepatch transition (a reschedule IPI), the idle thread
        // switches its patch state here: its own stack holds nothing patched.
        crate::livepatch::safe_point();
        let waiting = with_scheduler(|scheduler| {
            let cpu = smp_processor_id();
            scheduler.ready.iter().any(|queued| queued.runs_on(cpu))
        });
        if waiting {
            yield_now();
        } else {
            smp::idle_wait();
        }
    }
}

// `arch::smp::secondary_main` enters this by name (declared in `crate::arch`).
const _: [unsafe extern "C" fn() -> !; 2] = [secondary_idle, crate::arch::secondary_idle];

/// A secondary CPU's first generic code, once it is online: it is already
/// its idle thread (`add_idle`), and idles.
#[unsafe(no_mangle)]
pub extern "C" fn secondary_idle() -> ! {
    interrupts::enable();
    idle_loop();
    unreachable!("the idle loop never ends")
}
