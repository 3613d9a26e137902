//! Tests of shadow variables: Linux's test-shadow-vars.sh case, refusals, contention from every CPU, the heap, and the `shadow` sample patch.
use super::settle;
use crate::arch::percpu::{online_cpus, smp_processor_id};
use crate::arch::registers::timebase;
use crate::livepatch::api::klp_kernel_version;
use crate::livepatch::shadow::{
    self, klp_shadow_alloc, klp_shadow_free, klp_shadow_free_all, klp_shadow_get, klp_shadow_get_or_alloc,
};
use crate::{memory, module, thread, time};
use alloc::vec::Vec;
use boot::MAX_CPUS;
use core::ffi::c_void;
use core::ptr::null_mut;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use macros::ktest;

/// Three objects whose addresses key the variables, as Linux's test's `obj1..obj3`.
static OBJECTS: [AtomicU64; 3] = [const { AtomicU64::new(0) }; 3];

/// The address of object `index` as the API takes it.
fn object(index: usize) -> *mut c_void {
    (&raw const OBJECTS[index]).cast_mut().cast()
}

/// Constructor calls, and destructor calls with the sum of the values they found.
static CONSTRUCTED: AtomicU64 = AtomicU64::new(0);
static DESTROYED: AtomicU64 = AtomicU64::new(0);
static DESTROYED_SUM: AtomicU64 = AtomicU64::new(0);
/// Per object, the destructor calls it received.
static DESTROYED_PER_OBJECT: [AtomicU64; 3] = [const { AtomicU64::new(0) }; 3];

/// Copies the u64 at `constructor_data` into the variable (Linux's `shadow_ctor`).
extern "C" fn copy_value(_object: *mut c_void, shadow_data: *mut c_void, constructor_data: *mut c_void) -> i32 {
    CONSTRUCTED.fetch_add(1, Ordering::SeqCst);
    // Safety: the tests pass a u64 as constructor data; the variable is at least a u64, aligned.
    unsafe { *shadow_data.cast::<u64>() = *constructor_data.cast::<u64>() };
    0
}

/// Refuses every allocation, as a constructor that runs out of something would.
extern "C" fn refuse(_object: *mut c_void, shadow_data: *mut c_void, _constructor_data: *mut c_void) -> i32 {
    CONSTRUCTED.fetch_add(1, Ordering::SeqCst);
    // Safety: a variable of at least a u64: written to show that what a refused constructor did is dropped too.
    unsafe { *shadow_data.cast::<u64>() = 0xdead };
    -12
}

/// Counts the call and the value it finds (Linux's `shadow_dtor`).
extern "C" fn record_destruction(object: *mut c_void, shadow_data: *mut c_void) {
    DESTROYED.fetch_add(1, Ordering::SeqCst);
    // Safety: the variables of these tests hold a u64.
    DESTROYED_SUM.fetch_add(unsafe { *shadow_data.cast::<u64>() }, Ordering::SeqCst);
    if let Some(index) = (0..3).find(|&index| self::object(index) == object) {
        DESTROYED_PER_OBJECT[index].fetch_add(1, Ordering::SeqCst);
    }
}

fn reset_counts() {
    for count in [&CONSTRUCTED, &DESTROYED, &DESTROYED_SUM].into_iter().chain(DESTROYED_PER_OBJECT.iter()) {
        count.store(0, Ordering::SeqCst);
    }
}

/// `klp_shadow_alloc` with `copy_value` of `value`.
fn alloc_value(object: *mut c_void, id: u64, value: u64) -> *mut u64 {
    let mut value = value;
    klp_shadow_alloc(object, id, size_of::<u64>(), Some(copy_value), (&raw mut value).cast()).cast()
}

/// The u64 a variable holds.
fn value_of(data: *mut u64) -> u64 {
    assert!(!data.is_null(), "a variable, not null");
    // Safety: a live variable of these tests, a u64.
    unsafe { *data }
}

