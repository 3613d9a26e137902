//! The kernel shell on the console: `help`, `threads`, `cpus`, `mem`, `uptime`, `hello`, `klp`, `trace`, `probe`, `ftrace`, `demo`, `version`, `poweroff` (README.md lists the same: xtask's shell_docs test).
use crate::{console, demo, livepatch, memory, module, println, smp, thread, time, trace};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

/// The prompt.
pub const PROMPT: &str = "klp> ";
/// End of transmission: xtask sends it when its standard input ends.
const END_OF_INPUT: u8 = 0x04;

struct Command {
    name: &'static str,
    help: &'static str,
    run: fn(&str),
}

const COMMANDS: &[Command] = &[
    Command { name: "help", help: "list the commands", run: help },
    Command {
        name: "threads",
        help: "list threads: state, CPU, switches, stack and livepatch stack use",
        run: threads,
    },
    Command { name: "pin", help: "pin THREAD CPU|any: move a thread to one CPU, or let it run on any", run: pin },
    Command {
        name: "cpus",
        help: "list CPUs: interrupt server, online, IPIs, calls, ticks, what each runs",
        run: cpus,
    },
    Command { name: "mem", help: "heap usage", run: mem },
    Command {
        name: "uptime",
        help: "time since boot and timer interrupts (ticks and preemption retries)",
        run: uptime,
    },
    Command {
        name: "hello",
        help: "print the greeting (the built-in patch 'builtin-greeting' and the module 'greeting' replace it)",
        run: hello,
    },
    Command {
        name: "klp",
        help: "livepatch: klp list | patchable [GLOB] | enable NAME | disable NAME | status | signal | force NAME | load MODULE | unload MODULE | log | direct [on/off]",
        run: klp,
    },
    Command {
        name: "trace",
        help: "tracers: trace on GLOB | off | show | graph GLOB | dump | sites [GLOB]",
        run: trace,
    },
    Command {
        name: "probe",
        help: "function-entry probes that count calls: probe add FUNC [post] | list | del FUNC",
        run: probe,
    },
    Command {
        name: "ftrace",
        help: "all of ftrace: ftrace on | off | status (off is refused while a live patch is enabled)",
        run: ftrace,
    },
    Command {
        name: "demo",
        help: "call a function the from-diff corpus patches (kernel/src/demo.rs): demo scaled N | ticket | tally N | hailstone N | sum N... | ten A B C D E F G H I J | encode N | decode N | roundtrip N | capped N | area W H | untraced N | corners N",
        run: demo,
    },
    Command { name: "version", help: "this kernel's build id and the source commit it was built from", run: version },
    Command { name: "poweroff", help: "power the machine off", run: poweroff },
];

/// Reads and runs commands until input ends (EOT) or `poweroff`.
pub fn run(_arguments: &str) {
    println!("Type 'help' for the commands.");
    // The console refuses typing beyond its fixed line, so this never grows.
    let mut line = String::with_capacity(portable::input_line::CAPACITY);
    console::input_open(PROMPT);
    loop {
        let mut buffer = [0u8; 16];
        let count = console::read(&mut buffer);
        if count == 0 {
            // Output that broke into the prompt has been quiet since the last
            // poll: show the prompt and the typing again (once).
            console::input_redisplay_if_quiet();
            thread::sleep_milliseconds(10);
            continue;
        }
        for &byte in &buffer[..count] {
            match byte {
                END_OF_INPUT => {
                    console::input_close();
                    println!("end of input");
                    return;
                }
                b'\r' | b'\n' => {
                    console::input_close();
                    execute(line.trim());
                    line.clear();
                    console::input_open(PROMPT);
                }
                0x7f | 0x08 if line.pop().is_some() => console::input_pop(PROMPT.len()),
                byte if (byte.is_ascii_graphic() || byte == b' ') && console::input_push(byte as char) => {
                    line.push(byte as char);
                }
                _ => {}
            }
        }
    }
}

/// Runs one command line.
pub fn execute(line: &str) {
    let (name, arguments) = line.split_once(' ').unwrap_or((line, ""));
    if name.is_empty() {
        return;
    }
    match COMMANDS.iter().find(|command| command.name == name) {
        Some(command) => (command.run)(arguments.trim()),
        None => match module::commands::output_of(name, arguments.trim()) {
            Some(output) => crate::print!("{output}"),
            None => println!("{name}: unknown command (try 'help')"),
        },
    }
}

