# gdb attaches to the kernel of `cargo xtask run` after a module was loaded
# over the patch channel: the module's symbols are added when gdb attaches
# (not only at the next module event), so a breakpoint in it is set at once,
# not pending, and `hello` stops there.
# Run by `cargo xtask test` (xtask/src/gdb_test.rs).
# session: attach
# first: patch load greeting
# first: console klp: module 'greeting' loaded
# on: === waiting for hello ===
# do: type hello
# on: [Inferior 1 (process 1) detached]
# do: console hello from the greeting patch module
# expect: klp: symbols of module greeting added
# expect: Breakpoint 1 at 0x
# expect: === waiting for hello ===
# expect: Breakpoint 1, 
# expect: in greeting_replacement ()
# expect: === bt ===
# expect: #0 
# expect: in greeting_replacement ()
# expect: #1 
# livepatch_handler during the transition, a direct-call trampoline once final.
# expect: in livepatch
# expect: === end ===
# reject: pending
set pagination off
set confirm off
set breakpoint pending off
break greeting_replacement
echo === waiting for hello ===\n
continue
echo === bt ===\n
bt
echo === end ===\n
detach