/// Linux's test-shadow-vars.sh (lib/livepatch/test_klp_shadow_vars.c):
/// variables for 3 objects x 2 ids, constructed with their values, found
/// again at the same addresses, freed one by one and by id with the
/// destructor called for each, and gone afterwards.
#[ktest]
fn test_klp_shadow_vars() {
    const FIRST: u64 = 0x1234;
    const SECOND: u64 = 0x1235;
    reset_counts();
    let variables = shadow::count();
    for index in 0..3 {
        assert!(klp_shadow_get(object(index), FIRST).is_null(), "object {index} has no variable before");
    }
    // Allocate: obj1/id1, obj2/id1, obj3/id1 with klp_shadow_alloc, then the
    // second id's with klp_shadow_get_or_alloc.
    let mut first = Vec::new();
    for index in 0..3 {
        let data = alloc_value(object(index), FIRST, 100 + index as u64);
        assert!(!data.is_null(), "variable <object {index}, FIRST> allocated");
        assert_eq!(data as usize % shadow::SHADOW_ALIGNMENT, 0, "aligned for any scalar");
        first.push(data);
    }
    let mut second = Vec::new();
    for index in 0..3 {
        let mut value = 200 + index as u64;
        let data: *mut u64 =
            klp_shadow_get_or_alloc(object(index), SECOND, size_of::<u64>(), Some(copy_value), (&raw mut value).cast())
                .cast();
        assert!(!data.is_null(), "variable <object {index}, SECOND> allocated");
        second.push(data);
    }
    assert_eq!(CONSTRUCTED.load(Ordering::SeqCst), 6, "one constructor call per variable");
    assert_eq!(shadow::count(), variables + 6);
    // Each (object, id) has its own variable, with its constructor's value.
    for (index, (&first, &second)) in first.iter().zip(&second).enumerate() {
        assert_eq!(klp_shadow_get(object(index), FIRST).cast(), first, "get <object {index}, FIRST>");
        assert_eq!(klp_shadow_get(object(index), SECOND).cast(), second, "get <object {index}, SECOND>");
        assert_eq!(value_of(first), 100 + index as u64, "<object {index}, FIRST>'s constructor ran");
        assert_eq!(value_of(second), 200 + index as u64, "<object {index}, SECOND>'s constructor ran");
        assert_ne!(first, second);
    }
    // get_or_alloc of an existing pair returns it without constructing.
    let mut ignored = 999u64;
    let again = klp_shadow_get_or_alloc(object(1), FIRST, 8, Some(copy_value), (&raw mut ignored).cast());
    assert_eq!(again.cast(), first[1], "get_or_alloc returned the existing variable");
    assert_eq!(CONSTRUCTED.load(Ordering::SeqCst), 6, "and constructed nothing");
    assert_eq!(value_of(first[1]), 101);
    // Free the first id's variables one by one, each with the destructor.
    for (index, &second) in second.iter().enumerate() {
        klp_shadow_free(object(index), FIRST, Some(record_destruction));
        assert!(klp_shadow_get(object(index), FIRST).is_null(), "<object {index}, FIRST> freed");
        assert_eq!(klp_shadow_get(object(index), SECOND).cast(), second, "<object {index}, SECOND> stays");
    }
    assert_eq!(DESTROYED.load(Ordering::SeqCst), 3, "one destructor call per freed variable");
    assert_eq!(DESTROYED_SUM.load(Ordering::SeqCst), 100 + 101 + 102, "the destructors saw the variables' values");
    // Freeing a pair without a variable does nothing.
    klp_shadow_free(object(0), FIRST, Some(record_destruction));
    assert_eq!(DESTROYED.load(Ordering::SeqCst), 3);
    // Free the second id's all at once.
    klp_shadow_free_all(SECOND, Some(record_destruction));
    assert_eq!(DESTROYED.load(Ordering::SeqCst), 6, "free_all called the destructor for each");
    assert_eq!(DESTROYED_SUM.load(Ordering::SeqCst), 100 + 101 + 102 + 200 + 201 + 202);
    for (index, calls) in DESTROYED_PER_OBJECT.iter().enumerate() {
        assert_eq!(calls.load(Ordering::SeqCst), 2, "object {index}'s two variables were destroyed with it");
    }
    for index in 0..3 {
        assert!(klp_shadow_get(object(index), FIRST).is_null(), "no <object {index}, FIRST> left");
        assert!(klp_shadow_get(object(index), SECOND).is_null(), "no <object {index}, SECOND> left");
    }
    assert_eq!(shadow::count(), variables, "no variable left");
}

#[ktest]
fn shadow_alloc_of_an_existing_pair_fails_and_keeps_the_first() {
    const ID: u64 = 0x5ade_0001;
    reset_counts();
    let first = alloc_value(object(0), ID, 7);
    assert!(!first.is_null());
    assert!(alloc_value(object(0), ID, 8).is_null(), "a second alloc of the pair returns null");
    assert_eq!(CONSTRUCTED.load(Ordering::SeqCst), 1, "the second constructor did not run");
    assert_eq!(klp_shadow_get(object(0), ID).cast(), first, "the first variable stays");
    assert_eq!(value_of(first), 7, "with its value");
    let other = alloc_value(object(1), ID, 9);
    assert!(!other.is_null() && other != first, "the same id on another object is another variable");
    klp_shadow_free_all(ID, None);
    assert!(klp_shadow_get(object(0), ID).is_null() && klp_shadow_get(object(1), ID).is_null());
}