/// Whether the shell has a built-in command `name` (a module cannot add one of that name).
pub fn is_builtin(name: &str) -> bool {
    COMMANDS.iter().any(|command| command.name == name)
}

fn help(_: &str) {
    for command in COMMANDS {
        println!("  {:<10} {}", command.name, command.help);
    }
    for (name, help) in module::commands::list() {
        println!("  {name:<10} {help} (from a module)");
    }
}

fn threads(_: &str) {
    println!(
        "  {:>3} {:<24} {:<12} {:>4} {:>6} {:>9} {:>11} {:>10} {:>9}",
        "id", "name", "state", "cpu", "pinned", "switches", "stack used", "lp stack", "patch"
    );
    for summary in thread::snapshot() {
        let state = match summary.state {
            thread::State::Running => "running",
            thread::State::Ready => "ready",
            thread::State::Sleeping(_) => "sleeping",
            thread::State::Joining => "joining",
            thread::State::Dead(_) => "dead",
        };
        let pinned = summary.affinity.map_or(String::from("-"), |cpu| format!("{cpu}"));
        let used = summary.stack_used.map_or(String::from("-"), |used| format!("{used}"));
        let patch = match summary.patch_state {
            livepatch::transition::PATCHED => "patched",
            livepatch::transition::UNPATCHED => "unpatched",
            _ => "-",
        };
        println!(
            "  {:>3} {:<24} {:<12} {:>4} {:>6} {:>9} {:>11} {:>10} {:>9}",
            summary.id,
            summary.name,
            state,
            summary.cpu,
            pinned,
            summary.switches,
            used,
            summary.livepatch_depth,
            patch
        );
    }
}

fn pin(arguments: &str) {
    let mut words = arguments.split_whitespace();
    let (Some(id), Some(cpu), None) = (words.next(), words.next(), words.next()) else {
        println!("usage: pin THREAD CPU|any");
        return;
    };
    let Ok(id) = id.parse::<u64>() else {
        println!("pin: {id} is not a thread number");
        return;
    };
    let cpu = match cpu {
        "any" => None,
        number => match number.parse::<usize>() {
            Ok(cpu) => Some(cpu),
            Err(_) => {
                println!("pin: {number} is not a CPU number or `any`");
                return;
            }
        },
    };
    match thread::set_affinity(id, cpu) {
        Ok(()) => println!("thread {id}: runs on {}", cpu.map_or(String::from("any CPU"), |cpu| format!("CPU {cpu}"))),
        Err(error) => println!("pin: {error}"),
    }
}

fn cpus(_: &str) {
    println!("  {:>3} {:>6} {:<7} {:>8} {:>8} {:>8}  runs", "cpu", "server", "state", "ipis", "calls", "ticks");
    for cpu in 0..smp::cpus_in_tree() {
        println!("  {}", smp::describe(cpu));
    }
}

fn mem(_: &str) {
    let (used, total) = memory::usage();
    println!("heap: {} KiB used of {} KiB ({} KiB free)", used >> 10, total >> 10, (total - used) >> 10);
    println!("kernel image: {:#x}..{:#x}", 0x400000, memory::heap_start());
}

fn uptime(_: &str) {
    let nanoseconds = time::uptime_nanoseconds();
    // Every timer interrupt counts; a deferred preemption's 20 us retries are
    // said apart, since they make the count run faster than the tick rate.
    let (interrupts, retries) = (time::ticks(), time::retries());
    let rate = if time::jittered() { String::from("jittered 2-64 us") } else { alloc::format!("{} Hz", time::TICK_HZ) };
    println!(
        "up {}.{:03} s, {} timer interrupts on all CPUs: {} periodic ticks ({rate}) and {retries} retries of a deferred preemption; timebase {} Hz",
        nanoseconds / 1_000_000_000,
        (nanoseconds / 1_000_000) % 1000,
        interrupts,
        interrupts - retries,
        time::frequency()
    );
}

/// What `hello` prints: the function the built-in patch and the sample
/// modules replace. `#[livepatchable]` keeps `hello` from folding the
/// constant in (interprocedural constant propagation would leave nothing to
/// patch) and lets the livepatch core accept it as a target.
#[macros::livepatchable]
pub fn greeting() -> &'static str {
    "hello from the original kernel"
}

fn hello(_: &str) {
    println!("{}", greeting());
}

