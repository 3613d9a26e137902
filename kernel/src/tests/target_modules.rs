//! Tests of loadable target modules: init and exit, their ftrace sites, `resolve_function`, shell commands, refusals, busy unloads.
use super::settle;
use crate::livepatch::LivepatchError;
use crate::memory;
use crate::module::{self, LoadError, commands};
use crate::trace::{self, function};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};
use macros::ktest;
use portable::module::ModuleError;

fn embedded(name: &str) -> &'static [u8] {
    module::embedded::find(name).expect("xtask builds the sample modules into the test kernel")
}

/// Whether the module log holds `line`, and how many times.
fn logged(line: &str) -> usize {
    module::log::lines().iter().filter(|kept| *kept == line).count()
}

/// The ftrace site of the function named `name` (kernel or module): (function, site, users).
fn site_named(name: &str) -> Option<(u64, u64, u32)> {
    trace::site_summaries()
        .into_iter()
        .find(|site| site.name == name)
        .map(|site| (site.function, site.address, site.users))
}

/// `target-module`'s unpatched value (patches/target-module/src/lib.rs).
const TARGET_VALUE: u64 = 0x7a49e7;

#[ktest]
fn target_module_loads_runs_init_and_exit_and_its_function_resolves() {
    module::log::clear();
    assert!(matches!(
        module::resolve_function("target-module", "target_module_value", None),
        Err(LivepatchError::UnknownObject(_))
    ));
    assert_eq!(module::load(embedded("target-module")).expect("loads"), "target-module");
    assert_eq!(logged("target-module: init"), 1, "its init ran once");
    assert_eq!(logged("target-module: exit"), 0);
    assert!(module::is_target("target-module"));
    assert!(module::targets().iter().any(|(name, loading, exited)| name == "target-module" && !loading && !exited));
    let (entry, site) =
        module::resolve_function("target-module", "target_module_value", None).expect("livepatchable, with a site");
    assert!(module::contains(entry) && module::contains(site), "both in the module's memory");
    assert!(site == entry + 4 || site == entry + 12, "the site is the second word of the local entry");
    assert!(
        matches!(module::resolve_function("target-module", "target_module_value", Some(1)), Ok(found) if found == (entry, site))
    );
    assert!(matches!(
        module::resolve_function("target-module", "target_module_value", Some(2)),
        Err(LivepatchError::BadPosition { count: 1, .. })
    ));
    let listed = site_named("target_module_value").expect("its site is in the ftrace site list");
    assert_eq!(listed, (entry, site, 0));
    // Safety: the global entry of `fn() -> u64` in the loaded module.
    let value: fn() -> u64 = unsafe { core::mem::transmute(entry as usize) };
    assert_eq!(value(), TARGET_VALUE);
    assert!(
        crate::shell::klp_list()
            .iter()
            .any(|line| line.starts_with("module target-module:") && line.ends_with("[target module]"))
    );
    settle::unload("target-module").expect("unloads");
    assert_eq!(logged("target-module: exit"), 1, "its exit ran once");
    assert!(!module::contains(entry), "its memory is gone");
    assert!(site_named("target_module_value").is_none(), "its sites are released");
    assert!(matches!(
        module::resolve_function("target-module", "target_module_value", None),
        Err(LivepatchError::UnknownObject(_))
    ));
    assert!(matches!(module::unload("target-module"), Err(LoadError::NotLoaded(_))));
    module::log::clear();
}

#[ktest]
fn resolve_function_refuses_functions_the_module_does_not_declare_livepatchable() {
    settle::load(embedded("hello-module")).expect("loads");
    let resolved = module::resolve_function("hello-module", "hello_module_message", None);
    let refused_init = module::resolve_function("hello-module", "hello_module_init", None);
    let unknown = module::resolve_function("hello-module", "no_such_function", None);
    let other = module::resolve_function("no-such-module", "hello_module_message", None);
    settle::load(embedded("greeting")).expect("the greeting patch loads");
    let patch = module::resolve_function("greeting", "greeting_replacement", None);
    settle::unload("greeting").expect("unloads");
    settle::unload("hello-module").expect("unloads");
    module::log::clear();
    assert!(resolved.is_ok(), "{resolved:?}");
    assert!(matches!(refused_init, Err(LivepatchError::NotLivepatchable(name)) if name == "hello_module_init"));
    assert!(matches!(unknown, Err(LivepatchError::UnknownFunction(name)) if name == "no_such_function"));
    assert!(matches!(other, Err(LivepatchError::UnknownObject(name)) if name == "no-such-module"));
    assert!(matches!(patch, Err(LivepatchError::UnknownObject(name)) if name == "greeting"), "a patch is no target");
}

