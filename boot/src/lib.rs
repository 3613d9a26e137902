//! The first instructions of the kernel: from the firmware's hand-off to Rust.
//!
//! Where it runs: at the first byte of the image (0x400000), in real mode, on
//! the firmware's stack, with the CPU big-endian and in 32-bit mode (MSR is
//! 0x2000 under SLOF and 0 under VOF). Registers from the firmware: r3/r4 =
//! initrd start/size, r5 = Open Firmware client interface entry.
//!
//! What it does: switches the CPU to little-endian (a trampoline that reads as
//! a branch in either endianness), sets 64-bit mode, points r2 at the kernel
//! TOC, clears BSS, moves to the boot thread's THREAD_SIZE-aligned stack, points
//! r13 at CPU 0's per-CPU area and calls the kernel's `boot_main`.
//!
//! `secondary_start` is where every other CPU begins, started by RTAS
//! `start-cpu` (the kernel's `arch::smp`): the same endian and 64-bit steps,
//! then r2, r13 at that CPU's own area, r1 on its idle stack, and the
//! kernel's `secondary_main`.

#![no_std]
#![forbid(unsafe_op_in_unsafe_fn)]

use core::cell::UnsafeCell;
use core::mem::{offset_of, size_of};
use core::sync::atomic::AtomicU64;
use portable::instruction::{self, spr};

/// Size and alignment of every kernel thread stack; `thread_info` sits at its base.
pub const THREAD_SIZE: usize = 32 * 1024;
/// Most CPUs the kernel brings up.
pub const MAX_CPUS: usize = 8;
/// ELFv2 minimal stack frame: back chain, CR save, LR save, TOC save.
pub const MINIMAL_FRAME: usize = 32;
/// ELFv2: where a function saves its return address, in its caller's frame.
pub const LINK_SAVE: usize = 16;

/// Data private to one CPU, reached through r13 at all times in the kernel.
///
/// r13 is the ELFv2 thread pointer, which compiled code never allocates, so it
/// stays valid in every function and in the ftrace and exception stubs.
#[repr(C)]
pub struct PerCpu {
    /// The kernel TOC pointer, for stubs entered while r2 holds another TOC.
    pub toc: u64,
    /// This CPU's number (0 is the boot CPU).
    pub cpu_id: u64,
    /// Address of the running thread's `thread_info` (0 before threads exist).
    pub current_thread: u64,
    /// Exception entry spills registers here before it has a stack frame.
    pub exception_scratch: [u64; 4],
    /// Top of this CPU's emergency stack, used when a thread's stack overflowed.
    pub emergency_stack: u64,
    /// STACK_END_MAGIC, so that `livepatch_handler` loads it in one instruction.
    pub stack_end_magic: u64,
    /// The CPU's interrupt server number: its hardware id for RTAS and XICS
    /// (from the device tree; the CPU cannot read its own PIR here).
    pub interrupt_server: u64,
    /// Nonzero once the CPU runs the kernel: set by the CPU itself.
    pub online: AtomicU64,
    /// What other CPUs leave for this one (the IPI messages and the call-function slot).
    pub mailbox: Mailbox,
    /// Counters kept by this CPU, read by others (the `cpus` command, tests).
    pub statistics: CpuStatistics,
    /// Times this CPU was seen outside every read-side section of the
    /// kernel's lock-free tables (a switch, idle, an interrupt taken in
    /// preemptible code): a grace period waits until each other CPU's count
    /// has moved. Written by the CPU itself, read by others.
    pub quiescent_states: AtomicU64,
    /// While this CPU handles an IPI: the address of the registers it
    /// interrupted (`PtRegs`), else 0. Read by the calls it runs, and by a
    /// CPU that stopped the machine (`smp::stop_machine`).
    pub interrupted_registers: AtomicU64,
}

/// The IPI mailbox of one CPU. One sender at a time posts a call (the
/// kernel's `arch::smp` serialises them); the CPU itself takes it.
#[repr(C)]
pub struct Mailbox {
    /// Pending IPI messages, one bit each: senders set bits, then raise the
    /// IPI; the CPU's IPI handler takes them all at once.
    pub messages: AtomicU64,
    /// The function of the posted call (`fn(u64)`), valid while `posted` > `completed`.
    pub function: AtomicU64,
    /// Its argument.
    pub argument: AtomicU64,
    /// The CPU that posted it, woken by an IPI when the call is done.
    pub caller: AtomicU64,
    /// Calls posted so far; a sender increments it after writing the fields above.
    pub posted: AtomicU64,
    /// Calls completed so far; the CPU sets it to `posted` after running one.
    pub completed: AtomicU64,
}