fn klp(arguments: &str) {
    let (verb, name) = arguments.split_once(' ').unwrap_or((arguments, ""));
    let name = name.trim();
    let result = match verb {
        "list" => {
            klp_list().iter().for_each(|line| println!("{line}"));
            Ok(())
        }
        "patchable" => {
            klp_patchable(if name.is_empty() { "*" } else { name }).iter().for_each(|line| println!("{line}"));
            Ok(())
        }
        "enable" if !name.is_empty() => {
            livepatch::enable(name).map(|progress| report_transition(name, "enabled", progress))
        }
        "disable" if !name.is_empty() => {
            livepatch::disable(name).map(|progress| report_transition(name, "disabled", progress))
        }
        "log" => {
            module::log::lines().iter().for_each(|line| println!("{line}"));
            Ok(())
        }
        "status" => {
            klp_status().iter().for_each(|line| println!("{line}"));
            Ok(())
        }
        "signal" => {
            println!("woke {} threads that block the transition, asleep interruptibly", livepatch::signal());
            Ok(())
        }
        "direct" if name.is_empty() => {
            klp_direct().iter().for_each(|line| println!("{line}"));
            Ok(())
        }
        "direct" if name == "on" || name == "off" => livepatch::direct::set_enabled(name == "on")
            .map(|()| klp_direct().iter().for_each(|line| println!("{line}")))
            .map_err(livepatch::LivepatchError::Ftrace),
        "force" if !name.is_empty() => livepatch::force(name)
            .map(|()| println!("patch '{name}': transition forced; its module can no longer be unloaded")),
        "load" if !name.is_empty() => {
            match module::embedded::find(name) {
                Some(file) => match module::load(file) {
                    Ok(loaded) if module::is_target(&loaded) => {
                        println!("target module '{loaded}' loaded, its init ran")
                    }
                    Ok(patch) => {
                        println!("module '{name}' loaded");
                        report_transition(&patch, "enabled", transition_progress(&patch));
                    }
                    Err(error) => println!("klp load: {error}"),
                },
                None => println!("klp load: no module '{name}' is built into this kernel"),
            }
            Ok(())
        }
        "unload" if !name.is_empty() => {
            let target = module::is_target(name);
            match module::unload(name) {
                Ok(()) if target => println!("target module '{name}' unloaded: its exit ran"),
                Ok(()) => println!("module '{name}' unloaded: its patch's disable transition completed"),
                Err(error) => println!("klp unload: {error}"),
            }
            Ok(())
        }
        _ => {
            println!(
                "usage: klp list | patchable [GLOB] | enable NAME | disable NAME | status | signal | force NAME | load MODULE | unload MODULE | log | direct [on/off]"
            );
            Ok(())
        }
    };
    if let Err(error) = result {
        println!("klp {verb}: {error}");
    }
}

/// Prints where patch `name`'s transition stands after `verb` (enabled or disabled).
fn report_transition(name: &str, verb: &str, progress: livepatch::Progress) {
    match progress {
        livepatch::Progress::Complete => println!("patch '{name}' {verb}: transition complete"),
        livepatch::Progress::Pending(blocked) => {
            println!("patch '{name}' {verb}: transition in progress, blocked by {} threads:", blocked.len());
            blocked.iter().for_each(|blocked| println!("  {blocked}"));
            println!("  (retried every {} ms; `klp status`, `klp force {name}`)", livepatch::RETRY_MILLISECONDS);
        }
    }
}

/// Whether patch `name`'s transition is still in progress (after a load).
pub fn transition_progress(name: &str) -> livepatch::Progress {
    match livepatch::status() {
        Some(status) if status.patch == name => livepatch::Progress::Pending(status.blocked),
        _ => livepatch::Progress::Complete,
    }
}

/// What `klp direct` prints: whether final patches use direct calls, and
/// each function called through a trampoline now.
pub fn klp_direct() -> Vec<String> {
    let direct = livepatch::direct::summary();
    let (live, available) = livepatch::direct::slots_in_use();
    let mut lines = alloc::vec![format!(
        "direct calls {}: {} functions through trampolines, {live} slots live, {available} free; {} refused since boot",
        if livepatch::direct::enabled() { "on" } else { "off" },
        direct.len(),
        livepatch::direct::refused()
    )];
    lines.extend(direct.iter().map(|&(site, replacement, trampoline)| {
        format!(
            "  {} -> {} via {trampoline:#x}",
            crate::trace::name_of(site).unwrap_or_else(|| format!("{site:#x}")),
            crate::symbols::Symbolized(replacement)
        )
    }));
    lines
}

