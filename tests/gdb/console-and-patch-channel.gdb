# The kernel under `cargo xtask gdb` has a console (`cargo xtask console`)
# and the patch channel: with a breakpoint set before the module exists, the
# module is loaded over the channel (`cargo xtask patch load`), `hello` is
# typed into the console, and gdb stops in the module's replacement.
# Run by `cargo xtask test` (xtask/src/gdb_test.rs).
# session: gdb
# on: === running ===
# do: console Type 'help' for the commands.
# do: patch load greeting
# do: console klp: module 'greeting' loaded
# do: type hello
# expect: Breakpoint 2 (greeting_replacement) pending.
# expect: === running ===
# expect: klp: symbols of module greeting added
# expect: Breakpoint 2, 
# expect: in greeting_replacement ()
# expect: === bt ===
# expect: greeting_replacement
# livepatch_handler during the transition, a direct-call trampoline once final.
# expect: in livepatch
# expect: kernel::shell::hello
# expect: === end ===
set pagination off
set confirm off
set breakpoint pending on
break greeting_replacement
echo === running ===\n
continue
echo === bt ===\n
bt
echo === end ===\n
