"""gdb support for the klp kernel: threads, livepatch stacks, patches, ftrace sites,
patch-module symbols, and backtraces through livepatch_handler and the direct-call
trampolines.

Loaded by `cargo xtask gdb` (or `source gdb/kernel.py`). It reads the kernel's
fixed-layout debug anchor, `klp_debug_anchor` (kernel/src/debug.rs), as plain
memory, so it does not depend on how Rust lays out the kernel's collections.

Commands: kthreads, lp-stack [THREAD], klp-list, ftrace-sites [GLOB].

Names are shown as the source spells them (`kernel::shell::greeting`), without
the crate hash that the linker's v0-mangled symbols carry
(`kernel[325dce8376e66eba]::shell::greeting`).
"""

import fnmatch
import os
import re
import struct

import gdb
from gdb.FrameDecorator import FrameDecorator
from gdb.unwinder import Unwinder, register_unwinder

ANCHOR_VERSION = 6
MAX_THREADS, MAX_PATCHES, MAX_FUNCTIONS, MAX_MODULES, MAX_SECTIONS, MAX_OBJECTS = 64, 16, 16, 8, 48, 4
HEADER_WORDS = 16                      # magic .. site_entry_size
LONGEST_THREAD_NAME = 512             # bytes read of a thread's name (they are whole up to this)
PATCH_FUNCTIONS_END = 48 + MAX_FUNCTIONS * 16  # name, state, count, functions; then the details
PATCH_SIZE = PATCH_FUNCTIONS_END + 3 * 8 + MAX_OBJECTS * 32 + 8
MODULE_SIZE = 32 + 4 * 8 + MAX_SECTIONS * 40
STACK_END_MAGIC = 0x57AC6E9D
NOP = 0x60000000
STATE_NAME_SIZE = 16                  # each ThreadState name in the anchor, NUL-padded
TRANSITION_TEXT = 1024                # the transition's status text in the anchor, NUL-terminated
PATCH_STATES = {1: "unpatched", 2: "patched"}   # thread_info.patch_state during a transition
PATCH_DIRECTORY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "patches")


def read(address, size):
    return bytes(gdb.selected_inferior().read_memory(address, size))


def word(address):
    return struct.unpack("<Q", read(address, 8))[0]


def text(raw):
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def address_of(name):
    """The address of a linker symbol, whatever the current language."""
    language = gdb.parameter("language")
    gdb.execute("set language c", to_string=True)
    try:
        return int(gdb.parse_and_eval("(unsigned long)&%s" % name))
    finally:
        gdb.execute("set language %s" % language, to_string=True)


def livepatch_handler_window():
    """(pushed, popped): the addresses in livepatch_handler from which the call's
    own livepatch frame is complete, and from which it is gone again. Read from
    the kernel's `livepatch_handler_windows`, which the assembler computes from
    labels (kernel/src/arch/ppc64/livepatch.rs), so no offset is typed here."""
    start = address_of("livepatch_handler")
    table = address_of("livepatch_handler_windows")
    return start + word(table), start + word(table + 8)


CRATE_HASH = re.compile(r"\[[0-9a-f]+\]::")


def without_crate_hashes(name):
    """`kernel[325dce8376e66eba]::shell::greeting` -> `kernel::shell::greeting`: the
    demangler prints each crate's disambiguator of a v0 symbol; the source never does."""
    return CRATE_HASH.sub("::", name)


def symbol_name(address):
    """`name + offset` of the function (or data) at address, from the ELF
    symbol table, without crate hashes; None if no symbol covers it."""
    answer = gdb.execute("info symbol 0x%x" % address, to_string=True).strip()
    if answer.startswith("No symbol"):
        return None
    return without_crate_hashes(answer.split(" in section")[0])


def symbolize(address):
    if address == 0:
        return "0"
    name = symbol_name(address)
    return "0x%x %s" % (address, name) if name else "0x%x" % address