/// What `klp status` prints: the transition in progress and the threads
/// that block it, each with the function on its stack that blocks it.
pub fn klp_status() -> Vec<String> {
    let Some(status) = livepatch::status() else {
        return alloc::vec![String::from("no transition in progress")];
    };
    let mut lines = alloc::vec![format!(
        "patch '{}' is being {}: {} ms, {} rounds, {} threads block it",
        status.patch,
        if status.enabling { "enabled" } else { "disabled" },
        crate::time::timebase_to_milliseconds(status.elapsed),
        status.attempts,
        status.blocked.len()
    )];
    lines.extend(status.blocked.iter().map(|blocked| format!("  {blocked}")));
    lines
}

/// What `klp list` prints: the loaded modules, then each patch (its state,
/// then its `stack_order`, whether it is an atomic replace, each object and
/// whether it is patched, its system states) and the functions it replaces, the replacement named in the kernel or in its
/// module (`NAME+0xOFFSET [MODULE]`), and for a function replaced although
/// callers hold inlined copies (`allow_inlined`), where those copies are.
pub fn klp_list() -> Vec<String> {
    let mut lines = Vec::new();
    let targets = module::targets();
    for (module, address, size, toc) in module::summaries() {
        let kind = match targets.iter().find(|(name, _, _)| *name == module) {
            Some((_, true, _)) => " [target module, loading]",
            Some((_, _, true)) => " [target module, exited, unload pending]",
            Some(_) => " [target module]",
            None => "",
        };
        lines.push(format!("module {module}: {size} bytes at {address:#x}, TOC {toc:#x}{kind}"));
    }
    let direct = livepatch::direct::summary();
    for patch in livepatch::list() {
        let state = match patch.transition {
            Some(true) => "enabled, in transition to patched",
            Some(false) => "enabled, in transition to unpatched",
            None if patch.enabled => "enabled",
            None => "disabled",
        };
        let forced = if patch.forced { ", forced" } else { "" };
        lines.push(format!("{} [{state}{forced}]", patch.name));
        lines.push(format!("  {}", patch.details()));
        for function in patch.functions {
            let state = if function.active { "active" } else { "inactive" };
            let new = match crate::symbols::table().and_then(|table| table.lookup(function.new)) {
                Some(_) => format!("{}", crate::symbols::Symbolized(function.new)),
                None => module::symbolize(function.new).unwrap_or_else(|| String::from("?")),
            };
            let mut line = format!("  {} {:#x} -> {:#x} {new} ({state})", function.name, function.old, function.new);
            // Called through a trampoline now (docs/livepatch.md, "Two paths").
            let site = || crate::arch::text::local_entry(function.old) + 4;
            if let Some(&(_, _, trampoline)) = direct.iter().find(|&&(direct_site, replacement, _)| {
                replacement == function.new && function.active && direct_site == site()
            }) {
                line.push_str(&format!(" [direct: {}]", crate::symbols::Symbolized(trampoline)));
            }
            if function.allow_inlined && !function.inlined_into.is_empty() {
                let holders: Vec<&str> = function.inlined_into.iter().map(|holder| holder.name.as_str()).collect();
                line.push_str(&format!(
                    " [allow_inlined: the copies inlined into {} run the original]",
                    holders.join(", ")
                ));
            }
            lines.push(line);
        }
    }
    lines
}

/// What `klp patchable GLOB` prints: the functions matching GLOB that a live
/// patch can replace safely (an ftrace site, `#[livepatchable]`, inlined
/// nowhere), each with its signature from the DWARF, then those refused and why.
pub fn klp_patchable(glob: &str) -> Vec<String> {
    let targets = livepatch::notes::targets(glob);
    let mut lines: Vec<String> = targets
        .replaceable
        .iter()
        .map(|target| match target.signature {
            Some(signature) => format!("  {signature}"),
            None => format!("  {} (no signature recorded)", target.name),
        })
        .collect();
    for (name, holders) in &targets.inlined {
        lines.push(format!("  not {name}: #[livepatchable] but inlined into {}", livepatch::Holders(holders)));
    }
    lines.push(format!(
        "{} functions matching '{glob}' can be replaced safely; {} are inlined somewhere; {} more have an ftrace site but are not #[livepatchable]",
        targets.replaceable.len(),
        targets.inlined.len(),
        targets.unmarked
    ));
    lines
}