#[ktest]
fn hello_module_adds_a_shell_command_that_goes_with_it() {
    assert_eq!(commands::output_of("hello-module", ""), None, "no such command before the load");
    settle::load(embedded("hello-module")).expect("loads");
    let output = commands::output_of("hello-module", "");
    let listed = commands::list().iter().any(|(name, _)| name == "hello-module");
    settle::unload("hello-module").expect("unloads");
    module::log::clear();
    assert_eq!(output.as_deref(), Some("hello from the hello-module target module\n"));
    assert!(listed, "help lists it");
    assert_eq!(commands::output_of("hello-module", ""), None, "the command went with the module");
    assert!(commands::list().is_empty());
}

#[ktest]
fn module_functions_are_traceable_with_the_function_tracer() {
    assert!(matches!(function::start("hello_module_*"), Err(trace::FtraceError::NoMatch(_))), "not loaded yet");
    settle::load(embedded("hello-module")).expect("loads");
    let (_, site) = module::resolve_function("hello-module", "hello_module_message", None).expect("resolves");
    let count = function::start("hello_module_*").expect("the module's functions match");
    let output = commands::output_of("hello-module", "");
    function::stop().expect("stops");
    let events: Vec<u64> = function::recorded().events.iter().map(|(_, event)| event.ip).collect();
    let name = trace::name_of(site);
    // By name too, and the sites go back to their nops when the module goes
    // with the tracer still on (the ops keeps its other sites: none here).
    trace::register(&TEST_OPS, trace::Filter::Names(&["hello_module_message"])).expect("by name");
    let users = site_named("hello_module_message").map(|(_, _, users)| users);
    settle::unload("hello-module").expect("unloads with an ops on its site");
    let left = TEST_OPS.site_count();
    trace::unregister(&TEST_OPS).expect("still registered");
    module::log::clear();
    assert!(count >= 3, "init, exit and message match ({count})");
    assert_eq!(output.as_deref(), Some("hello from the hello-module target module\n"));
    assert!(events.contains(&site), "the tracer saw the call of hello_module_message");
    assert_eq!(name.as_deref(), Some("hello_module_message"));
    assert_eq!(users, Some(1));
    assert_eq!(left, 0, "the going module's sites left the ops");
    assert!(matches!(function::start("hello_module_*"), Err(trace::FtraceError::NoMatch(_))), "gone");
}

extern "C" fn test_handler(_ip: u64, _parent: u64, _ops: &trace::FtraceOps, _regs: &mut trace::FtraceRegs) {}
static TEST_OPS: trace::FtraceOps =
    trace::FtraceOps::new("target-modules-test", test_handler, trace::OpsFlags::empty());

#[ktest]
fn a_bad_description_or_a_failing_init_is_refused_with_nothing_left() {
    // Warm up: first-use allocations that stay (the site states' map, the
    // command and thread lists) are not leaks.
    settle::load(embedded("hello-module")).expect("loads");
    settle::unload("hello-module").expect("unloads");
    module::log::clear();
    let (before, _) = memory::usage();
    let bad = module::load(embedded("bad-module"));
    let failing = module::load(embedded("failing-module"));
    let init_ran = logged("failing-module: init fails");
    let exit_ran = logged("failing-module: exit");
    module::log::clear();
    let bad_refused = matches!(&bad, Err(LoadError::Format(ModuleError::ModuleFunctionMissing(name))) if name == "bad_module_missing_init");
    let failing_refused = matches!(&failing, Err(LoadError::InitFailed(name, -22)) if name == "failing-module");
    if !(bad_refused && failing_refused) {
        panic!("refusals: {bad:?}, {failing:?}");
    }
    // The errors own their names: dropped before the heap is compared.
    drop((bad, failing));
    let used = memory::usage().0;
    assert_eq!((init_ran, exit_ran), (1, 0), "the init ran, the exit did not");
    assert!(module::summaries().is_empty(), "nothing listed");
    assert!(site_named("failing_module_value").is_none() && site_named("bad_module_value").is_none(), "no site kept");
    assert!(matches!(
        module::resolve_function("failing-module", "failing_module_value", None),
        Err(LivepatchError::UnknownObject(_))
    ));
    assert_eq!(used, before, "heap usage back to where it started");
}

