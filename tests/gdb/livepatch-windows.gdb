# Stops in livepatch_handler before the call's frame is pushed, in the
# replacement, and after the frame is popped, while an outer patched call's
# frame is on the livepatch stack; `bt` must name the real caller each time.
# Run by `cargo xtask test` (xtask/src/gdb_test.rs).
# Part of the test's name, as `cargo xtask test` takes it.
# test: nested_livepatched_calls_for_the
# expect: === before the push ===
# expect: caller: debugger_inner_caller
# expect: chain: livepatch_handler <- debugger_inner_caller <- debugger_outer_replacement <- livepatch_handler <- debugger_outer_caller <- nested_livepatched_calls_for_the_debugger
# expect: === inside the replacement ===
# expect: caller: livepatch_handler
# expect: chain: debugger_inner_replacement <- livepatch_handler <- debugger_inner_caller <- debugger_outer_replacement <- livepatch_handler <- debugger_outer_caller <- nested_livepatched_calls_for_the_debugger
# expect: === after the pop ===
# expect: caller: debugger_inner_caller
# expect: chain: livepatch_handler <- debugger_inner_caller <- debugger_outer_replacement <- livepatch_handler <- debugger_outer_caller <- nested_livepatched_calls_for_the_debugger
# expect: === end ===
set pagination off
set confirm off
python
def klp_chain():
    """Prints frame #1's function and the chain of function names from #0 outwards."""
    frame, names = gdb.newest_frame(), []
    while frame is not None and len(names) < 10:
        names.append((frame.name() or "?").split("::")[-1])
        frame = frame.older()
    print("caller: " + (names[1] if len(names) > 1 else "none"))
    print("chain: " + " <- ".join(names))
end
# A2 runs inside C1: the outer call's frame is on the livepatch stack from here on.
break kernel::tests::debugger::debugger_inner_caller
continue
python gdb.Breakpoint("*0x%x" % address_of("livepatch_handler"))
continue
echo === before the push ===\n
python klp_chain()
bt
break kernel::tests::debugger::debugger_inner_replacement
continue
echo === inside the replacement ===\n
python klp_chain()
python gdb.Breakpoint("*0x%x" % livepatch_handler_window()[1])
continue
echo === after the pop ===\n
python klp_chain()
bt
echo === end ===\n
