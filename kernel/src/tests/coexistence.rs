//! Live patches beside the other ftrace users (Linux's test-ftrace.sh and test-kprobe.sh): tracers, probes with and without post handlers, ftrace turned off.
use super::livepatch::{enable, retire};
use crate::livepatch::{self, LivepatchError};
use crate::trace::probe::{self, PROBE_IPMODIFY_OPS, PROBE_OPS, Probe, ProbeError};
use crate::trace::{self, FtraceError, FtraceRegs};
use core::hint::black_box;
use core::sync::atomic::{AtomicU64, Ordering};
use macros::{ktest, livepatchable, notrace};

/// The original every test patches: `value + 1`.
#[livepatchable]
fn target(value: u64) -> u64 {
    black_box(value + 1)
}

/// Its replacement: `value * 100`.
#[inline(never)]
fn replacement(value: u64) -> u64 {
    black_box(value * 100)
}

const TARGET: &str = "kernel::tests::coexistence::target";

fn patch(name: &str) -> Result<(), LivepatchError> {
    enable(name, &[(TARGET, None, replacement as *const () as u64)])
}

/// The site of `target`.
fn target_site() -> u64 {
    trace::site_table().named_entry(TARGET, None).expect("target has a site").address
}

/// How many of the function tracer's events are calls of `target`.
fn traced_calls_of_target() -> usize {
    let site = target_site();
    trace::function::events().0.iter().filter(|(_, event)| event.ip == site).count()
}

// The probes' handlers record what they saw here.
static PRE_CALLS: AtomicU64 = AtomicU64::new(0);
static PRE_ARGUMENT: AtomicU64 = AtomicU64::new(0);
static PRE_NIP: AtomicU64 = AtomicU64::new(0);
static POST_CALLS: AtomicU64 = AtomicU64::new(0);
static POST_NIP: AtomicU64 = AtomicU64::new(0);
/// `PRE_CALLS` when the post handler ran (so: after the pre handler).
static POST_AFTER_PRE: AtomicU64 = AtomicU64::new(0);

fn reset_probe_records() {
    for record in [&PRE_CALLS, &PRE_ARGUMENT, &PRE_NIP, &POST_CALLS, &POST_NIP, &POST_AFTER_PRE] {
        record.store(0, Ordering::SeqCst);
    }
}

#[notrace]
fn pre_handler(_ip: u64, regs: &mut FtraceRegs) {
    PRE_ARGUMENT.store(regs.regs.gpr[3], Ordering::SeqCst);
    PRE_NIP.store(regs.regs.nip, Ordering::SeqCst);
    PRE_CALLS.fetch_add(1, Ordering::SeqCst);
    // Not allowed to stick: the dispatcher puts nip back.
    regs.regs.nip = 0;
}

#[notrace]
fn post_handler(_ip: u64, regs: &mut FtraceRegs) {
    POST_NIP.store(regs.regs.nip, Ordering::SeqCst);
    POST_AFTER_PRE.store(PRE_CALLS.load(Ordering::SeqCst), Ordering::SeqCst);
    POST_CALLS.fetch_add(1, Ordering::SeqCst);
    regs.regs.nip = 0;
}

fn probe_on_target(post: bool) -> Result<(), ProbeError> {
    probe::add(Probe {
        function: TARGET,
        position: None,
        pre: pre_handler,
        post: if post { Some(post_handler) } else { None },
    })
}

fn hits_of_target() -> Option<u64> {
    probe::list().iter().find(|summary| summary.name == TARGET).map(|summary| summary.hits)
}

/// test-ftrace.sh, "livepatch interaction with ftrace_enabled sysctl".
#[ktest]
fn test_ftrace_off_refused_while_livepatched() {
    assert!(trace::enabled());
    // Off with no patch: a patch cannot be enabled (its ops is PERMANENT).
    trace::set_enabled(false).expect("nothing PERMANENT is registered");
    assert!(!trace::enabled());
    match patch("ftrace-off") {
        Err(LivepatchError::Ftrace(FtraceError::Disabled(owner))) => assert_eq!(owner, "livepatch"),
        other => panic!("enabling while ftrace is off: expected Disabled, got {other:?}"),
    }
    assert_eq!(target(black_box(3)), 4, "the refused patch is not in effect");
    assert!(!livepatch::list().iter().any(|listed| listed.name == "ftrace-off"));
    // On again: the patch loads.
    trace::set_enabled(true).unwrap();
    patch("ftrace-off").unwrap();
    assert_eq!(target(black_box(3)), 300);
    // Off is refused while it is enabled, naming its ops, and nothing changes.
    match trace::set_enabled(false) {
        Err(FtraceError::Permanent(owner)) => assert_eq!(owner, "livepatch"),
        other => panic!("turning ftrace off under a live patch: expected Permanent, got {other:?}"),
    }
    assert!(trace::enabled(), "still on");
    assert_eq!(target(black_box(3)), 300, "the patch is still in effect");
    retire("ftrace-off");
    assert_eq!(target(black_box(3)), 4);
    // Without the patch, off is allowed again.
    trace::set_enabled(false).unwrap();
    trace::set_enabled(true).unwrap();
}