class Anchor:
    """The kernel's debug anchor, read afresh."""

    def __init__(self):
        self.address = address_of("klp_debug_anchor")
        header = read(self.address, HEADER_WORDS * 8)
        if header[:8] != b"KLPDEBUG":
            raise gdb.GdbError("klp_debug_anchor: bad magic (is this the klp kernel?)")
        words = struct.unpack("<%dQ" % (HEADER_WORDS - 1), header[8:])
        (self.version, self.thread_size, self.livepatch_stack_offset, self.livepatch_frame_size,
         self.info_livepatch_sp, self.info_thread_id, self.info_saved_sp, self.info_state, self.info_name_address,
         self.info_name_length, self.info_cpu, self.module_generation, self.sites, self.site_count, self.site_entry_size) = words
        if self.version != ANCHOR_VERSION:
            raise gdb.GdbError("klp_debug_anchor version %d, script knows %d" % (self.version, ANCHOR_VERSION))
        self.threads_at = self.address + HEADER_WORDS * 8
        self.patches_at = self.threads_at + MAX_THREADS * 8
        self.modules_at = self.patches_at + MAX_PATCHES * PATCH_SIZE
        state_count_at = self.modules_at + MAX_MODULES * MODULE_SIZE
        self.state_count = word(state_count_at)
        self.state_names_at = state_count_at + 8
        after_names = self.state_names_at + self.state_count * STATE_NAME_SIZE
        self.info_patch_state = word(after_names)
        self.transition_at = after_names + 8

    def state_name(self, value):
        """The kernel's name of ThreadState `value` (kept in the anchor, in value order)."""
        if value >= self.state_count:
            return "?"
        return text(read(self.state_names_at + value * STATE_NAME_SIZE, STATE_NAME_SIZE))

    def threads(self):
        bases = struct.unpack("<%dQ" % MAX_THREADS, read(self.threads_at, MAX_THREADS * 8))
        return [base for base in bases if base]

    def thread(self, base):
        return {
            "base": base,
            "id": word(base + self.info_thread_id),
            "state": self.state_name(word(base + self.info_state)),
            "name": self.thread_name(base),
            "livepatch_sp": word(base + self.info_livepatch_sp),
            "saved_sp": word(base + self.info_saved_sp),
            "cpu": word(base + self.info_cpu),
            "patch_state": word(base + self.info_patch_state),
        }

    def thread_name(self, base):
        """The whole name the kernel gave the thread ("" if none yet)."""
        address, length = word(base + self.info_name_address), word(base + self.info_name_length)
        if address == 0 or length == 0:
            return ""
        try:
            return read(address, min(length, LONGEST_THREAD_NAME)).decode("utf-8", "replace")
        except gdb.MemoryError:
            return "? (name at 0x%x unreadable)" % address

    def livepatch_frames(self, base):
        """(address, toc, link, marker) from the oldest frame to the newest."""
        start = base + self.livepatch_stack_offset
        top = word(base + self.info_livepatch_sp)
        frames = []
        address = start
        while address + self.livepatch_frame_size <= top and len(frames) < 4096:
            toc, link, marker = struct.unpack("<QQQ", read(address, 24))
            frames.append((address, toc, link, marker))
            address += self.livepatch_frame_size
        return frames

    def transition(self):
        """The transition in progress and its blockers, as `klp status` says it ("" if none)."""
        raw = read(self.transition_at, TRANSITION_TEXT)
        return raw.split(b"\0", 1)[0].decode("utf-8", "replace")

    def patches(self):
        result = []
        for index in range(MAX_PATCHES):
            raw = read(self.patches_at + index * PATCH_SIZE, PATCH_SIZE)
            state, count = struct.unpack("<QQ", raw[32:48])
            if state == 0:
                continue
            pairs = struct.unpack("<%dQ" % (2 * MAX_FUNCTIONS), raw[48:PATCH_FUNCTIONS_END])
            functions = [(pairs[2 * n], pairs[2 * n + 1]) for n in range(min(count, MAX_FUNCTIONS))]
            stack_order, replace, object_count = struct.unpack("<QQQ", raw[PATCH_FUNCTIONS_END:PATCH_FUNCTIONS_END + 24])
            names_at = PATCH_FUNCTIONS_END + 24
            (patched,) = struct.unpack("<Q", raw[names_at + MAX_OBJECTS * 32:names_at + MAX_OBJECTS * 32 + 8])
            objects = [(text(raw[names_at + 32 * n:names_at + 32 * (n + 1)]), bool(patched >> n & 1))
                       for n in range(min(object_count, MAX_OBJECTS))]
            result.append((text(raw[:32]), state == 2, functions,
                           {"stack_order": stack_order, "replace": bool(replace), "objects": objects}))
        return result

    def modules(self):
        result = []
        for index in range(MAX_MODULES):
            raw = read(self.modules_at + index * MODULE_SIZE, MODULE_SIZE)
            address, size, toc, count = struct.unpack("<QQQQ", raw[32:64])
            if address == 0:
                continue
            sections = []
            for number in range(min(count, MAX_SECTIONS)):
                entry = raw[64 + number * 40: 64 + (number + 1) * 40]
                sections.append((text(entry[:32]), struct.unpack("<Q", entry[32:])[0]))
            result.append({"name": text(raw[:32]), "address": address, "size": size, "toc": toc, "sections": sections})
        return result


