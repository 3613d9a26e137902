# Steps through the inner call's direct-call trampoline one instruction at a
# time (before the push, between push and pop, after the pop), while the
# outer call's trampoline frame is on the livepatch stack, and checks the
# whole chain of callers at every instruction and inside the replacement.
# Run by `cargo xtask test` (xtask/src/gdb_test.rs).
# test: nested_direct_calls_for_the_debugger
# expect: === the inner site ===
# expect: site branches to a trampoline: yes
# expect: bl 0x
# expect: livepatch trampoline -> kernel::tests::debugger::debugger_inner_replacement
# expect: === entry half ===
# expect: offset 0 chain: livepatch trampoline -> debugger_inner_replacement <- debugger_inner_caller <- debugger_outer_replacement <- livepatch trampoline -> debugger_outer_replacement <- debugger_outer_caller <- nested_direct_calls_for_the_debugger
# expect: entry half: every chain right
# expect: === inside the replacement ===
# expect: caller: livepatch trampoline -> debugger_inner_replacement
# expect: chain: debugger_inner_replacement <- livepatch trampoline -> debugger_inner_replacement <- debugger_inner_caller <- debugger_outer_replacement <- livepatch trampoline -> debugger_outer_replacement <- debugger_outer_caller <- nested_direct_calls_for_the_debugger
# `bt` names the trampoline after the replacement it calls.
# expect: === bt ===
# expect: #0 
# expect: debugger_inner_replacement
# expect: #1 
# expect: in livepatch trampoline -> kernel::tests::debugger::debugger_inner_replacement ()
# expect: #2 
# expect: debugger_inner_caller
# expect: #3 
# expect: debugger_outer_replacement
# expect: #4 
# expect: in livepatch trampoline -> kernel::tests::debugger::debugger_outer_replacement ()
# expect: #5 
# expect: debugger_outer_caller
# expect: === lp-stack ===
# expect: 2 livepatch frame(s)
# expect: kernel::tests::debugger::debugger_inner_caller + 
# expect: kernel::tests::debugger::debugger_outer_caller + 
# expect: === return half ===
# expect: chain: livepatch trampoline -> debugger_inner_replacement <- debugger_inner_caller <- debugger_outer_replacement <- livepatch trampoline -> debugger_outer_replacement <- debugger_outer_caller <- nested_direct_calls_for_the_debugger
# expect: return half: every chain right
# expect: === back in the caller ===
# expect: chain: debugger_inner_caller <- debugger_outer_replacement <- livepatch trampoline -> debugger_outer_replacement <- debugger_outer_caller <- nested_direct_calls_for_the_debugger
# expect: === end ===
# reject: WRONG
# reject: livepatch_handler
set pagination off
set confirm off
python
import re

def klp_names():
    """Frame labels from #0 outwards, without paths (`livepatch trampoline -> C` for a trampoline)."""
    frame, names = gdb.newest_frame(), []
    while frame is not None and len(names) < 10:
        names.append(re.sub(r"[\w\[\]]+::", "", frame_label(frame)))
        frame = frame.older()
    return names

def klp_chain():
    names = klp_names()
    print("caller: " + (names[1] if len(names) > 1 else "none"))
    print("chain: " + " <- ".join(names))

# The chain in the inner trampoline, from A2 outwards.
OUTER = ["debugger_inner_caller", "debugger_outer_replacement",
         "livepatch trampoline -> debugger_outer_replacement", "debugger_outer_caller",
         "nested_direct_calls_for_the_debugger"]
INNER = ["livepatch trampoline -> debugger_inner_replacement"] + OUTER

def klp_step_through(last, half):
    """stepi through the inner trampoline from where it stopped to offset `last` - 4,
    checking the chain at each instruction (the last one is not stepped)."""
    wrong = 0
    while True:
        offset = int(gdb.parse_and_eval("$pc")) - SLOT
        names = klp_names()
        good = names[:len(INNER)] == INNER
        wrong += not good
        print("offset %d chain: %s%s" % (offset, " <- ".join(names), "" if good else "  WRONG"))
        if offset + 4 >= last:
            break
        gdb.execute("stepi", to_string=True)
    print("%s: %s" % (half, "every chain right" if wrong == 0 else "%d WRONG" % wrong))
end
# A2 runs inside C1: the outer call's frame is on the livepatch stack from here on.
break kernel::tests::debugger::debugger_inner_caller
continue
echo === the inner site ===\n
python SLOT = site_branch("kernel::tests::debugger::debugger_inner_original")
python print("site branches to a trampoline: %s" % ("yes" if trampoline_slot(SLOT or 0) else "no (0x%x)" % (SLOT or 0)))
ftrace-sites kernel::tests::debugger::debugger_inner_original
python WINDOWS = TRAMPOLINE_POOL[2]
python gdb.Breakpoint("*0x%x" % SLOT)
continue
echo === entry half ===\n
# From the first instruction to the bl (offset returned - 4): before and after the push.
python klp_step_through(WINDOWS[2], "entry half")
stepi
echo === inside the replacement ===\n
python klp_chain()
echo === bt ===\n
bt
echo === lp-stack ===\n
lp-stack
python gdb.Breakpoint("*0x%x" % (SLOT + WINDOWS[2]))
continue
echo === return half ===\n
python klp_chain()
# From the return point to the blr (offset end - 4): before and after the pop.
python klp_step_through(WINDOWS[4], "return half")
stepi
echo === back in the caller ===\n
python klp_chain()
echo === end ===\n