#[ktest]
fn shadow_constructor_that_refuses_leaves_nothing() {
    const ID: u64 = 0x5ade_0002;
    reset_counts();
    let (used, _) = memory::usage();
    let variables = shadow::count();
    let refused = klp_shadow_alloc(object(2), ID, 64, Some(refuse), null_mut());
    assert!(refused.is_null(), "the constructor's error refused the allocation");
    assert_eq!(CONSTRUCTED.load(Ordering::SeqCst), 1, "the constructor ran");
    assert!(klp_shadow_get(object(2), ID).is_null(), "nothing kept under the pair");
    let refused = klp_shadow_get_or_alloc(object(2), ID, 64, Some(refuse), null_mut());
    assert!(refused.is_null(), "get_or_alloc refused the same way");
    assert_eq!(shadow::count(), variables, "no variable added");
    assert_eq!(memory::usage().0, used, "the refused variables' memory went back to the heap");
    // Without a constructor, the variable is zeroed memory of the size asked.
    let zeroed: *mut u8 = klp_shadow_alloc(object(2), ID, 64, None, null_mut()).cast();
    assert!(!zeroed.is_null());
    // Safety: a live variable of 64 bytes.
    assert!(unsafe { core::slice::from_raw_parts(zeroed, 64) }.iter().all(|&byte| byte == 0), "zeroed");
    klp_shadow_free(object(2), ID, None);
    assert!(klp_shadow_get(object(2), ID).is_null());
}

#[ktest]
fn shadow_free_all_returns_the_heap_to_its_baseline() {
    const FIRST: u64 = 0x5ade_0003;
    const SECOND: u64 = 0x5ade_0004;
    reset_counts();
    assert_eq!(shadow::count(), 0, "the earlier cases freed their variables");
    let (before, _) = memory::usage();
    let keys: Vec<usize> = (0..200).map(|index| 0x1000 + index * 8).collect();
    for &key in &keys {
        assert!(!alloc_value(key as *mut c_void, FIRST, key as u64).is_null());
        assert!(!klp_shadow_alloc(key as *mut c_void, SECOND, 24, None, null_mut()).is_null());
    }
    assert!(memory::usage().0 > before, "the variables took heap memory");
    klp_shadow_free_all(FIRST, Some(record_destruction));
    assert_eq!(DESTROYED.load(Ordering::SeqCst), keys.len() as u64, "one destructor call per variable of FIRST");
    assert!(!klp_shadow_get(keys[0] as *mut c_void, SECOND).is_null(), "SECOND's variables stay");
    klp_shadow_free_all(SECOND, None);
    drop(keys);
    assert_eq!(memory::usage().0, before, "heap usage back to where it started");
}

// ---- Contention: every CPU at once ------------------------------------------

/// Worker threads per online CPU, and the keys they race on, one after the other.
const WORKERS_PER_CPU: usize = 2;
const MAX_WORKERS: usize = MAX_CPUS * WORKERS_PER_CPU;
const RACES: usize = 64;
/// The ids of the races: RACE_ID + race.
const RACE_ID: u64 = 0x5ade_1000;

static RACE_CONSTRUCTED: [AtomicU64; RACES] = [const { AtomicU64::new(0) }; RACES];
/// What each worker got, per race.
static RACE_RESULTS: [[AtomicUsize; RACES]; MAX_WORKERS] =
    [const { [const { AtomicUsize::new(0) }; RACES] }; MAX_WORKERS];
/// Workers ready; the start signal.
static RACE_READY: AtomicUsize = AtomicUsize::new(0);
static RACE_START: AtomicBool = AtomicBool::new(false);
/// Workers that ran on a CPU other than their own.
static RACE_WRONG_CPU: AtomicU64 = AtomicU64::new(0);

/// Counts the construction of race `constructor_data`'s variable and takes
/// 200 us doing it: the other racers of that key arrive meanwhile, and must
/// wait for this variable rather than build their own (each racer is on
/// another CPU, or preempted there by the timer).
extern "C" fn construct_once(_object: *mut c_void, _shadow_data: *mut c_void, race: *mut c_void) -> i32 {
    if let Some(count) = RACE_CONSTRUCTED.get(race as usize) {
        count.fetch_add(1, Ordering::SeqCst);
    }
    let until = timebase() + time::frequency() / 5_000;
    while timebase() < until {
        core::hint::spin_loop();
    }
    0
}

/// One worker: waits for the start, then calls get_or_alloc for each race's key.
fn race(worker: usize, cpu: usize) {
    RACE_READY.fetch_add(1, Ordering::SeqCst);
    while !RACE_START.load(Ordering::SeqCst) {
        thread::yield_now();
    }
    for (race, result) in RACE_RESULTS[worker].iter().enumerate() {
        if smp_processor_id() != cpu {
            RACE_WRONG_CPU.fetch_add(1, Ordering::SeqCst);
        }
        let data =
            klp_shadow_get_or_alloc(object(0), RACE_ID + race as u64, 32, Some(construct_once), race as *mut c_void);
        result.store(data as usize, Ordering::SeqCst);
    }
}