def current_base(anchor):
    return int(gdb.parse_and_eval("$r1")) & ~(anchor.thread_size - 1)


def running_stacks(anchor):
    """{stack base: r1} of what each CPU runs now. QEMU's gdbstub shows each vCPU
    as a gdb thread (`info threads`); a kernel thread running on a CPU has its
    live r1 in that vCPU's registers, not in thread_info's saved one."""
    selected, frame = gdb.selected_thread(), gdb.selected_frame()
    running = {}
    try:
        for vcpu in gdb.selected_inferior().threads():
            vcpu.switch()
            stack_pointer = int(gdb.newest_frame().read_register("r1"))
            running[stack_pointer & ~(anchor.thread_size - 1)] = stack_pointer
    finally:
        # Back to the CPU and the frame the user had selected.
        selected.switch()
        frame.select()
    return running


class KernelThreads(gdb.Command):
    """kthreads: every kernel thread with the CPU it runs on (or ran on last), its state, stack use,
    livepatch stack depth, and during a livepatch transition its patch state; `*` marks the thread of the CPU gdb has selected (`info threads`: one
    gdb thread per CPU)."""

    def __init__(self):
        super().__init__("kthreads", gdb.COMMAND_STATUS)

    def invoke(self, argument, from_tty):
        anchor = Anchor()
        bases = anchor.threads()
        if not bases:
            print("no kernel threads yet: the kernel lists them once its scheduler starts "
                  "(thread::init, called from boot_main)")
            return
        current = current_base(anchor)
        running = running_stacks(anchor)
        threads = [anchor.thread(base) for base in bases]
        width = max([len("name")] + [len(thread["name"]) for thread in threads])
        print("  %4s %3s %-*s %-9s %11s %9s  %s" % ("id", "cpu", width, "name", "state", "stack used", "lp depth",
                                                  "r1"))
        for base, thread in zip(bases, threads):
            depth = (thread["livepatch_sp"] - base - anchor.livepatch_stack_offset) // anchor.livepatch_frame_size
            marker = "*" if base == current else " "
            if base in running or thread["state"] != "running":
                stack_pointer = running.get(base, thread["saved_sp"])
                used = "%d" % (base + anchor.thread_size - stack_pointer if stack_pointer else 0)
                where = "0x%x" % stack_pointer
            else:
                # Running, but its CPU's r1 is elsewhere (an IPI or a report
                # on the emergency stack): its saved r1 would be stale.
                used, where = "-", "(its CPU is on an emergency stack)"
            patch = PATCH_STATES.get(thread["patch_state"])
            where += "  [%s]" % patch if patch else ""
            print("%s %4d %3d %-*s %-9s %11s %9d  %s" % (marker, thread["id"], thread["cpu"], width, thread["name"],
                                                      thread["state"], used, depth, where))
        if current not in bases:
            print("(r1 0x%x is on none of these stacks: an exception's emergency stack, or the boot stack "
                  "before the scheduler)" % int(gdb.parse_and_eval("$r1")))


class LivepatchStack(gdb.Command):
    """lp-stack [THREAD]: the livepatch stack frames of a thread (default: the current one):
saved TOC, saved return address, and whether the marker is intact."""

    def __init__(self):
        super().__init__("lp-stack", gdb.COMMAND_STACK)

    def invoke(self, argument, from_tty):
        anchor = Anchor()
        base = current_base(anchor)
        if argument.strip():
            wanted = int(argument.strip(), 0)
            matches = [b for b in anchor.threads() if anchor.thread(b)["id"] == wanted]
            if not matches:
                raise gdb.GdbError("no thread %d" % wanted)
            base = matches[0]
        if word(base + anchor.info_livepatch_sp) == 0:
            raise gdb.GdbError("no livepatch stack at 0x%x: its thread_info is not set up yet (the boot stack's "
                               "is, in thread::init, called from boot_main)" % base)
        frames = anchor.livepatch_frames(base)
        thread = anchor.thread(base)
        print("thread %d (%s): %d livepatch frame(s)" % (thread["id"], thread["name"], len(frames)))
        for number, (address, toc, link, marker) in enumerate(reversed(frames)):
            state = "marker ok" if marker == STACK_END_MAGIC else "MARKER CORRUPT (0x%x)" % marker
            print("  #%d at 0x%x: toc 0x%x, lr %s, %s" % (number, address, toc, symbolize(link), state))