#[ktest]
fn load_unload_100_times_returns_all_memory() {
    let file = embedded("hello-module");
    settle::load(file).expect("loads");
    assert!(commands::output_of("hello-module", "").is_some());
    settle::unload("hello-module").expect("unloads");
    module::log::clear();
    let (before, _) = memory::usage();
    for round in 0..100 {
        settle::load(file).expect("loads");
        let output = commands::output_of("hello-module", "");
        assert_eq!(output.as_deref(), Some("hello from the hello-module target module\n"), "round {round}");
        drop(output);
        settle::unload("hello-module").expect("unloads");
        module::log::clear();
    }
    assert_eq!(memory::usage().0, before, "heap usage back to where it started");
}

static TEST_STOP: AtomicBool = AtomicBool::new(false);

#[ktest]
fn unload_is_refused_while_a_thread_is_inside_and_goes_through_once_it_left() {
    module::log::clear();
    settle::load(embedded("busy-module")).expect("loads");
    let busy_thread = crate::thread::snapshot().iter().any(|thread| thread.name == "busy-module");
    let (entry, _) = module::resolve_function("busy-module", "busy_module_work", None).expect("resolves");
    // Safety: the global entry of `fn(&AtomicBool) -> u64` in the loaded module.
    let work: fn(&AtomicBool) -> u64 = unsafe { core::mem::transmute(entry as usize) };
    TEST_STOP.store(false, Ordering::SeqCst);
    let inside = crate::thread::spawn("inside-busy-module", move || {
        work(&TEST_STOP);
    })
    .expect("spawns");
    let inside_id = inside.id;
    crate::thread::sleep_milliseconds(30);
    let refused = module::unload("busy-module");
    let exited_once = logged("busy-module: exit, its thread stopped");
    let listed = crate::shell::klp_list().iter().any(|line| line.contains("busy-module") && line.contains("exited"));
    let module_thread_gone = !crate::thread::snapshot().iter().any(|thread| thread.name == "busy-module");
    TEST_STOP.store(true, Ordering::SeqCst);
    crate::thread::wake_interruptible(inside_id);
    inside.join();
    let unloaded = module::unload("busy-module");
    let exits = logged("busy-module: exit, its thread stopped");
    module::log::clear();
    assert!(busy_thread, "its init started its thread");
    assert!(
        matches!(&refused, Err(LoadError::Busy(name, holder)) if name == "busy-module" && holder.thread == inside_id),
        "{refused:?}"
    );
    assert_eq!(exited_once, 1, "the exit ran and stopped the module's own thread");
    assert!(module_thread_gone, "the module's thread was joined");
    assert!(listed, "klp list shows it exited, unload pending");
    assert!(unloaded.is_ok(), "{unloaded:?}");
    assert_eq!(exits, 1, "the exit ran once, not again at the second unload");
    assert!(!module::contains(entry));
}

/// `target-module`'s `TARGET_MODULE_MARK` (patches/target-module/src/lib.rs).
const TARGET_MARK: u64 = 0x5eed_0000;

#[inline(never)]
fn ten() -> u64 {
    crate::livepatch::api::klp_demo_ten(core::hint::black_box(1), 2, 3, 4, 5, 6, 7, 8, 9, core::hint::black_box(10))
}

#[ktest]
fn klp_relocations_resolve_at_load_or_when_the_module_comes_and_clear_when_it_goes() {
    let reader = embedded("klp-sym-reader");
    let target = embedded("target-module");
    assert_eq!(ten(), 55);
    // The module first: resolved when the patch is linked.
    settle::load(target).expect("the module loads");
    settle::load(reader).expect("the patch loads");
    let module_first = ten();
    settle::unload("klp-sym-reader").expect("the patch unloads");
    settle::unload("target-module").expect("the module unloads");
    // The patch first: the placeholder, then the module's symbols when it
    // comes, the placeholder again when it goes, and again when it comes back.
    settle::load(reader).expect("the patch loads without its module");
    let absent = ten();
    settle::load(target).expect("the module loads under the patch");
    let came = ten();
    settle::unload("target-module").expect("the module unloads under the patch");
    let went = ten();
    settle::load(target).expect("the module loads again");
    let came_again = ten();
    settle::unload("target-module").expect("unloads");
    settle::unload("klp-sym-reader").expect("unloads");
    module::log::clear();
    assert_eq!(module_first, TARGET_MARK + TARGET_VALUE, "resolved at the patch's load");
    assert_eq!(absent, 0, "the module's static read as the zeroed placeholder");
    assert_eq!(came, TARGET_MARK + TARGET_VALUE, "relinked when the module came");
    assert_eq!(went, 0, "cleared when it went");
    assert_eq!(came_again, TARGET_MARK + TARGET_VALUE);
    assert_eq!(ten(), 55);
}