fn trace(arguments: &str) {
    let (verb, rest) = arguments.split_once(' ').unwrap_or((arguments, ""));
    let rest = rest.trim();
    match verb {
        "on" if !rest.is_empty() => match trace::function::start(rest) {
            Ok(count) => println!("function tracer on: {count} functions match '{rest}'"),
            Err(error) => println!("trace on: {error}"),
        },
        "graph" if !rest.is_empty() => match trace::graph::start(rest) {
            Ok(count) => println!("function_graph tracer on: {count} functions match '{rest}'"),
            Err(error) => println!("trace graph: {error}"),
        },
        "off" => {
            let registered = trace::registered();
            if registered.contains(&trace::function::FUNCTION_OPS.name) {
                report("trace off", trace::function::stop());
            }
            if registered.contains(&trace::graph::GRAPH_OPS.name) {
                report("trace off", trace::graph::stop());
            }
            println!("tracing off");
        }
        "show" => {
            // Each tracer that recorded something, under its own header; the
            // function tracer's (empty) table when neither did.
            let graphed = !trace::graph::events().0.is_empty();
            let (functions, lost) = trace::function::events();
            let mut lines = alloc::vec::Vec::new();
            if !functions.is_empty() || lost != 0 || !graphed {
                lines.extend(trace::function::render());
            }
            if graphed {
                lines.extend(trace::graph::render(None, true));
            }
            lines.iter().for_each(|line| println!("{line}"));
        }
        "dump" => {
            // One line per function_graph event, for `cargo xtask trace` to draw.
            let (events, lost) = trace::graph::events();
            let frequency = time::frequency();
            for (cpu, event) in events {
                let nanoseconds = |ticks: u64| (ticks as u128 * 1_000_000_000 / frequency as u128) as u64;
                println!(
                    "graph-event {} {cpu} {} {} {} {} {}",
                    if event.kind == portable::graph::Kind::Entry { "E" } else { "X" },
                    event.thread,
                    event.depth,
                    nanoseconds(event.timebase),
                    nanoseconds(event.duration),
                    trace::graph::function_name(event.ip)
                );
            }
            println!("graph-events-lost {lost}");
        }
        "sites" => {
            let glob = if rest.is_empty() { "*" } else { rest };
            for site in trace::site_summaries().iter().filter(|site| portable::ftrace::glob_match(glob, &site.name)) {
                let stub = match site.caller {
                    portable::ftrace::Caller::None => String::new(),
                    portable::ftrace::Caller::Light => String::from(" (ftrace_caller)"),
                    portable::ftrace::Caller::Regs => String::from(" (ftrace_regs_caller)"),
                    portable::ftrace::Caller::Direct(target) => {
                        alloc::format!(" (direct: {})", crate::symbols::Symbolized(target))
                    }
                };
                let users = if site.ops.is_empty() { String::from("untraced") } else { site.ops.join(", ") };
                println!("  {:#x} {}: {users}{stub}", site.address, site.name);
            }
        }
        _ => println!("usage: trace on GLOB | off | show | graph GLOB | dump | sites [GLOB]"),
    }
}

fn report(what: &str, result: Result<(), trace::FtraceError>) {
    if let Err(error) = result {
        println!("{what}: {error}");
    }
}

/// The shell's probes only count calls (the probe machinery counts hits); they print nothing.
#[macros::notrace]
fn count_only(_ip: u64, _regs: &mut trace::FtraceRegs) {}

fn probe(arguments: &str) {
    let (verb, rest) = arguments.split_once(' ').unwrap_or((arguments, ""));
    let words: Vec<&str> = rest.split_whitespace().collect();
    match verb {
        "add" if matches!(words.as_slice(), [_] | [_, "post"]) => {
            let (function, post) = (words[0], words.len() == 2);
            let probe = trace::probe::Probe {
                function,
                position: None,
                pre: count_only,
                post: if post { Some(count_only) } else { None },
            };
            match trace::probe::add(probe) {
                Ok(()) => println!(
                    "probe on {function}{}",
                    if post { " with a post handler (holds its IPMODIFY slot)" } else { "" }
                ),
                Err(error) => println!("probe add: {error}"),
            }
        }
        "list" if words.is_empty() => {
            let probes = trace::probe::list();
            if probes.is_empty() {
                println!("no probes");
            }
            for probe in probes {
                let post = if probe.post { "post" } else { "no post" };
                println!("  {} {:#x}: {} hits, {post}", probe.name, probe.site, probe.hits);
            }
        }
        "del" if words.len() == 1 => match trace::probe::remove(words[0], None) {
            Ok(()) => println!("probe on {} removed", words[0]),
            Err(error) => println!("probe del: {error}"),
        },
        _ => println!("usage: probe add FUNC [post] | list | del FUNC"),
    }
}