class LivepatchList(gdb.Command):
    """klp-list: patches with their functions (old and new addresses) and state, the transition in
    progress with the threads that block it and why, and loaded modules."""

    def __init__(self):
        super().__init__("klp-list", gdb.COMMAND_STATUS)

    def invoke(self, argument, from_tty):
        anchor = Anchor()
        if not anchor.patches() and not anchor.modules():
            print("no live patches and no modules: the kernel registers its built-in patch during boot "
                  "(livepatch::register_builtin, called from boot_main); modules come over the patch channel")
            return
        for name, enabled, functions, details in sorted(anchor.patches(), key=lambda patch: patch[3]["stack_order"]):
            print("%s [%s]" % (name, "enabled" if enabled else "disabled"))
            objects = ", ".join("%s (%s)" % (object, "patched" if patched else "not patched")
                                for object, patched in details["objects"])
            print("  stack_order %d, replace %s; objects: %s" % (details["stack_order"],
                                                               "yes" if details["replace"] else "no", objects))
            for old, new in functions:
                print("  %s -> %s" % (symbolize(old), symbolize(new)))
        transition = anchor.transition()
        if transition:
            print(transition, end="")
        for module in anchor.modules():
            print("module %s: %d bytes at 0x%x, TOC 0x%x, %d sections" % (module["name"], module["size"],
                                                                        module["address"], module["toc"],
                                                                        len(module["sections"])))


def ftrace_sites(anchor):
    """(site word address, function name) of every ftrace entry site."""
    for index in range(anchor.site_count):
        entry = read(anchor.sites + index * anchor.site_entry_size, 32)
        function, address, name_pointer, name_length = struct.unpack("<QQQQ", entry)
        yield address, read(name_pointer, min(name_length, 512)).decode("utf-8", "replace")


def site_branch(name):
    """Where the ftrace site of function `name` branches now (a trampoline
    slot for a direct-called patched function), or None (off, or no such site)."""
    for address, site_name in ftrace_sites(Anchor()):
        if site_name == name:
            return branch_target(address, struct.unpack("<I", read(address, 4))[0])
    return None


def frame_label(frame):
    """A frame's function as `bt` shows it: a trampoline as `livepatch trampoline -> C`."""
    return trampoline_label(int(frame.pc())) or frame.name() or "?"


class FtraceSites(gdb.Command):
    """ftrace-sites [GLOB]: every ftrace entry site (or those whose function matches GLOB) and what it calls now."""

    def __init__(self):
        super().__init__("ftrace-sites", gdb.COMMAND_STATUS)

    def invoke(self, argument, from_tty):
        anchor = Anchor()
        if anchor.sites == 0:
            print("no ftrace site table yet: the kernel records it when it validates its entry sites "
                  "(trace::init, called from boot_main)")
            return
        pattern = argument.strip() or "*"
        shown = 0
        for address, name in ftrace_sites(anchor):
            if not fnmatch.fnmatchcase(name, pattern):
                continue
            instruction = struct.unpack("<I", read(address, 4))[0]
            if instruction == NOP:
                calls = "off"
            elif instruction >> 26 == 18 and instruction & 3 == 1:
                target = branch_target(address, instruction)
                label = trampoline_label(target)
                calls = "bl 0x%x %s" % (target, label) if label else "bl " + symbolize(target)
            else:
                calls = "word 0x%08x (not a site state!)" % instruction
            print("  0x%x %-40s %s" % (address, name, calls))
            shown += 1
        print("%d of %d sites" % (shown, anchor.site_count))


