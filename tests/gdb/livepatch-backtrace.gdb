# Breaks in a replacement function from a separately loaded patch module and
# checks what gdb shows there; run by `cargo xtask test` (xtask/src/gdb_test.rs).
# test: kernel::tests::modules::module_replacement_runs_with_its_own_toc_and_the_caller_gets_its_toc_back
# The module's symbols were added when it loaded, so the pending breakpoint resolved.
# expect: symbols of module counter added
# expect: in counter_greeting
# The patch is final and nothing else traces greeting, so its site calls C
# through a direct-call trampoline; the backtrace goes from C through the
# trampoline, named after C, to the real caller A.
# expect: === bt ===
# expect: counter_greeting
# expect: in livepatch trampoline -> counter_greeting ()
# expect: greeting_caller
# expect: module_replacement_runs_with_its_own_toc
# expect: === lp-stack ===
# expect: 1 livepatch frame(s)
# expect: lr 0x
# expect: kernel::tests::modules::greeting_caller + 
# expect: marker ok
# expect: === klp-list ===
# expect: counter [enabled]
# expect: stack_order 2, replace no; objects: vmlinux (patched)
# expect: kernel::shell::greeting -> 0x
# expect: counter_greeting
# expect: === info symbol ===
# expect: counter_greeting in section .text.counter_greeting
# expect: === kthreads ===
# The test's thread, named after the whole test (not cut to a column or a buffer).
# expect: kernel::tests::modules::module_replacement_runs_with_its_own_toc_and_the_caller_gets_its_toc_back running
# expect: === ftrace-sites ===
# expect: kernel::shell::greeting
# expect: bl 0x
# expect: livepatch trampoline -> counter_greeting
# expect: === end ===
# No crate hash (`kernel[325dce8376e66eba]::tests`) anywhere: names as the source spells them.
# reject: ]::
# reject: livepatch_handler
set pagination off
set confirm off
set breakpoint pending on
break counter_greeting
continue
echo === bt ===\n
bt
echo === lp-stack ===\n
lp-stack
echo === klp-list ===\n
klp-list
echo === info symbol ===\n
info symbol counter_greeting
echo === kthreads ===\n
kthreads
echo === ftrace-sites ===\n
ftrace-sites *greeting*
echo === end ===\n