/// Per-CPU counters, written by their CPU only.
#[repr(C)]
pub struct CpuStatistics {
    /// IPIs this CPU has taken.
    pub ipis: AtomicU64,
    /// Calls (`smp_call_function`) it has run.
    pub calls: AtomicU64,
    /// Decrementer interrupts it has taken.
    pub ticks: AtomicU64,
    /// 1 while the CPU is ceded to the hypervisor in its idle loop, 0 otherwise.
    pub ceded: AtomicU64,
}

/// The per-CPU areas, indexed by CPU number.
#[repr(C, align(128))]
pub struct CpuAreas(pub UnsafeCell<[PerCpu; MAX_CPUS]>);

// Safety: a CPU writes the plain fields of another CPU's area only before
// that CPU starts (the boot CPU fills it, then a barrier and RTAS start-cpu);
// from then on each CPU writes only its own plain fields, and the fields other
// CPUs read or write while it runs (`online`, `mailbox`, `statistics`) are atomics.
unsafe impl Sync for CpuAreas {}

/// An area before its CPU is set up: every field 0.
const fn empty_area() -> PerCpu {
    PerCpu {
        toc: 0,
        cpu_id: 0,
        current_thread: 0,
        exception_scratch: [0; 4],
        emergency_stack: 0,
        stack_end_magic: 0,
        interrupt_server: 0,
        online: AtomicU64::new(0),
        mailbox: Mailbox {
            messages: AtomicU64::new(0),
            function: AtomicU64::new(0),
            argument: AtomicU64::new(0),
            caller: AtomicU64::new(0),
            posted: AtomicU64::new(0),
            completed: AtomicU64::new(0),
        },
        statistics: CpuStatistics {
            ipis: AtomicU64::new(0),
            calls: AtomicU64::new(0),
            ticks: AtomicU64::new(0),
            ceded: AtomicU64::new(0),
        },
        quiescent_states: AtomicU64::new(0),
        interrupted_registers: AtomicU64::new(0),
    }
}

/// All CPUs' per-CPU areas.
pub static CPU_AREAS: CpuAreas = CpuAreas(UnsafeCell::new([const { empty_area() }; MAX_CPUS]));

/// A THREAD_SIZE-aligned stack; the linker script places the boot thread's first in BSS.
#[repr(C, align(32768))]
pub struct ThreadStack(pub UnsafeCell<[u8; THREAD_SIZE]>);

// Safety: only the boot thread uses the boot stack.
unsafe impl Sync for ThreadStack {}

/// Stack of the boot thread, which becomes the kernel's first thread.
#[unsafe(link_section = ".bss.boot_stack")]
pub static BOOT_STACK: ThreadStack = ThreadStack(UnsafeCell::new([0; THREAD_SIZE]));

const _: () = assert!(core::mem::align_of::<ThreadStack>() == THREAD_SIZE);

unsafe extern "C" {
    /// The kernel's Rust entry: never returns.
    fn boot_main(client_interface: u64, initrd_start: u64, initrd_size: u64) -> !;
    /// The kernel's Rust entry on every other CPU, with its CPU number: never returns.
    fn secondary_main(cpu: u64) -> !;
    /// Where a secondary CPU starts (the assembly below): the address RTAS
    /// `start-cpu` is given, with the CPU number as its r3.
    pub fn secondary_start();
    /// Where the outermost frame of a thread the boot code started resumes:
    /// after `_start`'s call of `boot_main` and after `secondary_start`'s
    /// call of `secondary_main` (for the reliable stack walk).
    pub static boot_entry_returns: [u64; 2];
}

/// A big-endian CPU decodes these little-endian-stored words as the byte-swapped instruction.
const fn big_endian(word: u32) -> u32 {
    word.swap_bytes()
}