class ModuleSymbols:
    """Adds and removes patch-module symbol files as modules come and go."""

    def __init__(self):
        self.loaded = {}        # name -> first section address given to add-symbol-file
        self.generation = None

    def refresh(self):
        try:
            anchor = Anchor()
        except (gdb.error, gdb.MemoryError):
            return
        if anchor.module_generation == self.generation:
            return
        self.generation = anchor.module_generation
        present = {module["name"]: module for module in anchor.modules()}
        for name in [name for name in self.loaded if name not in present]:
            gdb.execute("remove-symbol-file -a 0x%x" % self.loaded.pop(name), to_string=True)
        for name, module in present.items():
            if name in self.loaded:
                continue
            path = os.path.join(PATCH_DIRECTORY, name + ".o")
            if not os.path.exists(path) or not module["sections"]:
                print("klp: no object file %s for module %s" % (path, name))
                continue
            text_sections = [s for s in module["sections"] if s[0].startswith(".text")] or module["sections"]
            first = text_sections[0]
            arguments = " ".join("-s %s 0x%x" % (section, address) for section, address in module["sections"]
                                 if section != first[0])
            gdb.execute("add-symbol-file %s 0x%x -s %s 0x%x %s" % (path, first[1], first[0], first[1], arguments),
                        to_string=True)
            self.loaded[name] = first[1]
            print("klp: symbols of module %s added from %s" % (name, path))


MODULE_SYMBOLS = ModuleSymbols()


def module_event_entry():
    """Where the kernel's calls enter klp_debug_module_event: its ELFv2 local
    entry, which `cargo xtask gdb` reads from the symbol's st_other and passes
    as $klp_module_event (a `bl` within the kernel skips the global entry's
    TOC setup, so a breakpoint there would be hit only if that setup is empty).
    Without it (this file sourced by hand), the global entry, after checking
    that the function has no TOC setup there (addis r2,r12,...)."""
    entry = gdb.convenience_variable("klp_module_event")
    if entry is not None:
        return int(entry)
    address = address_of("klp_debug_module_event")
    if struct.unpack("<I", read(address, 4))[0] >> 16 == 0x3C4C:
        return address + 8
    return address


class ModuleEvent(gdb.Breakpoint):
    """Silent breakpoint on klp_debug_module_event: refresh module symbols, keep running."""

    def __init__(self):
        super().__init__("*0x%x" % module_event_entry(), gdb.BP_BREAKPOINT, internal=True)
        self.silent = True

    def stop(self):
        MODULE_SYMBOLS.refresh()
        return False


class FrameId:
    """A frame identity for create_unwind_info (gdb 13 takes any object whose
    sp and pc attributes are gdb.Values; gdb 14 added gdb.unwinder.FrameId)."""

    def __init__(self, sp, pc):
        self.sp = sp
        self.pc = pc


LINK_OFFSET = 8                       # LivepatchFrame: toc, link, marker (as livepatch_frames reads it)


def store_doubleword(source, base, displacement):
    """The word of `std source, displacement(base)`."""
    return 62 << 26 | source << 21 | base << 16 | (displacement & 0xFFFC)