/// Threads pinned to every online CPU race `klp_shadow_get_or_alloc` on the
/// same keys: each key gets one constructor call and one variable, which
/// every racer receives.
#[ktest]
fn shadow_get_or_alloc_from_every_cpu_gives_one_variable() {
    RACE_CONSTRUCTED.iter().for_each(|count| count.store(0, Ordering::SeqCst));
    RACE_RESULTS.iter().flatten().for_each(|result| result.store(0, Ordering::SeqCst));
    RACE_READY.store(0, Ordering::SeqCst);
    RACE_START.store(false, Ordering::SeqCst);
    RACE_WRONG_CPU.store(0, Ordering::SeqCst);
    let cpus: Vec<usize> = online_cpus().iter().collect();
    let workers: Vec<(usize, usize)> =
        cpus.iter().flat_map(|&cpu| (0..WORKERS_PER_CPU).map(move |_| cpu)).enumerate().collect();
    let handles: Vec<_> = workers
        .iter()
        .map(|&(worker, cpu)| {
            thread::spawn_on(cpu, "shadow-race", move || race(worker, cpu)).expect("room for a worker thread")
        })
        .collect();
    // Every worker has started (spinning on its CPU, or preempted there), then all go at once.
    while RACE_READY.load(Ordering::SeqCst) < workers.len() {
        thread::yield_now();
    }
    RACE_START.store(true, Ordering::SeqCst);
    for handle in handles {
        assert_eq!(handle.join(), thread::ExitStatus::Returned, "a racer returned");
    }
    assert_eq!(RACE_WRONG_CPU.load(Ordering::SeqCst), 0, "each racer ran on its own CPU");
    for (race, constructed) in RACE_CONSTRUCTED.iter().enumerate() {
        let id = RACE_ID + race as u64;
        let data = klp_shadow_get(object(0), id) as usize;
        assert_ne!(data, 0, "race {race}: a variable exists");
        assert_eq!(constructed.load(Ordering::SeqCst), 1, "race {race}: one constructor call");
        for &(worker, cpu) in &workers {
            assert_eq!(
                RACE_RESULTS[worker][race].load(Ordering::SeqCst),
                data,
                "race {race}: racer {worker} on CPU {cpu} got the one variable"
            );
        }
        klp_shadow_free_all(id, None);
    }
}

// ---- The `shadow` sample patch ------------------------------------------------

/// The sample's id and variable (patches/shadow/src/lib.rs: `GREETING_COUNT`, `GreetingCount`).
const GREETING_COUNT: u64 = 0x7368_6164_6f77;
#[repr(C)]
struct GreetingCount {
    calls: u64,
    first_tick: u64,
}

/// The sample's variable, attached to the kernel's `klp_kernel_version`.
fn greeting_count() -> Option<&'static GreetingCount> {
    let data = klp_shadow_get((&raw const klp_kernel_version).cast_mut().cast(), GREETING_COUNT);
    // Safety: the sample's variable is a GreetingCount; the test frees it only at its end.
    (!data.is_null()).then(|| unsafe { &*data.cast::<GreetingCount>() })
}

/// The sample counts greetings in a shadow variable of a kernel object,
/// built by its constructor on the first call; the variable outlives the
/// module, and the module loaded again counts on.
#[ktest]
fn shadow_sample_patch_counts_greetings_in_a_shadow_variable_that_outlives_it() {
    let file = module::embedded::find("shadow").expect("xtask builds the sample modules into the test kernel");
    let original = crate::shell::greeting();
    klp_shadow_free_all(GREETING_COUNT, None);
    let loaded_at = crate::livepatch::api::klp_uptime_ticks();
    settle::load(file).expect("the shadow sample loads");
    assert!(greeting_count().is_none(), "no variable before the first call");
    for _ in 0..3 {
        assert_eq!(crate::shell::greeting(), "hello from the shadow patch module");
    }
    let count = greeting_count().expect("the replacement attached its variable");
    assert_eq!(count.calls, 3, "three greetings counted");
    let first_tick = count.first_tick;
    assert!(first_tick >= loaded_at, "the constructor recorded the tick of the first call");
    settle::unload("shadow").expect("unloads");
    assert_eq!(crate::shell::greeting(), original);
    assert_eq!(greeting_count().map(|count| count.calls), Some(3), "the variable outlived the module");
    settle::load(file).expect("loads again");
    crate::shell::greeting();
    let count = greeting_count().expect("still there");
    assert_eq!(
        (count.calls, count.first_tick),
        (4, first_tick),
        "the module loaded again counts on, not constructed again"
    );
    settle::unload("shadow").expect("unloads");
    klp_shadow_free_all(GREETING_COUNT, None);
    assert!(greeting_count().is_none(), "freed");
}
