# Watches the ftrace_call branch and FUNCTION_TRACE_OP while one ops, two,
# the other one and none are registered. The stubs pass FUNCTION_TRACE_OP to
# whatever ftrace_call reaches, so after every single write a branch straight
# to a handler must come with that handler's ops (the stub and the list
# walker ignore it): the op is stored before a branch to a handler is
# written, and changed only after a branch away from one is.
# Run by `cargo xtask test` (xtask/src/gdb_test.rs).
# test: kernel::tests::debugger::ftrace_call_target_switches_for_the_debugger
# expect: state: ftrace_call -> debugger_first_handler, op debugger::DEBUGGER_FIRST: consistent
# expect: state: ftrace_call -> ftrace_ops_list, op debugger::DEBUGGER_FIRST: consistent
# expect: state: ftrace_call -> debugger_second_handler, op debugger::DEBUGGER_SECOND: consistent
# expect: state: ftrace_call -> ftrace_stub, op
# expect: inconsistent states: 0
set pagination off
set confirm off
python
import struct

# Which ops each of the test's handlers belongs to.
KLP_OWNERS = {"debugger_first_handler": "debugger::DEBUGGER_FIRST",
              "debugger_second_handler": "debugger::DEBUGGER_SECOND"}
KLP_INCONSISTENT = []

def klp_name(address):
    """The symbol at address, without its offset, shortened to module::name."""
    if address == 0:
        return "0"
    answer = gdb.execute("info symbol 0x%x" % address, to_string=True).strip()
    name = answer.split(" in section")[0].split(" + ")[0]
    return "::".join(name.split("::")[-2:])

def klp_state():
    site = address_of("ftrace_call")
    instruction = struct.unpack("<I", read(site, 4))[0]
    displacement = instruction & 0x03FFFFFC
    if displacement & 0x02000000:
        displacement -= 0x04000000
    target = klp_name(site + displacement).split("::")[-1]
    op = klp_name(word(address_of("FUNCTION_TRACE_OP")))
    consistent = target in ("ftrace_stub", "ftrace_ops_list") or KLP_OWNERS.get(target) == op
    line = "state: ftrace_call -> %s, op %s: %s" % (target, op, "consistent" if consistent else "INCONSISTENT")
    if not consistent:
        KLP_INCONSISTENT.append(line)
    print(line)

class KlpWatch(gdb.Breakpoint):
    def stop(self):
        klp_state()
        return False

# C expressions: the session starts stopped in boot_main, where the language is Rust.
gdb.execute("set language c")
KlpWatch("*(unsigned int *)0x%x" % address_of("ftrace_call"), gdb.BP_WATCHPOINT)
KlpWatch("*(unsigned long *)0x%x" % address_of("FUNCTION_TRACE_OP"), gdb.BP_WATCHPOINT)
gdb.execute("set language auto")
end
# Stop before the kernel powers off: QEMU then exits and takes the gdb
# connection with it, which would end the script before its summary.
break kernel::power_off
continue
python print("inconsistent states: %d" % len(KLP_INCONSISTENT))