class LivepatchCode:
    """A stretch of frameless livepatch code that calls a replacement C for
    the caller A: livepatch_handler, or a direct-call trampoline (a slot of
    the pool `livepatch_trampolines`, all made from one template, so one set
    of offsets serves every slot). Offsets are from the code's first byte:

    - `occupied`: from here the call's livepatch frame is counted on the
      thread's livepatch stack (the instruction after the store of the
      raised livepatch_sp), so an outer call's frame is the next one down;
    - `linked`: from here the frame holds A's return address (the
      instruction after `std 0, link(11)`); before it the return address is
      in `entry_register` (LR for livepatch_handler; r0 for a trampoline,
      whose LR is the word after B's site);
    - `pushed`, `popped`: the kernel's window labels; from `popped` on the
      frame is gone and LR and r2 are A's again.

    `pushed` and `popped` come from the kernel's window tables; `occupied`
    and `linked` are found by reading the code before `pushed` for the two
    stores, so no offset is typed here."""

    def __init__(self, start, pushed, popped, end, entry_register, anchor):
        self.pushed, self.popped, self.end, self.entry_register = pushed, popped, end, entry_register
        words = struct.unpack("<%dI" % (pushed // 4), read(start, pushed))
        frame = anchor.livepatch_frame_size

        def after(word):
            if word not in words:
                raise gdb.GdbError("klp: no %08x before offset %d of the code at 0x%x" % (word, pushed, start))
            return 4 * words.index(word) + 4

        self.occupied = after(store_doubleword(11, 12, anchor.info_livepatch_sp))
        self.linked = after(store_doubleword(0, 11, LINK_OFFSET - frame))

    def consumes(self, offset):
        """Whether the call's frame is on the livepatch stack at `offset`."""
        return self.occupied <= offset < self.popped

    def link_in_frame(self, offset):
        return self.linked <= offset < self.popped


def trampoline_pool():
    """(start, end, windows, slot size) of the direct-call trampoline pool,
    windows as the kernel's `livepatch_trampoline_windows` (pushed, call,
    returned, popped, end: offsets from a slot's start), the slot size from
    `klp_debug_trampoline_slot_size`; None for a kernel without a pool."""
    try:
        start, end = address_of("livepatch_trampolines"), address_of("livepatch_trampolines_end")
        table = address_of("livepatch_trampoline_windows")
        slot_size = word(address_of("klp_debug_trampoline_slot_size"))
    except gdb.error:
        return None
    return start, end, struct.unpack("<5Q", read(table, 40)), slot_size


TRAMPOLINE_POOL = None                 # (start, end, windows, slot size), set by install()


def branch_target(address, instruction):
    """Where `bl`/`b` at address goes, or None if the word is no relative branch."""
    if instruction >> 26 != 18 or instruction & 2:
        return None
    displacement = instruction & 0x03FFFFFC
    if displacement & 0x02000000:
        displacement -= 0x04000000
    return address + displacement


def trampoline_slot(pc):
    """(slot start, offset) of a pc in the trampoline pool, or None."""
    if TRAMPOLINE_POOL is None:
        return None
    start, end, _, slot_size = TRAMPOLINE_POOL
    if not start <= pc < end:
        return None
    return pc - (pc - start) % slot_size, (pc - start) % slot_size


def trampoline_replacement(slot):
    """The name of the replacement a trampoline calls, from its `bl` (the
    last call word); None for a freed slot (its entry half is `trap`)."""
    returned = TRAMPOLINE_POOL[2][2]
    branch = slot + returned - 4
    target = branch_target(branch, struct.unpack("<I", read(branch, 4))[0])
    if target is None:
        return None
    name = symbol_name(target)
    # The bl enters C's local entry (8 bytes in for a function with a TOC set-up).
    return name.split(" + ")[0] if name else "0x%x" % target


def trampoline_label(pc):
    """`livepatch trampoline -> C` for a pc in a trampoline slot, else None."""
    located = trampoline_slot(pc)
    if located is None:
        return None
    replacement = trampoline_replacement(located[0])
    return "livepatch trampoline -> %s" % (replacement or "? (freed slot)")


class LivepatchUnwinder(Unwinder):
    """Unwinds a frame stopped in livepatch_handler or in a direct-call
    trampoline. Its caller is the original caller A, with r1 unchanged;
    where A's return address and TOC are depends on where in the code the
    pc is (LivepatchCode):

    - before the call's own livepatch frame holds A's return address: in the
      entry register (LR, or r0 in a trampoline) and r2; the newest
      livepatch frame, if any, belongs to an outer patched call (or, once
      livepatch_sp is raised, to this one, not yet filled in);
    - from then until the pop (the return address of a replacement C, or
      just before the call of C): in this call's frame on the livepatch stack;
    - once it is popped: in LR and r2 again."""

    def __init__(self):
        super().__init__("klp livepatch_handler")
        anchor = Anchor()
        self.anchor_address = anchor.address
        self.start = address_of("livepatch_handler")
        self.end = address_of("livepatch_handler_end")
        pushed, popped = livepatch_handler_window()
        self.handler = LivepatchCode(self.start, pushed - self.start, popped - self.start, self.end - self.start,
                                     "lr", anchor)
        self.trampoline = None
        if TRAMPOLINE_POOL is not None:
            pushed, _, _, popped, end = TRAMPOLINE_POOL[2]
            template = address_of("livepatch_trampoline_template")
            self.trampoline = LivepatchCode(template, pushed, popped, end, "r0", anchor)
        # level -> whether that frame has a frame on the livepatch stack (every
        # real frame sniffed; inline frames are not, and never have one).
        self.consumes = {}

    def code_at(self, pc):
        """(start, LivepatchCode) of the livepatch code holding pc, or None."""
        if self.start <= pc < self.end:
            return self.start, self.handler
        located = trampoline_slot(pc)
        if located is not None and self.trampoline is not None and located[1] < self.trampoline.end:
            return located[0], self.trampoline
        return None

    def __call__(self, pending):
        # gdb sniffs a stack's frames in order, innermost first, whenever it
        # builds them afresh (a stop, a flushed frame cache): what was noted
        # for this level and outer ones belongs to an older stack. (No reset
        # on stop events: gdb may already have sniffed the first frames of
        # the new stack then, e.g. for `stepi`, and would not do it again.)
        level = pending.level()
        for known in [known for known in self.consumes if known >= level]:
            del self.consumes[known]
        pc = int(pending.read_register("pc"))
        found = self.code_at(pc)
        if found is None:
            self.consumes[level] = False
            return None
        start, code = found
        offset = pc - start
        pc_type = pending.read_register("pc").type
        sp = int(pending.read_register("r1"))
        frame_id = FrameId(pending.read_register("r1"), gdb.Value(start).cast(pc_type))
        self.consumes[level] = code.consumes(offset)
        unwind = pending.create_unwind_info(frame_id)
        unwind.add_saved_register("r1", pending.read_register("r1"))
        if not code.link_in_frame(offset):
            # A's return address is in a register and its TOC in r2.
            register = code.entry_register if offset < code.linked else "lr"
            unwind.add_saved_register("pc", gdb.Value(int(pending.read_register(register))).cast(pc_type))
            unwind.add_saved_register("r2", pending.read_register("r2"))
            return unwind
        anchor = Anchor()
        base = sp & ~(anchor.thread_size - 1)
        frames = anchor.livepatch_frames(base)
        # Each inner livepatch frame user took the newest one left: this one takes the next.
        index = len([known for known, took in self.consumes.items() if known < level and took])
        if index >= len(frames):
            return None
        _, toc, link, _ = frames[len(frames) - 1 - index]
        unwind.add_saved_register("pc", gdb.Value(link).cast(pc_type))
        unwind.add_saved_register("r2", gdb.Value(toc).cast(pending.read_register("r2").type))
        return unwind


class TrampolineFrame(FrameDecorator):
    """Names a frame in a trampoline slot after the replacement it calls."""

    def function(self):
        label = trampoline_label(self.inferior_frame().pc())
        return label or super().function()


class TrampolineFrames:
    """Frame filter: frames in the trampoline pool get TrampolineFrame's name in `bt`."""

    def __init__(self):
        self.name = "klp trampolines"
        self.priority = 100
        self.enabled = True

    def filter(self, frames):
        return (TrampolineFrame(frame) if trampoline_slot(frame.inferior_frame().pc()) else frame
                for frame in frames)


def install():
    # Addresses in x/i, info line and print as <kernel::shell::greeting+4>
    # (the name from the debug information), not as the mangled linker symbol.
    gdb.execute("set print asm-demangle on")
    # Data pointers print as plain addresses: gdb would name them from the
    # ELF symbol table, whose v0-mangled names carry the crate hash
    # (`<boot[414b8c07f2a64c9c]::CPU_AREAS+160>`). The same as `cargo xtask
    # gdb` passes on its command line, for a gdb that loads this file itself.
    gdb.execute("set print symbol off")
    KernelThreads()
    LivepatchStack()
    LivepatchList()
    FtraceSites()
    try:
        global TRAMPOLINE_POOL
        TRAMPOLINE_POOL = trampoline_pool()
        gdb.frame_filters["klp trampolines"] = TrampolineFrames()
        try:
            register_unwinder(None, LivepatchUnwinder(), replace=True)
        except gdb.GdbError as error:
            # The livepatch code no longer has the stores the unwinder looks for (LivepatchCode).
            print("klp: no livepatch unwinder: %s" % error)
        ModuleEvent()
    except gdb.error as error:
        print("klp: kernel symbols not loaded yet (%s); load the kernel, then source this file" % error)
    gdb.events.stop.connect(lambda event: MODULE_SYMBOLS.refresh())
    # Modules loaded before gdb attached: their symbols now, so that a
    # breakpoint in one resolves at once instead of staying pending.
    MODULE_SYMBOLS.refresh()


install()