unsafe extern "C" {
    /// Calls the Open Firmware client interface at `entry` with the big-endian
    /// argument block `arguments` (service name, argument and result counts,
    /// then the cells), in the firmware's 32-bit big-endian mode, and returns
    /// its status. Interrupts must be off. Only for boot-time use.
    pub fn enter_openfirmware(arguments: u64, entry: u64) -> i64;
}

/// The frame `enter_openfirmware` pushes while the firmware runs: the ELFv2
/// header, then what firmware code (which keeps only the low halves of
/// non-volatile registers) would lose.
#[repr(C)]
struct FirmwareFrame {
    header: [u64; MINIMAL_FRAME / 8],
    /// The kernel TOC.
    toc: u64,
    /// r13 (the per-CPU pointer) to r31.
    nonvolatile: [u64; 19],
    /// The kernel's MSR (64-bit, little-endian).
    msr: u64,
    /// CR: its fields cr2-cr4 are non-volatile in ELFv2, and the firmware
    /// need not keep them (Linux's enter_prom saves it too). It also pads
    /// the frame to a multiple of 16 bytes: ELFv2 keeps r1 16-byte aligned at
    /// every call, and the firmware is called from this frame.
    condition: u64,
}

const _: () = assert!(size_of::<PerCpu>() < 0x8000, "mulli takes a 16-bit signed size");

/// Bytes `enter_openfirmware` pushes.
const FIRMWARE_FRAME: usize = core::mem::size_of::<FirmwareFrame>();
const _: () = assert!(FIRMWARE_FRAME.is_multiple_of(16), "r1 must stay 16-byte aligned during the firmware call");