/// test-ftrace.sh, "trace livepatched function and check that the live patch remains in effect".
#[ktest]
fn test_trace_a_livepatched_function() {
    patch("traced-after").unwrap();
    trace::function::start(TARGET).unwrap();
    let traced = target(black_box(5));
    trace::function::stop().unwrap();
    assert_eq!(traced, 500, "the patch is in effect while traced");
    assert_eq!(traced_calls_of_target(), 1, "the tracer recorded the call");
    assert_eq!(target(black_box(5)), 500, "and after the tracer stopped");
    retire("traced-after");
    assert_eq!(target(black_box(5)), 6);
}

/// test-ftrace.sh, "livepatch a traced function and check that the live patch remains in effect".
#[ktest]
fn test_livepatch_a_traced_function() {
    trace::function::start(TARGET).unwrap();
    assert_eq!(target(black_box(6)), 7);
    patch("traced-before").unwrap();
    let patched = target(black_box(6));
    trace::function::stop().unwrap();
    assert_eq!(patched, 600, "the patch is in effect while traced");
    assert_eq!(traced_calls_of_target(), 2, "the tracer recorded both calls, before and after the patch");
    assert_eq!(target(black_box(6)), 600, "the patch stays in effect after the tracer stopped");
    retire("traced-before");
    assert_eq!(target(black_box(6)), 7);
}

/// test-kprobe.sh, "livepatch interaction with kprobed function with post_handler", in both orders.
#[ktest]
fn test_kprobe_with_post_handler_refused_on_livepatched_function() {
    let site = target_site();
    let words = || crate::arch::text::read(site);
    let before = words();
    // The probe first: the patch is refused.
    reset_probe_records();
    probe_on_target(true).unwrap();
    let probed_word = words();
    match patch("after-probe") {
        Err(LivepatchError::Busy { owner, .. }) => assert_eq!(owner, PROBE_IPMODIFY_OPS.name),
        other => panic!("patching a function with a post-handler probe: expected Busy, got {other:?}"),
    }
    assert!(!livepatch::list().iter().any(|listed| listed.name == "after-probe"));
    assert_eq!(words(), probed_word, "the refused patch changed no site");
    assert_eq!(target(black_box(2)), 3, "the original still runs");
    assert_eq!(hits_of_target(), Some(1), "and the probe still sees it");
    probe::remove(TARGET, None).unwrap();
    assert_eq!(words(), before);
    // The patch first: the probe is refused.
    patch("before-probe").unwrap();
    let patched_word = words();
    match probe_on_target(true) {
        Err(ProbeError::Busy { owner, name }) => {
            assert_eq!(owner, "livepatch");
            assert_eq!(name, TARGET);
        }
        other => panic!("a post-handler probe on a patched function: expected Busy, got {other:?}"),
    }
    assert!(probe::list().is_empty(), "the refused probe is not registered");
    assert!(!trace::registered().contains(&PROBE_IPMODIFY_OPS.name));
    assert_eq!(words(), patched_word, "the refused probe changed no site");
    assert_eq!(target(black_box(2)), 200, "the patch is still in effect");
    assert_eq!(PRE_CALLS.load(Ordering::SeqCst), 1, "the refused probe never ran");
    retire("before-probe");
    assert_eq!(words(), before);
}

