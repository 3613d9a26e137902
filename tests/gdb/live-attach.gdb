# gdb attaches to the kernel of `cargo xtask run` while its shell waits:
# a breakpoint in a module that is not loaded yet resolves when `cargo xtask
# patch load` brings it over the channel, `hello` stops there with a
# backtrace through livepatch_handler or a trampoline to the shell, names without crate
# hashes; after `detach` the kernel goes on answering the shell.
# Run by `cargo xtask test` (xtask/src/gdb_test.rs).
# session: attach
# on: === waiting for the module ===
# A second kernel would take the sockets over: `cargo xtask gdb` refuses to boot one.
# do: fails gdb --batch tests/gdb/boot.gdb => a kernel is running already (`cargo xtask run`, pid
# QEMU serves one gdb at a time: a second one is refused at once, and
# (below) the first still stops, and the kernel still runs after it detaches.
# do: fails gdb --attach --batch tests/gdb/boot.gdb => gdb is attached to this kernel already (`cargo xtask gdb --attach`, pid
# do: patch load greeting
# do: type hello
# on: [Inferior 1 (process 1) detached]
# do: console hello from the greeting patch module
# do: type klp list
# do: console greeting [enabled]
# expect: Breakpoint 1 (greeting_replacement) pending.
# expect: === waiting for the module ===
# expect: klp: symbols of module greeting added
# expect: Breakpoint 1, 
# expect: in greeting_replacement ()
# expect: === bt ===
# expect: #0 
# expect: in greeting_replacement ()
# expect: #1 
# The patched call goes through livepatch_handler during the transition and
# through a direct-call trampoline once the patch is final: either path.
# expect: in livepatch
# expect: #2 
# expect: kernel::shell::hello
# expect: === klp-list ===
# expect: greeting [enabled]
# expect: kernel::shell::greeting -> 0x
# expect: greeting_replacement
# expect: === kthreads ===
# The shell's thread (id 0, main) is the current one (*) on whichever CPU
# it runs (it is not pinned); the idle thread of each CPU is listed too,
# with its CPU.
# expect: *    0 
# expect:  main 
# expect:    0 idle 
# expect:    1 idle/1 
# expect: === info threads ===
# QEMU's gdbstub shows each vCPU as a gdb thread: both CPUs of the boot.
# expect: Thread 1.1 (CPU#0
# expect: Thread 1.2 (CPU#1
# expect: === info line ===
# expect: starts at address 0x
# expect: <kernel::shell::greeting>
# expect: === end ===
# expect: [Inferior 1 (process 1) detached]
# No crate hash (`kernel[325dce8376e66eba]::shell`) anywhere.
# reject: ]::
set pagination off
set confirm off
set breakpoint pending on
break greeting_replacement
echo === waiting for the module ===\n
continue
echo === bt ===\n
bt
echo === klp-list ===\n
klp-list
echo === kthreads ===\n
kthreads
echo === info threads ===\n
info threads
echo === info line ===\n
info line kernel::shell::greeting
echo === end ===\n
detach