core::arch::global_asm!(
    r#"
    # fixup_endian: run little-endian from here on, whatever the CPU's current
    # endianness. Stored little-endian, `tdi 0,0,0x48` reads as `b .+8` on a
    # big-endian CPU, which lands in the byte-swapped sequence that flips
    # MSR[LE] with rfid; a little-endian CPU runs tdi (never traps) and
    # branches over it. Clobbers r10, r11 (and MSR[EE,RI] when it flips).
    .macro fixup_endian
    tdi 0, 0, 0x48
    b 191f
    .long {be_mfmsr_r11}          # r11 = MSR
    .long {be_xori_r11_le}        # r11 ^= MSR[LE]
    .long {be_li_r10_0}           # r10 = 0
    .long {be_mtmsrd_r10}         # MSR[EE,RI] = 0
    .long {be_bcl_next}           # LR = address of the next word
    .long {be_mflr_r10}           # r10 = that address
    .long {be_addi_r10_20}        # r10 = label 191 (5 words further)
    .long {be_mtsrr0_r10}         # SRR0 = label 191
    .long {be_mtsrr1_r11}         # SRR1 = MSR with LE flipped
    .long {be_rfid}               # continue at label 191, little-endian
191:
    .endm

    # set_64bit_mode: MSR[SF] = 1. Clobbers r11, r12.
    .macro set_64bit_mode
    mfmsr   11                    # r11 = MSR
    li      12, 1
    rldicr  12, 12, 63, 0         # r12 = MSR[SF] (bit 0, value 1 << 63)
    or      11, 11, 12            # r11 = MSR | SF
    mtmsrd  11                    # MSR = r11
    isync
    .endm

    .section .text.boot, "ax"
    .globl _start
    .type _start, @function
_start:
    fixup_endian
    set_64bit_mode

    # Keep the firmware's arguments in non-volatile registers.
    mr      14, 3                 # r14 = initrd start
    mr      15, 4                 # r15 = initrd size
    mr      16, 5                 # r16 = client interface entry

    # r2 = .TOC., computed from our own address (link address = run address).
    bcl     20, 31, 2f
2:  mflr    12                    # r12 = address of label 2
    addis   2, 12, (.TOC. - 2b)@ha
    addi    2, 2, (.TOC. - 2b)@l  # r2 = .TOC.

    # Clear BSS, 8 bytes at a time (both ends are 4096-aligned).
    addis   3, 2, __bss_start@toc@ha
    addi    3, 3, __bss_start@toc@l   # r3 = start of BSS
    addis   4, 2, __bss_end@toc@ha
    addi    4, 4, __bss_end@toc@l     # r4 = end of BSS
    li      0, 0
3:  cmpld   3, 4
    bge     4f
    std     0, 0(3)               # *r3 = 0
    addi    3, 3, 8               # r3 += 8
    b       3b
4:
    # r1 = top of the boot thread's stack, less one minimal frame whose back
    # chain is 0 (the end of every backtrace).
    addis   1, 2, {boot_stack}@toc@ha
    addi    1, 1, {boot_stack}@toc@l  # r1 = base of the boot stack
    addi    1, 1, {stack_top}         # r1 = top - MINIMAL_FRAME
    std     0, 0(1)               # back chain = 0

    # r13 = CPU 0's per-CPU area; record the kernel TOC and the CPU number in it.
    addis   13, 2, {cpu_areas}@toc@ha
    addi    13, 13, {cpu_areas}@toc@l # r13 = &CPU_AREAS[0]
    std     2, {percpu_toc}(13)       # per_cpu.toc = r2
    std     0, {percpu_cpu_id}(13)    # per_cpu.cpu_id = 0

    mr      3, 16                 # arg 1: client interface entry
    mr      4, 14                 # arg 2: initrd start
    mr      5, 15                 # arg 3: initrd size
    bl      {boot_main}           # never returns
.Lboot_main_called:               # the boot thread's outermost frame resumes here (boot_entry_returns)
5:  b       5b
    .size _start, . - _start

    # secondary_start: every CPU but the boot CPU, started by RTAS start-cpu.
    #
    # On entry (QEMU's start-cpu): real mode, big-endian, MSR = SF | ME,
    # r3 = this CPU's number (the argument the boot CPU passed), every other
    # register undefined. The boot CPU has filled CPU_AREAS[r3] first: toc,
    # cpu_id, current_thread (the base of this CPU's idle stack, whose
    # thread_info is ready), emergency_stack, stack_end_magic.
    # On the call to secondary_main: little-endian, 64-bit, r2 = kernel TOC,
    # r13 = &CPU_AREAS[r3], r1 = top of the idle stack less one minimal
    # frame whose back chain is 0, r3 = the CPU number. A number at or past
    # MAX_CPUS stops the CPU here, in a loop of H_CONFER (0xe4, to every
    # other CPU: r4 = -1), which gives its time away with interrupts still
    # off (H_CEDE would enable them, and this CPU has no r13 for a handler).
    .section .text.boot, "ax"
    .globl secondary_start
    .type secondary_start, @function
secondary_start:
    fixup_endian
    set_64bit_mode
    clrldi  3, 3, 32              # r3 = CPU number (a 32-bit RTAS argument)
    cmpldi  3, {max_cpus}
    bge-    7f                    # no area for it: stop

    # r2 = .TOC., computed from our own address, as _start does.
    bcl     20, 31, 6f
6:  mflr    12                    # r12 = address of label 6
    addis   2, 12, (.TOC. - 6b)@ha
    addi    2, 2, (.TOC. - 6b)@l  # r2 = .TOC.

    # r13 = &CPU_AREAS[r3].
    addis   13, 2, {cpu_areas}@toc@ha
    addi    13, 13, {cpu_areas}@toc@l # r13 = &CPU_AREAS[0]
    mulli   12, 3, {percpu_size}      # r12 = r3 * size_of::<PerCpu>()
    add     13, 13, 12                # r13 = &CPU_AREAS[r3]

    # r1 = top of the idle stack (current_thread is its base), less one
    # minimal frame whose back chain is 0.
    ld      1, {percpu_current}(13)   # r1 = base of the idle stack
    addi    1, 1, {stack_top}         # r1 = top - MINIMAL_FRAME
    li      0, 0
    std     0, 0(1)               # back chain = 0
    bl      {secondary_main}      # secondary_main(r3 = CPU number): never returns
.Lsecondary_main_called:          # an idle thread's outermost frame resumes here (boot_entry_returns)
7:  li      3, 0xe4               # r3 = H_CONFER
    li      4, -1                 # r4 = every other CPU
    li      5, 0                  # r5 = no dispatch count
    sc      1
    b       7b
    .size secondary_start, . - secondary_start

    # Where the outermost frame of the threads the boot code starts (the boot
    # thread, and every other CPU's idle thread) resumes: the reliable stack
    # walk's end. As data, so the labels stay local and backtraces keep
    # naming these addresses _start and secondary_start.
    .pushsection .rodata.boot_entry_returns, "a"
    .balign 8
    .globl boot_entry_returns
    .type boot_entry_returns, @object
boot_entry_returns:
    .quad   .Lboot_main_called
    .quad   .Lsecondary_main_called
    .size boot_entry_returns, . - boot_entry_returns
    .popsection

    # enter_openfirmware(r3 = argument block, r4 = firmware entry) -> r3
    #
    # On entry: 64-bit little-endian kernel, interrupts off, real mode.
    # Calls the firmware in 32-bit big-endian mode with r3 = argument block and
    # LR = a return point that begins with fixup_endian. Firmware code keeps
    # only the low halves of non-volatile registers, so r2 and r13-r31 are kept
    # whole in our frame. On exit: r3 = firmware status; r0, r4-r12, CTR, XER,
    # CR0-1, CR5-7 clobbered; everything else preserved.
    # The frame is a FirmwareFrame (offsets from offset_of!); its size is a
    # multiple of 16 (checked at compile time), so r1 stays 16-byte aligned
    # while the firmware runs on it. Interrupts are off throughout: nothing
    # can observe the half-saved frame or the big-endian 32-bit stretch.
    .text
    .globl enter_openfirmware
    .type enter_openfirmware, @function
enter_openfirmware:
    mflr    0
    std     0, {link_save}(1)     # LR save slot of the caller's frame
    stdu    1, -{frame}(1)        # push a FirmwareFrame (16-byte multiple), back chain = r1
    std     2, {toc}(1)           # frame.toc = r2
    std     13, {nonvolatile}+0*8(1)  # frame.nonvolatile[0] = r13
    std     14, {nonvolatile}+1*8(1)  # frame.nonvolatile[1] = r14
    std     15, {nonvolatile}+2*8(1)  # frame.nonvolatile[2] = r15
    std     16, {nonvolatile}+3*8(1)  # frame.nonvolatile[3] = r16
    std     17, {nonvolatile}+4*8(1)  # frame.nonvolatile[4] = r17
    std     18, {nonvolatile}+5*8(1)  # frame.nonvolatile[5] = r18
    std     19, {nonvolatile}+6*8(1)  # frame.nonvolatile[6] = r19
    std     20, {nonvolatile}+7*8(1)  # frame.nonvolatile[7] = r20
    std     21, {nonvolatile}+8*8(1)  # frame.nonvolatile[8] = r21
    std     22, {nonvolatile}+9*8(1)  # frame.nonvolatile[9] = r22
    std     23, {nonvolatile}+10*8(1)  # frame.nonvolatile[10] = r23
    std     24, {nonvolatile}+11*8(1)  # frame.nonvolatile[11] = r24
    std     25, {nonvolatile}+12*8(1)  # frame.nonvolatile[12] = r25
    std     26, {nonvolatile}+13*8(1)  # frame.nonvolatile[13] = r26
    std     27, {nonvolatile}+14*8(1)  # frame.nonvolatile[14] = r27
    std     28, {nonvolatile}+15*8(1)  # frame.nonvolatile[15] = r28
    std     29, {nonvolatile}+16*8(1)  # frame.nonvolatile[16] = r29
    std     30, {nonvolatile}+17*8(1)  # frame.nonvolatile[17] = r30
    std     31, {nonvolatile}+18*8(1)  # frame.nonvolatile[18] = r31
    mfcr    11
    std     11, {condition}(1)    # frame.condition = CR (cr2-cr4 are the caller's)
    mfmsr   11
    std     11, {msr}(1)          # frame.msr = the kernel's MSR
    li      12, 1
    rldicr  12, 12, 63, 0         # r12 = MSR[SF]
    ori     12, 12, 1             # r12 = MSR[SF] | MSR[LE]
    andc    11, 11, 12            # r11 = MSR without SF and LE: 32-bit big-endian
    mtsrr0  4                     # SRR0 = firmware entry
    mtsrr1  11                    # SRR1 = firmware MSR
    bcl     20, 31, 6f
6:  mflr    12                    # r12 = address of label 6
    addi    12, 12, 7f - 6b       # r12 = return point
    mtlr    12                    # the firmware returns there with blr
    rfid                          # enter the firmware
7:  fixup_endian                  # back big-endian: become little-endian again
    set_64bit_mode
    clrldi  1, 1, 32              # r1 is below 4 GiB: drop any stale high half
    ld      2, {toc}(1)           # r2 = frame.toc
    ld      13, {nonvolatile}+0*8(1)  # r13 = frame.nonvolatile[0]
    ld      14, {nonvolatile}+1*8(1)  # r14 = frame.nonvolatile[1]
    ld      15, {nonvolatile}+2*8(1)  # r15 = frame.nonvolatile[2]
    ld      16, {nonvolatile}+3*8(1)  # r16 = frame.nonvolatile[3]
    ld      17, {nonvolatile}+4*8(1)  # r17 = frame.nonvolatile[4]
    ld      18, {nonvolatile}+5*8(1)  # r18 = frame.nonvolatile[5]
    ld      19, {nonvolatile}+6*8(1)  # r19 = frame.nonvolatile[6]
    ld      20, {nonvolatile}+7*8(1)  # r20 = frame.nonvolatile[7]
    ld      21, {nonvolatile}+8*8(1)  # r21 = frame.nonvolatile[8]
    ld      22, {nonvolatile}+9*8(1)  # r22 = frame.nonvolatile[9]
    ld      23, {nonvolatile}+10*8(1)  # r23 = frame.nonvolatile[10]
    ld      24, {nonvolatile}+11*8(1)  # r24 = frame.nonvolatile[11]
    ld      25, {nonvolatile}+12*8(1)  # r25 = frame.nonvolatile[12]
    ld      26, {nonvolatile}+13*8(1)  # r26 = frame.nonvolatile[13]
    ld      27, {nonvolatile}+14*8(1)  # r27 = frame.nonvolatile[14]
    ld      28, {nonvolatile}+15*8(1)  # r28 = frame.nonvolatile[15]
    ld      29, {nonvolatile}+16*8(1)  # r29 = frame.nonvolatile[16]
    ld      30, {nonvolatile}+17*8(1)  # r30 = frame.nonvolatile[17]
    ld      31, {nonvolatile}+18*8(1)  # r31 = frame.nonvolatile[18]
    ld      11, {msr}(1)          # r11 = frame.msr
    mtmsrd  11                    # the kernel's MSR again
    isync
    extsw   3, 3                  # r3 = the firmware's 32-bit status, sign-extended
    ld      0, {condition}(1)
    mtcrf   0xff, 0               # CR = frame.condition
    addi    1, 1, {frame}         # pop our frame
    ld      0, {link_save}(1)
    mtlr    0                     # LR = our caller
    blr
    .size enter_openfirmware, . - enter_openfirmware
    "#,
    be_mfmsr_r11 = const big_endian(instruction::mfmsr(11)),
    be_xori_r11_le = const big_endian(instruction::xor_immediate(11, 11, 1)),
    be_li_r10_0 = const big_endian(instruction::load_immediate(10, 0)),
    be_mtmsrd_r10 = const big_endian(instruction::mtmsrd(10, 1)),
    be_bcl_next = const big_endian(instruction::BCL_NEXT),
    be_mflr_r10 = const big_endian(instruction::mfspr(10, spr::LR)),
    be_addi_r10_20 = const big_endian(instruction::add_immediate(10, 10, 20)),
    be_mtsrr0_r10 = const big_endian(instruction::mtspr(spr::SRR0, 10)),
    be_mtsrr1_r11 = const big_endian(instruction::mtspr(spr::SRR1, 11)),
    be_rfid = const big_endian(instruction::RFID),
    boot_stack = sym BOOT_STACK,
    stack_top = const THREAD_SIZE - MINIMAL_FRAME,
    cpu_areas = sym CPU_AREAS,
    percpu_toc = const offset_of!(PerCpu, toc),
    percpu_cpu_id = const offset_of!(PerCpu, cpu_id),
    boot_main = sym boot_main,
    max_cpus = const MAX_CPUS,
    percpu_size = const size_of::<PerCpu>(),
    percpu_current = const offset_of!(PerCpu, current_thread),
    secondary_main = sym secondary_main,
    frame = const FIRMWARE_FRAME,
    link_save = const LINK_SAVE,
    toc = const offset_of!(FirmwareFrame, toc),
    nonvolatile = const offset_of!(FirmwareFrame, nonvolatile),
    msr = const offset_of!(FirmwareFrame, msr),
    condition = const offset_of!(FirmwareFrame, condition),
);
