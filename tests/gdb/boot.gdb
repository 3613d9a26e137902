# `cargo xtask gdb` stops at boot_main itself (its local entry, which
# _start's call enters), not in the first function inlined into it; the
# helpers say why their tables are empty before the kernel has set them up.
# Run by `cargo xtask test` (xtask/src/gdb_test.rs).
# session: gdb
# expect: Temporary breakpoint 1, 
# expect: in kernel::boot_main (client_interface=
# expect: === bt ===
# Frame 0 is boot_main itself (not a function inlined into it, which would
# push boot_main to frame 1), called from _start.
# expect: #0  0x
# expect: in kernel::boot_main (client_interface=
# expect: #1  0x
# expect: in _start ()
# expect: === kthreads ===
# expect: no kernel threads yet: the kernel lists them once its scheduler starts
# expect: === ftrace-sites ===
# expect: no ftrace site table yet
# expect: === klp-list ===
# expect: no live patches and no modules
# expect: === lp-stack ===
# expect: no livepatch stack at 0x
# expect: === end ===
# reject: inlined into frame
set pagination off
set confirm off
echo === bt ===\n
bt
echo === frame ===\n
info frame
echo === kthreads ===\n
kthreads
echo === ftrace-sites ===\n
ftrace-sites
echo === klp-list ===\n
klp-list
echo === lp-stack ===\n
python
try:
    gdb.execute("lp-stack")
except gdb.error as error:
    print(error)
end
echo === end ===\n