fn ftrace(arguments: &str) {
    let result = match arguments {
        "on" => trace::set_enabled(true),
        "off" => trace::set_enabled(false),
        "status" => {
            let registered = trace::registered();
            let state = if trace::enabled() { "on" } else { "off (every site is a nop)" };
            println!(
                "ftrace is {state}; registered ops: {}",
                if registered.is_empty() { String::from("none") } else { registered.join(", ") }
            );
            return;
        }
        _ => {
            println!("usage: ftrace on | off | status");
            return;
        }
    };
    match result {
        Ok(()) => println!("ftrace {arguments}"),
        Err(error) => println!("ftrace {arguments}: {error}"),
    }
}

/// `demo FUNCTION NUMBERS...`: calls a function of kernel/src/demo.rs with
/// numbers read from the line and prints `FUNCTION(ARGUMENTS) = RESULT`.
fn demo(arguments: &str) {
    let (function, rest) = arguments.split_once(' ').unwrap_or((arguments, ""));
    let numbers: Option<Vec<u64>> = rest.split_whitespace().map(|word| word.parse().ok()).collect();
    let line = numbers.and_then(|numbers| demo_line(function, &numbers));
    match line {
        Some(line) => println!("{line}"),
        None => println!(
            "usage: demo scaled N | ticket | tally N | hailstone N | sum N... | ten A B C D E F G H I J | encode N | decode N | roundtrip N | capped N | area W H | untraced N | corners N (N: a number; sum's fit in 32 bits)"
        ),
    }
}

/// What `demo FUNCTION NUMBERS` prints; None when the function or the count of numbers is wrong.
fn demo_line(function: &str, numbers: &[u64]) -> Option<String> {
    match function {
        "scaled" => exactly(numbers).map(|[value]| format!("scaled({value}) = {}", demo::scaled(value))),
        "ticket" => exactly(numbers).map(|[]| format!("ticket() = {}", demo::ticket())),
        "tally" => exactly(numbers).map(|[amount]| format!("tally({amount}) = {}", demo::tally(amount))),
        "hailstone" => exactly(numbers).map(|[value]| format!("hailstone({value}) = {}", demo::hailstone(value))),
        "sum" => {
            let items: Option<Vec<u32>> = numbers.iter().map(|&number| u32::try_from(number).ok()).collect();
            items
                .filter(|items| !items.is_empty())
                .map(|items| format!("sum({items:?}) = {}", demo::sum::<u32>(&items)))
        }
        "ten" => exactly(numbers).map(|[a, b, c, d, e, f, g, h, i, j]| {
            format!(
                "ten({a}, {b}, {c}, {d}, {e}, {f}, {g}, {h}, {i}, {j}) = {}",
                demo::ten(a, b, c, d, e, f, g, h, i, j)
            )
        }),
        "encode" => exactly(numbers).map(|[value]| format!("encode({value}) = {}", demo::encode(value))),
        "decode" => exactly(numbers).map(|[code]| format!("decode({code}) = {}", demo::decode(code))),
        "roundtrip" => {
            exactly(numbers).map(|[value]| format!("decode(encode({value})) = {}", demo::decode(demo::encode(value))))
        }
        "capped" => exactly(numbers).map(|[value]| format!("capped({value}) = {}", demo::capped(value))),
        "area" => exactly(numbers).map(|[width, height]| {
            format!("area({width} x {height}) = {}", demo::area(&demo::Rectangle::new(width, height)))
        }),
        "untraced" => exactly(numbers).map(|[value]| format!("untraced({value}) = {}", demo::untraced(value))),
        "corners" => {
            exactly(numbers).map(|[scale]| format!("corners({scale}) = {}", demo::corners(&demo::Triangle, scale)))
        }
        _ => None,
    }
}

/// `numbers` as an array of exactly `COUNT`, or None.
fn exactly<const COUNT: usize>(numbers: &[u64]) -> Option<[u64; COUNT]> {
    numbers.try_into().ok()
}

fn poweroff(_: &str) {
    crate::power_off();
}

/// `version`: the build id a patch's `build-id` line must name, and the source commit.
fn version(_: &str) {
    println!("klp: kernel {}", crate::build_id::describe());
}