/// test-kprobe.sh, "livepatch interaction with kprobed function without post_handler" (and the other order).
#[ktest]
fn test_kprobe_without_post_handler_coexists() {
    // The probe first, as Linux's case.
    reset_probe_records();
    probe_on_target(false).unwrap();
    patch("beside-probe").unwrap();
    assert_eq!(target(black_box(9)), 900, "the replacement's result");
    assert_eq!(PRE_CALLS.load(Ordering::SeqCst), 1, "the pre handler saw the call");
    assert_eq!(PRE_ARGUMENT.load(Ordering::SeqCst), 9, "with its argument");
    assert_eq!(hits_of_target(), Some(1));
    probe::remove(TARGET, None).unwrap();
    assert_eq!(target(black_box(9)), 900, "the patch stays when the probe goes");
    assert_eq!(PRE_CALLS.load(Ordering::SeqCst), 1);
    // The patch first.
    probe_on_target(false).unwrap();
    assert_eq!(target(black_box(8)), 800);
    assert_eq!(PRE_ARGUMENT.load(Ordering::SeqCst), 8);
    assert_eq!(PRE_CALLS.load(Ordering::SeqCst), 2);
    retire("beside-probe");
    assert_eq!(target(black_box(8)), 9, "the probe stays when the patch goes");
    assert_eq!(PRE_CALLS.load(Ordering::SeqCst), 3);
    assert_eq!(hits_of_target(), Some(2));
    probe::remove(TARGET, None).unwrap();
    assert!(!trace::registered().contains(&PROBE_OPS.name), "the last probe took its ops with it");
}

#[ktest]
fn a_post_handler_runs_after_the_pre_handler_with_nip_past_the_site() {
    reset_probe_records();
    probe_on_target(true).unwrap();
    assert_eq!(target(black_box(4)), 5, "the call continues as before: nip was put back");
    probe::remove(TARGET, None).unwrap();
    let site = target_site();
    assert_eq!(PRE_CALLS.load(Ordering::SeqCst), 1);
    assert_eq!(POST_CALLS.load(Ordering::SeqCst), 1);
    assert_eq!(POST_AFTER_PRE.load(Ordering::SeqCst), 1, "post ran after pre");
    assert_eq!(PRE_NIP.load(Ordering::SeqCst), site + 4, "pre sees where the call resumes");
    assert_eq!(POST_NIP.load(Ordering::SeqCst), site + 4, "post sees nip past the probed site");
    assert_eq!(target(black_box(4)), 5);
    assert_eq!(PRE_CALLS.load(Ordering::SeqCst), 1, "a removed probe does not run");
}

#[ktest]
fn bad_probes_get_clear_errors_and_change_nothing() {
    assert!(matches!(probe_on_probe_of("kernel::no::such::function"), Err(ProbeError::UnknownFunction(_))));
    // A notrace function has no site.
    assert!(matches!(probe_on_probe_of("exception_dispatch"), Err(ProbeError::UnknownFunction(_))));
    probe_on_target(false).unwrap();
    match probe_on_target(true) {
        Err(ProbeError::AlreadyProbed(name)) => assert_eq!(name, TARGET),
        other => panic!("a second probe: expected AlreadyProbed, got {other:?}"),
    }
    let listed = probe::list();
    assert_eq!(listed.len(), 1);
    assert!(!listed[0].post, "the first probe is still the one without a post handler");
    assert_eq!(listed[0].function, target as *const () as u64);
    assert_eq!(listed[0].site, target_site());
    assert!(!trace::registered().contains(&PROBE_IPMODIFY_OPS.name));
    probe::remove(TARGET, None).unwrap();
    match probe::remove(TARGET, None) {
        Err(ProbeError::NotProbed(name)) => assert_eq!(name, TARGET),
        other => panic!("removing twice: expected NotProbed, got {other:?}"),
    }
    assert!(probe::list().is_empty());
}

fn probe_on_probe_of(function: &str) -> Result<(), ProbeError> {
    probe::add(Probe { function, position: None, pre: pre_handler, post: None })
}

#[ktest]
fn while_ftrace_is_off_other_ops_register_but_no_site_calls_them() {
    reset_probe_records();
    trace::set_enabled(false).unwrap();
    probe_on_target(false).expect("a probe registers while ftrace is off");
    trace::function::start(TARGET).expect("a tracer registers while ftrace is off");
    let site = target_site();
    assert_eq!(crate::arch::text::read(site), portable::instruction::NOP, "the site stays a nop");
    assert_eq!(target(black_box(1)), 2);
    assert_eq!(PRE_CALLS.load(Ordering::SeqCst), 0, "no handler runs while off");
    trace::set_enabled(true).unwrap();
    assert_ne!(crate::arch::text::read(site), portable::instruction::NOP, "on again: the site calls its stub");
    assert_eq!(target(black_box(1)), 2);
    assert_eq!(PRE_CALLS.load(Ordering::SeqCst), 1, "the probe runs once ftrace is on");
    assert_eq!(traced_calls_of_target(), 1, "so does the tracer");
    trace::function::stop().unwrap();
    probe::remove(TARGET, None).unwrap();
    assert_eq!(crate::arch::text::read(site), portable::instruction::NOP);
    let summary = trace::site_summaries().into_iter().find(|summary| summary.address == site).expect("a site");
    assert_eq!(summary.users, 0, "nothing left tracing it");
}
