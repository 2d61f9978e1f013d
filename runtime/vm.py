"""The run loop: boot a kernel in ring 1 and run it to its end.

Virtual time
------------
`emu_start(..., count=N)` runs the guest in slices of N instructions. Virtual time
advances by `config.NS_PER_INSN` per instruction at the end of each slice, by
`config.NS_PER_EXIT` per exit, and jumps forward on HLT to the next timer event.
A slice never runs past the next device event, so a timer interrupt arrives after
the same instruction in every run: output and counts are reproducible. Wall-clock
time (`--timeout`) only decides when to give up, never what the guest sees.

Instructions of a slice cut short (isa-debug-exit, a stop) are read from
Unicorn's own counter (runtime/insncount.py).

Integration seam with the patch manager (issue 5)
--------------------------------------------------
`Vm(config, patcher=...)` takes any object of the `runtime.patching.Patcher`
protocol (default `NoPatcher`). The trap handler (runtime/traps.py) calls
(a) `patcher.on_trap(op)` after each trap of a sensitive site, (b)
`patcher.exit_at(address)` for every INT3 that is not the VMM's own, and runs
the returned `PatchExit.op` through the same emulator a trap of its class uses,
continuing at `PatchExit.resume`, (c) `patcher.to_guest_eip(eip)` to report
patch-memory addresses as guest sites (stats, stop reports, interrupt frames), and
(d) `patcher.resume_at(eip)` before continuing at an address it chose.
`RunConfig.patch` builds the patch manager for a run (`runtime.patching.attach`).
`Vm.machine.uc` and `Vm.cpu` give the patch manager's wiring access to guest
memory (patch memory is `bt.layout.PATCH_BASE`, mapped and supervisor-only).
The full contract is runtime/patching.py's docstring.

The VMM area guard
------------------
`Vm.guard` (runtime/guard.py) write-protects the VMM area but the state block's
patch-writable page, patched or not: guest stores there are dropped and counted in
`RunStats.vmm_writes`. It owns the engine's one write-protection hook; the patch
manager's code watch plugs into it. After every slice the run loop checks the virtual
flags word in the writable page (`VirtualCpu.check_vflags`, `RunStats.vflags_corrupted`).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from unicorn import UC_HOOK_INSN, UC_HOOK_INTR, UcError
from unicorn import unicorn_const as uconst
from unicorn.x86_const import UC_X86_INS_IN, UC_X86_INS_OUT, UC_X86_INS_SYSCALL, UC_X86_INS_SYSENTER

from bt import layout
from bt.errors import GuestStop, HostError, InternalError, Ring1Error, UsageError
from bt.infile import Unreadable, read_input
from runtime import config as cfg
from runtime import firmware
from runtime.boot import LOADER_CS, LOADER_DS, LOADER_GDT, LOADER_IDTR, load_kernel
from runtime.clock import BlockClock, CountClock, native_available
from runtime.codewatch import CodeWatch
from runtime.context import HANDLED, Ctx
from runtime.cpu import CR3, EIP, ESI, UnmappedPhys
from runtime.deliver import VEC_UD, Injector
from runtime.devices.disk import DiskImage
from runtime.devices.standard import StandardDevices, build_standard_bus
from runtime.devices.vga import TEXT_BASE, TEXT_WINDOW, render_screen
from runtime.emulate import EMULATORS
from runtime.emulate.crs import real_paging
from runtime.engine import HOOK_IN, HOOK_INTR, HOOK_OUT, hook_raw
from runtime.guard import KEEP_WRITERS, VmmGuard
from runtime.linuxboot import EntryState, LinuxImage, is_linux, load_linux
from runtime.machine import BOOT, STOP, Machine
from runtime.mmio import MmioExits
from runtime.paging import CR0_PG, CR0_WP, Mmu, PageFault
from runtime.patching import Patcher
from runtime.pcsync import PcSync
from runtime.relocate import Relocator
from runtime.segments import ShadowGdt
from runtime.shadowpd import REPLACED, UNCHANGED, ShadowPd
from runtime.stats import RunStats, process_age_ns
from runtime.tablewatch import DirectoryWatch, TableWatch
from runtime.terminal import Terminal
from runtime.traps import Traps
from runtime.vcpu import MSR_APIC_BASE, VirtualCpu

if TYPE_CHECKING:
    from patchmgr.manager import PatchManager
    from runtime.fastexit import FastExits
    from runtime.ring3.mode import Ring3

#: Unicorn errors that mean the guest went where no memory is.
_UNMAPPED = {
    uconst.UC_ERR_FETCH_UNMAPPED: "jump into unmapped memory",
    uconst.UC_ERR_READ_UNMAPPED: "read of unmapped memory",
    uconst.UC_ERR_WRITE_UNMAPPED: "write to unmapped memory",
    uconst.UC_ERR_FETCH_PROT: "fetch from non-executable memory",
    uconst.UC_ERR_INSN_INVALID: "unknown opcode",
    uconst.UC_ERR_EXCEPTION: "unhandled CPU exception",
}
#: A halted guest that sleeps through more timer events than this, and longer than
#: `HALT_NS` of virtual time, without an interrupt arriving stops the run (`Vm._halt`).
HALT_EVENTS = 64
HALT_NS = 60 * 10**9


@dataclass
class RunResult:
    #: The guest's isa-debug-exit status `(V << 1) | 1`, or None if it did not write it.
    exit_status: int | None
    stats: RunStats
    last_exits: list[tuple[str, str, int]] = field(default_factory=list)


class Bootable(Protocol):
    """What the VMM boots: `runtime.boot.BootImage`, or a raw image for tests and benchmarks."""

    @property
    def chunks(self) -> tuple[tuple[int, bytes], ...]: ...
    @property
    def entry(self) -> int: ...
    @property
    def eax(self) -> int: ...
    @property
    def ebx(self) -> int: ...
    def symbolize(self, addr: int) -> str: ...


@dataclass(frozen=True)
class RawImage:
    """Code and data at physical addresses, entered at `entry` like a plain ELF."""

    chunks: tuple[tuple[int, bytes], ...]
    entry: int
    eax: int = 0
    ebx: int = 0

    def symbolize(self, addr: int) -> str:
        return f"{addr:#x}"


#: What QEMU's multiboot loader leaves (bt.layout.LOADER_GDT_BASE, runtime/boot.py).
MULTIBOOT_ENTRY = EntryState(gdt_base=layout.LOADER_GDT_BASE, gdt=LOADER_GDT, cs=LOADER_CS, ds=LOADER_DS,
                             idtr=LOADER_IDTR, esp=layout.ENTRY_ESP, eflags=layout.ENTRY_EFLAGS)


def _load(config: cfg.RunConfig) -> Bootable:
    """The kernel of `config`, loaded the way its kind is booted: a bzImage or a Linux
    vmlinux with the Linux boot protocol (runtime/linuxboot.py), anything else as multiboot
    or plain ELF (runtime/boot.py)."""
    try:
        raw = read_input(config.kernel)
    except Unreadable:
        raw = b""                    # the loader below says what is wrong with the file
    if raw and is_linux(raw):
        if config.modules:
            raise UsageError(f"--module: {config.kernel} is a Linux kernel; it takes --initrd")
        image = load_linux(config.kernel, ram_size=config.ram_size, cmdline=config.cmdline,
                           initrd=config.initrd, data=raw)
        if image.header is not None and config.patch is not None and config.patch.enabled \
                and "nokaslr" not in config.cmdline.split():
            # Measured: without it Debian's kernel moves itself and runs no further than a loop
            # on a stale patch, with no output, until --timeout.
            raise UsageError("--cmdline: a Linux bzImage needs `nokaslr` when ring1 patches it: the patch "
                             "manager patches the kernel where it is linked and does not follow KASLR's "
                             "move (harmless for a kernel built without it; docs/linux.md)")
        return image
    if config.initrd is not None:
        raise UsageError(f"--initrd: {config.kernel} is not a Linux kernel (a bzImage or a vmlinux ELF); "
                         "a multiboot kernel takes --module")
    return load_kernel(str(config.kernel), config.cmdline, config.ram_size, config.modules, config.image_name)


class Vm:
    def __init__(self, config: cfg.RunConfig, patcher: Patcher | None = None,
                 image: Bootable | None = None) -> None:
        self.config = config
        self.boot: Bootable = image if image is not None else _load(config)
        disks = tuple(DiskImage(path, writable=config.disk_writable) for path in config.disks)
        self.machine = Machine(config.ram_size)
        self.cpu = self.machine.cpu
        self.vcpu = VirtualCpu(self.cpu)
        self.vcpu.reset()
        self.stats = RunStats()
        #: The C hook that takes quiet CLI/STI traps (runtime/fastexit.py), if the run has it.
        self._fast: FastExits | None = None
        self.patches: PatchManager | None = None
        #: The guest's mapping changed since deferred patches were last tried.
        self._mapping_changed = True
        area = self._area
        self.mmu = Mmu(self.cpu, self.vcpu.paging_regs, area,
                       vmm_store=lambda phys, size: self.guard.dropped(phys, size),
                       watched=lambda phys: self.guard.watched(phys),
                       ram_store=lambda phys, data: self.guard.store(phys, data))
        self.gdt = ShadowGdt(self.cpu.phys_write, self.mmu.read, self.machine.load_ldtr, area,
                             self.machine.set_guest_gdt_limit, ring=config.guest_ring)
        self.shadow = ShadowPd(self.machine.vmm_memory, self.machine.ram, area,
                               wp=lambda: bool(self.vcpu.cr(0) & CR0_WP))
        self.now_ns = 0
        self._exits_mark = 0
        #: True while Unicorn runs a slice (`clock` then adds the instructions run so far).
        self._in_slice = False
        #: STI's interrupt shadow (`_irq_shadow`): 2 armed by STI, 1 while the one guest
        #: instruction after it runs, 0 otherwise.
        self._shadow = 0
        self.devices: StandardDevices = build_standard_bus(
            config.serial, config.ram_size, self.clock, on_exit=self._on_exit, disks=disks,
            key_delay_ns=config.key_delay_ns, on_reset=self._on_reset)
        self.intc = self.devices.intc
        self.devices.lapic.base_msr = lambda: self.vcpu.msr[MSR_APIC_BASE]
        if config.keys:
            self.devices.kbd.type_text(config.keys)
        #: The host terminal as a keyboard (`RunConfig.terminal`), open while `run` runs.
        self.terminal = Terminal() if config.terminal else None
        self._reset = False
        self._deadline: float | None = None
        self.inject = Injector(self.machine, self.vcpu, self.mmu, self.gdt)
        #: `bt run --guest-ring 3`: the transitions and paging views ring 3 needs (runtime/ring3/).
        self.ring3: Ring3 | None = None
        if config.guest_ring == 3:
            from runtime.ring3.mode import Ring3
            self.ring3 = Ring3(self.machine, self.vcpu, self.mmu, self.gdt, self.inject, self.stats,
                               config.ring3_view, self._flush_tlb)
            self.inject.ring3 = self.ring3
        self.ctx = Ctx(m=self.machine, cpu=self.cpu, vcpu=self.vcpu, mmu=self.mmu, gdt=self.gdt,
                       bus=self.devices.bus, inject=self.inject, stats=self.stats,
                       on_halt=self._halt, on_vif_set=self._vif_set,
                       on_paging_change=self._paging_changed, shadow_fault=self._shadow_fault,
                       retry_deferred=self._retry_deferred,
                       in_patch=lambda a: (self.machine.vmm.in_patch_memory(a)
                                           or self.traps.patcher.resume_at(a) != a),
                       window_of=lambda a: self.traps.patcher.window_of(a),
                       clock=self.clock,
                       irq_waiting=self.intc.pending,
                       irq_deliverable=lambda: self.intc.pending() and self._deliverable(),
                       irq_shadow=self._irq_shadow)
        self.traps = Traps(self.ctx, patcher, config.last_exits, config.old_exception)
        if self.ring3 is not None:
            self.ring3.clear_latch_at_entry(self.boot.entry, self.traps.latch.clear)
        self.mmio = MmioExits(self.ctx, self.traps, self.devices.mmio)
        self.mmio.attach(self.machine.uc)
        self.relocator = Relocator(self.machine, self.shadow, self.gdt, self.stats,
                                   lambda: self.traps.patcher, pinned=config.vmm_base)
        uc_ = self.machine.uc
        # The block clock leaves EIP unsynced in IN/OUT hooks after a hook wrote EIP, which
        # runtime/pcsync.py makes up for; without that, Unicorn's count (which syncs it).
        self.traps.pcsync = PcSync(uc_)
        self.insn_clock: BlockClock | CountClock = (
            BlockClock(uc_, self._insns_between)
            if config.clock == "block" and native_available() and self.traps.pcsync.available
            else CountClock(uc_))
        self.traps.clock = self.insn_clock
        self._decoded: dict[tuple[int, int], int] = {}
        uc = self.machine.uc
        self._fast = self.traps.fast = self._fast_exits()
        if self._fast is None:
            hook_raw(uc, UC_HOOK_INTR, HOOK_INTR, self.traps.on_intr)
        hook_raw(uc, UC_HOOK_INSN, HOOK_IN, self.traps.on_in, UC_X86_INS_IN)
        hook_raw(uc, UC_HOOK_INSN, HOOK_OUT, self.traps.on_out, UC_X86_INS_OUT)
        uc.hook_add(UC_HOOK_INSN, self.traps.on_sysenter, None, 1, 0, UC_X86_INS_SYSENTER)
        uc.hook_add(UC_HOOK_INSN, self.traps.on_syscall, None, 1, 0, UC_X86_INS_SYSCALL)
        self.guard = VmmGuard(uc, self.cpu, self.stats, guest_eip=self._to_guest_eip, fail=self._hook_failed)
        self.guard.install()
        self.guard.defer = self.traps.defer_protect
        self.guard.stop_soon = self.insn_clock.stop_soon
        self.guard.after_protect = self.traps.unlatch
        self.tables = TableWatch(self.guard, self.gdt, self.mmu, self.stats, config.ram_size)
        self.directory = DirectoryWatch(self.guard, self._pde_written)
        #: Installed by the patch manager's `attach` (patched runs only).
        self.code = CodeWatch(uc, self.guard, self.mmu, self.stats, lambda: self.traps.patcher,
                              fail=self._hook_failed)
        # What the firmware leaves in low memory (BDA, EBDA, MP table, text screen), then the
        # kernel, which may overwrite it as under QEMU.
        for addr, data in firmware.low_memory(config.ram_size, tuple(d.sectors for d in disks)):
            self.cpu.phys_write(addr, data)
        for addr, data in self.boot.chunks:
            if addr + len(data) > config.ram_size:
                raise GuestStop("kernel does not fit in guest RAM", None,
                                f"{addr:#x}+{len(data):#x} > {config.ram_size:#x}")
            self.cpu.phys_write(addr, data)
        if self.ring3 is not None:
            self.ring3.plant_irets(config.kernel)
        self._loader_state()
        #: Why the run was asked to stop (`interrupt`), None while it runs on.
        self.interrupted: str | None = None
        #: Called after every slice, before the run loop looks at the devices.
        self.on_slice_end: list[Callable[[], None]] = []
        # Ring 3 runs unpatched: patch code sits on supervisor pages it could not run on.
        if patcher is None and config.patch is not None and self.ring3 is None:
            from runtime.patching import attach
            self.patches = attach(self, config.patch)   # the kernel is in memory: eager patches
            self.traps.patcher = self.patches
            self._mapping_changed = self._mapping_changed     # deferred patches now exist

    def _fast_exits(self) -> FastExits | None:
        """The fast exits where this run allows them (runtime/fastexit.py): the block clock
        (the C hook shares its state), the latch's live fields, the EIP-sync flag, ring 1
        (under --guest-ring 3 every exit needs the VMM's view switch), and a trap history no
        longer than the C side keeps."""
        from runtime.fastexit import RING, FastExits

        traps = self.traps
        fields = traps.exc.live_fields()
        flag = traps.pcsync.flag_address()
        if (not self.config.fast_exits or not isinstance(self.insn_clock, BlockClock)
                or self.ring3 is not None or fields is None or flag is None
                or self.config.last_exits > RING):
            return None
        return FastExits(self.machine.uc, traps.on_intr, self.insn_clock, fields, flag,
                         self.vcpu.vflags_address(), self.stats, traps.last,
                         lambda site, n: traps.patcher.count_traps(site, n), traps.latch.count_clears,
                         self.intc.pending, self._time_base)

    def _time_base(self) -> int:
        """`clock()` less the running slice's block-clock instructions (runtime/fastexit.py)."""
        assert isinstance(self.insn_clock, BlockClock)
        return (self.now_ns + (self.stats.exit_count - self._exits_mark) * cfg.NS_PER_EXIT
                - self.insn_clock.mark * cfg.NS_PER_INSN)

    @property
    def _mapping_changed(self) -> bool:
        return self._mapping_new

    @_mapping_changed.setter
    def _mapping_changed(self, on: bool) -> None:
        # While deferred patches wait for a trap at live code (`_retry_deferred`), every trap
        # goes through Python, which tries them.
        self._mapping_new = on
        if self._fast is not None:
            if on and self.patches is not None:
                self._fast.hold("mapping changed")
            else:
                self._fast.release("mapping changed")

    def interrupt(self, why: str) -> None:
        """Stop the run as soon as Unicorn returns (the end of the current translation block):
        a clean stop with the usual report, `GuestStop("interrupted (WHY)")`. Safe to call
        from a signal handler (bt run's Ctrl-C and SIGTERM): it only sets a flag the run loop
        checks between slices, and `emu_stop` is harmless when nothing runs."""
        self.interrupted = why
        self.machine.uc.emu_stop()

    def _loader_state(self) -> None:
        """The machine as the boot loader leaves it: QEMU's multiboot loader (bt.layout.
        LOADER_GDT_BASE: its GDT, CS 0x08 and the data segments 0x10, the real-mode IDTR,
        ESP and the arithmetic flags), or a Linux kernel's own setup code
        (runtime/linuxboot.py): the GDT in guest memory and shadowed, IDTR, TR, ESI, the PIC's
        masks; then BOOT enters the guest in ring 1 (`run`)."""
        state = self.boot.entry_state if isinstance(self.boot, LinuxImage) else MULTIBOOT_ENTRY
        base, limit = state.gdt_base, len(state.gdt) - 1
        self.cpu.phys_write(base, state.gdt)
        self.vcpu.set_table("gdtr", base, limit)
        self.vcpu.set_table("idtr", *state.idtr)
        self.vcpu.tr = state.tr
        self.gdt.load(base, limit)
        self.machine.prepare_entry(self.boot.entry, self.boot.eax, self.boot.ebx, state.esp,
                                   state.cs, state.ds, state.eflags, self.gdt.ring)
        self.cpu.write(ESI, state.esi)
        if state.pic_masks is not None:
            self.devices.pic.master.imr, self.devices.pic.slave.imr = state.pic_masks
        self._paging_changed()      # the CPU pages from the start, on the identity shadow

    # -- virtual time ---------------------------------------------------------------------------
    def clock(self) -> int:
        """Virtual ns now. In the middle of a slice (a device read, RDTSC, HLT) this counts the
        slice's instructions so far (runtime/clock.py `so_far`), so time runs as continuously
        as the instructions do: a guest polling the PIT and the TSC in a loop sees both
        advance with every iteration, not by a slice's worth at once when the slice ends
        (Linux's quick_pit_calibrate gave up on that)."""
        if self._fast is not None:
            self._fast.fold()
        now = self.now_ns + (self.stats.exit_count - self._exits_mark) * cfg.NS_PER_EXIT
        if self._in_slice:
            now += self.insn_clock.so_far() * cfg.NS_PER_INSN
        return now

    def _insns_between(self, start: int, end: int) -> int:
        """Guest instructions from `start` up to `end` in one block (runtime/clock.py)."""
        key = (start, end)
        n = self._decoded.get(key)
        if n is None:
            try:
                code = self.mmu.read(start, end - start, fetch=True)
            except PageFault:
                return 0
            n = sum(1 for _ in self.traps.cs_lite.disasm_lite(code, start))
            self._decoded[key] = n
        return n

    def _advance(self, insns: int) -> None:
        self.now_ns = self.clock() + insns * cfg.NS_PER_INSN
        self._exits_mark = self.stats.exit_count
        self.stats.guest_insns += insns

    def _on_exit(self, status: int) -> None:
        self.traps.exit_status = status
        if self._fast is not None:
            # Whichever exit wrote isa-debug-exit (an OUT, or patch code's hypercall for one),
            # every later exit of the block Unicorn finishes is inert (`Traps.on_intr`), in C too.
            self._fast.hold("the guest exited")

    def _on_reset(self) -> None:
        # The guest reset the machine (keyboard controller, port 0x92): QEMU -no-reboot ends
        # there; ring1 stops at the end of the instruction with that reason.
        self._reset = True
        self.machine.uc.emu_stop()

    def _to_guest_eip(self, eip: int) -> int:
        return self.traps.patcher.to_guest_eip(eip)

    def _hook_failed(self, err: BaseException) -> None:
        self.traps.error = err

    def _check_state(self) -> None:
        """The patch-writable state page is writable by the guest kernel too (runtime/guard.py):
        a flags word it damaged is counted and repaired rather than used. Once per slice."""
        bad = self.vcpu.check_vflags()
        if bad is not None:
            self.stats.vflags_corrupted += 1
            if len(self.stats.vflags_bad) < KEEP_WRITERS:
                self.stats.vflags_bad.append(bad)

    # -- callbacks for emulators ------------------------------------------------------------------
    def _deliverable(self) -> bool:
        return self.vcpu.user_if() if self.vcpu.guest_cpl() == 3 else self.vcpu.vif

    def _take_irq(self, return_eip: int) -> bool:
        intc = self.intc
        if not intc.pending():
            self.vcpu.pending = 0
            return False
        vector = intc.acknowledge()
        self.vcpu.pending = 0
        self.traps.inject(vector, return_eip, None, False)
        return True

    def _vif_set(self, eip: int) -> int | None:
        return HANDLED if self._take_irq(eip) else None

    def _irq_shadow(self) -> None:
        """STI with an interrupt waiting: the CPU takes it only after the next instruction
        (SDM STI, "interrupt shadow"; QEMU's HF_INHIBIT_IRQ). End this slice, run a slice of
        one instruction, then let the run loop deliver as after any slice."""
        self._shadow = 2
        self.machine.uc.emu_stop()

    def _halt(self, next_eip: int) -> int | None:
        if not self.vcpu.vif:
            raise GuestStop("guest halted with interrupts disabled", next_eip - 1)
        # The guest waits: what it wrote without a newline (a shell's prompt) is shown now,
        # as a terminal on a real UART would show it (the UART flushes only at newlines).
        self.devices.flush()
        stalled = 0
        slept = 0
        start = self.clock()
        while True:
            now = self.clock()
            self.devices.tick(now)
            if self._take_irq(next_eip):
                return HANDLED
            event = self.devices.next_event_ns(now)
            if event is None and self.terminal is not None:
                self._wait_for_terminal()
                continue
            if event is None:
                raise GuestStop("guest halted and no interrupt source is enabled", next_eip - 1)
            if event > now:
                # Timer events that raise no interrupt (the line masked or left in service at
                # the PIC) would be slept through for ever: only the halted guest could change
                # that. Another source may still wake it, so both bounds must be passed.
                slept += 1
                if slept > HALT_EVENTS and now - start > HALT_NS:
                    raise GuestStop("guest halted and no interrupt arrives (its timer's line is masked?)",
                                    next_eip - 1, f"{slept} timer events in {(now - start) / 1e9:.0f} s "
                                                  "of virtual time")
                if slept % 1024 == 0:
                    if self._deadline is not None and time.perf_counter() > self._deadline:
                        raise GuestStop("wall-clock timeout (--timeout)", next_eip - 1, "halted")
                    if self.interrupted is not None:
                        raise GuestStop(f"interrupted ({self.interrupted})", next_eip - 1, "halted")
                self.stats.idle_ns += event - now
                self.now_ns += event - now
                stalled = 0
            else:
                # Due now yet no interrupt came (a device bug or a masked line): do not spin.
                stalled += 1
                if stalled > 2:
                    raise GuestStop("guest halted and its timer event raises no interrupt", next_eip - 1)

    def _poll_terminal(self, timeout: float = 0.0) -> None:
        if self.terminal is not None:
            text = self.terminal.read(timeout)
            if text:
                self.devices.kbd.type_text(text)

    def _wait_for_terminal(self) -> None:
        """HLT with nothing timed to wake it but the host terminal: wait for a key in wall
        time (bounded by `--timeout`)."""
        if self._deadline is not None and time.perf_counter() > self._deadline:
            raise GuestStop("wall-clock timeout (--timeout)", self.cpu.read(EIP),
                            f"{self.stats.guest_insns} instructions")
        if self.interrupted is not None:           # Ctrl-C while the guest waits for a key
            raise GuestStop(f"interrupted ({self.interrupted})", self.cpu.read(EIP),
                            f"{self.stats.guest_insns} instructions")
        self._poll_terminal(0.1)

    def screen_text(self) -> str:
        """The 80x25 text screen as `bt run --screen` writes it (runtime/devices/vga.py)."""
        window = self.cpu.phys_read(TEXT_BASE, TEXT_WINDOW)
        return render_screen(self.devices.vga.visible_cells(window))

    def _area(self) -> layout.VmmArea:
        return self.machine.vmm

    def _paging_changed(self, linear: int | None = None) -> None:
        """CR0/CR3/CR4 written (`linear` None) or INVLPG `linear`: the shadow page directory
        follows the guest's (runtime/shadowpd.py), the VMM area moves if the guest now maps
        its slot (runtime/relocate.py), and Unicorn's caches are flushed."""
        self.traps.forget_code()
        self._mapping_changed = True
        cr0, cr3, cr4 = self.vcpu.paging_regs()
        if linear is not None:
            self.shadow.sync(linear)
        else:
            if cr0 & CR0_PG:
                self.shadow.load(cr3)
            else:
                self.shadow.load_flat()
            self.cpu.write(CR3, layout.VMM_SHADOW_PD)
            real_paging(self.cpu, cr0, cr4)
        if self.ring3 is not None:
            self.ring3.paging_changed(linear)
        # An INVLPG changes no directory entry (a store into the directory is followed by
        # `_pde_written`), so it can bring no new conflict with the VMM's slot but in that slot.
        if linear is None or (linear & 0xFFFFFFFF) >> 22 == self.machine.vmm.pde_index:
            self.relocator.check("INVLPG" if linear is not None else
                                 f"CR3 load ({cr3:#x})" if cr0 & CR0_PG else "paging off")
        self._flush_tlb()
        self.directory.follow(self.shadow.guest_pd, self.config.ram_size)
        self.tables.refresh(linear)
        # The CPU's view of memory changed under the running slice (page rights too): end it,
        # so that Unicorn's first fetch on the new view is made afresh in the next slice, with
        # old_exception clear (a fetch fault Unicorn drops here would turn the guest's next
        # fault into #DF: seen with usermode --eager, the first instruction after CR0.PG).
        # Not for INVLPG, which changes one page's translation and no mode: Linux flushes a
        # page 40,000 times while it boots, and a slice ended for each cost 3 s (issue 14).
        if linear is None:
            self.machine.uc.emu_stop()

    def _pde_written(self, index: int) -> None:
        """The guest stored into entry `index` of its current page directory
        (runtime/tablewatch.py `DirectoryWatch`): the shadow follows at once."""
        if index == self.machine.vmm.pde_index:
            self.relocator.check(f"store into page-directory entry {index}")
            return
        done = self.shadow.sync(index << 22)
        if self.ring3 is not None and self.ring3.pde_written(index):
            done = REPLACED
        if done == REPLACED:
            self._flush_tlb()
        if done != UNCHANGED:
            self._mapping_changed = True

    def _flush_tlb(self) -> None:
        self.stats.tlb_flushes += 1
        try:
            self.machine.uc.ctl(uconst.UC_CTL_TLB_FLUSH, uconst.UC_CTL_IO_WRITE)
        except UcError as err:
            raise InternalError(f"TLB flush failed: {err}") from err

    def _shadow_fault(self, linear: int) -> bool:
        """A #PF at `linear`: True if the shadow page directory was behind the guest's and
        now is not, or the guest touched its own mapping of the VMM's slot and the area
        moved out of its way; the instruction then runs again."""
        if self.shadow.guest_pd is None:
            return False
        if self.ring3 is not None and self.ring3.fault(linear):
            return True
        if self.machine.vmm.contains(linear) and self.shadow.conflict():
            self.relocator.check(f"#PF at {linear:#x}")
            return True
        done = self.shadow.fault(linear)
        if done == REPLACED:
            self._flush_tlb()
        if done != UNCHANGED:
            self._mapping_changed = True
        return done != UNCHANGED

    def _retry_deferred(self, eip: int | None = None) -> bool:
        """Patch the sites that waited for the guest to map them where its ELF says
        (`PatchManager.deferred`), once the mapping changed and the guest runs such code
        itself (`eip`, or where the CPU is): never while it runs code at another alias (boot
        code before paging). At the end of a slice, and at a trap (runtime/traps.py)."""
        patches = self.patches
        if patches is None or not self._mapping_changed:
            return False
        if eip is None:
            eip = self.cpu.read(EIP)
        if self.machine.vmm.contains(eip) or not patches.live(eip):
            return False
        self._mapping_changed = False
        patches.retry_deferred()
        return True

    # -- the loop -------------------------------------------------------------------------------
    def run(self) -> RunResult:
        config = self.config
        uc = self.machine.uc
        t_start = time.perf_counter()
        self.stats.startup_ns = process_age_ns()
        deadline = None if config.timeout is None else t_start + config.timeout
        self._deadline = deadline
        traps = self.traps
        try:
            if self.terminal is not None:
                self.terminal.open()
            pc = self._enter_guest()
            while traps.exit_status is None:
                if self.interrupted is not None:
                    raise GuestStop(f"interrupted ({self.interrupted})", self.cpu.read(EIP),
                                    f"{self.stats.guest_insns} instructions")
                count = self._slice_length()
                if count <= 0:
                    raise GuestStop("instruction budget exhausted (--max-insns)", self.cpu.read(EIP),
                                    f"{self.stats.guest_insns} instructions")
                if traps.steps.begin(pc, self.vcpu.ring1_cpl()):
                    count = 1       # ring 3 at a patched window: one instruction, the guest's bytes
                else:
                    pc = traps.patcher.resume_at(pc)
                # Between slices no exception is in flight. A slice ended by emu_stop in a hook
                # may still have tried to fetch the next instruction and raised a fault Unicorn
                # dropped but remembered in old_exception (seen when the guest's first
                # instruction after enabling paging faults; a hook that moved the VMM area or
                # sent ring 3 back to a patched window's guest bytes): the next would be #DF.
                if self.guard.apply_pending():
                    traps.stale_code = True     # rights changed inside a hook (runtime/guard.py)
                traps.drop_stale_code()
                how = self.insn_clock.begin(count)
                if self._fast is not None:
                    self._fast.begin_slice(traps.patcher)
                # After `begin`: making a block exact drops its translation, which makes Unicorn
                # walk the page tables for its address; under --guest-ring 3 a walk that misses
                # the kernel view (runtime/ring3/vtlb.py) leaves #PF in old_exception.
                traps.latch.clear()
                try:
                    self._in_slice = True
                    uc.emu_start(pc, self.machine.linear(STOP), **how)
                except UcError as err:
                    self._in_slice = False
                    traps.steps.end()
                    self._advance(self.insn_clock.end(self.cpu.read(EIP), True))
                    if traps.error is not None:
                        raise traps.error from None
                    if traps.exit_status is not None:
                        # The guest had written isa-debug-exit; Unicorn ran on to the end of
                        # its block (runtime/traps.py `guest_exited`), which is not the guest's.
                        break
                    traps.refuse_vm86()
                    if err.errno == uconst.UC_ERR_INSN_INVALID and self._invalid_opcode():
                        pc = self.cpu.read(EIP)
                        continue
                    if err.errno == uconst.UC_ERR_FETCH_PROT and self.code.resume():
                        pc = self.cpu.read(EIP)     # code seen for the first time, or rewritten: scanned
                        continue
                    raise self._unicorn_stop(err) from err
                self._in_slice = False
                traps.steps.end()
                ran = self.insn_clock.end(self.cpu.read(EIP), False)
                self._advance(ran)
                traps.finish_rep_element()
                resume = self.mmio.take_resume()
                if resume is not None:            # an MMIO store that ended the slice (runtime/mmio.py)
                    self.cpu.write(EIP, resume)
                self._check_state()
                if traps.error is not None:
                    raise traps.error
                traps.refuse_vm86()
                # The guest may have mapped the VMM's slot by writing its page directory,
                # with no CR3 load or INVLPG to tell: looked at once per slice.
                self.relocator.check("slice end")
                if self.ring3 is not None:
                    self.ring3.after_slice()
                self._retry_deferred()
                for hook in self.on_slice_end:
                    hook()
                if self._reset:
                    raise GuestStop("guest reset the machine (keyboard controller or port 0x92)",
                                    self.cpu.read(EIP))
                # A user-mode I/O instruction the guest's IOPL and TSS bitmap deny was
                # stopped in its hook: undo it and deliver its #GP(0) before anything else.
                traps.reflect_io_fault()
                if traps.exit_status is not None:
                    break
                self._poll_terminal()
                self.devices.tick(self.now_ns)
                pc = self.cpu.read(EIP)
                if self._shadow and (self._shadow == 2 or ran):
                    self._shadow -= 1      # armed: the next slice is the shadowed instruction
                if self._shadow == 0 and self.intc.pending():
                    if self._in_guest(pc) and self._deliverable():
                        self._take_irq(pc)
                        pc = self.cpu.read(EIP)
                    else:
                        self.vcpu.pending = 1
                if deadline is not None and time.perf_counter() > deadline:
                    raise GuestStop("wall-clock timeout (--timeout)", pc,
                                    f"{self.stats.guest_insns} instructions")
        except GuestStop as stop:
            if stop.eip is not None:
                stop.eip = self.traps.patcher.to_guest_eip(stop.eip)
            stop.last_exits = self._last_exits()
            raise
        except UnmappedPhys as err:
            outside = GuestStop("access to memory outside guest RAM", self._guest_eip(), str(err))
            outside.last_exits = self._last_exits()
            raise outside from err
        except Ring1Error:
            raise
        except Exception as err:
            if isinstance(err, UcError) and err.errno == uconst.UC_ERR_NOMEM:
                # Unicorn could not allocate (a host memory limit): not the guest, not a bug.
                raise HostError(f"Unicorn ran out of memory: {err}") from err
            # A bug in ring1 (possibly raised inside a Unicorn hook and re-raised here):
            # stop cleanly with where the guest was and what it did last.
            internal = InternalError(f"{type(err).__name__}: {err} (guest EIP {self._guest_eip():#010x})")
            internal.last_exits = self._last_exits()
            raise internal from err
        finally:
            self._in_slice = False
            if self.terminal is not None:
                self.terminal.close()
            self._check_state()
            self.devices.close()
            self.stats.unknown_ports = Counter(self.devices.bus.unknown)
            self.stats.virtual_ns = self.clock()
            self.stats.wall_ns = int((time.perf_counter() - t_start) * 1e9)
        return RunResult(traps.exit_status, self.stats, self._last_exits())

    def _last_exits(self) -> list[tuple[str, str, int]]:
        """The trap history for a report, with the fast exits' folded in first, in order."""
        if self._fast is not None:
            self._fast.fold()
        return list(self.traps.last)

    def _enter_guest(self) -> int:
        """Run BOOT (LTR, IRETD into ring 1) on its own, then shut the VMM's GDT slots; the
        guest's entry point, where the run loop starts."""
        self.insn_clock.begin(1 << 40)   # Unicorn's count stops BOOT; they are not the guest's
        try:
            self.machine.uc.emu_start(BOOT, self.machine.linear(STOP), count=2)
        except UcError as err:
            eip, cs = self.cpu.eip_cs()
            entered = cs & 3 == self.gdt.ring and eip == self.boot.entry
            if entered and err.errno == uconst.UC_ERR_FETCH_PROT and self.code.resume():
                # The IRETD worked and Unicorn fetched the entry point, on a page outside the
                # kernel ELF's code (a bzImage's decompressor at 1 MiB): scanned now
                # (runtime/codewatch.py), the run loop starts there.
                return self._entered()
            if entered and err.errno in _UNMAPPED:
                # The IRETD worked; the kernel's entry point is where nothing is (a bad e_entry):
                # the guest's stop, found by tests/fuzz.py, not a failure of BOOT.
                raise GuestStop(_UNMAPPED[err.errno], eip, f"the entry point; {err}") from err
            raise InternalError(f"BOOT could not enter ring 1: {err}") from err
        return self._entered()

    def _entered(self) -> int:
        self.insn_clock.end(self.cpu.read(EIP), False)
        eip, cs = self.cpu.eip_cs()
        if cs & 3 != self.gdt.ring or eip != self.boot.entry:
            raise InternalError(f"BOOT left the CPU at {cs:#x}:{eip:#x}, not in ring 1 at the entry point")
        self.machine.close_vmm_slots()
        return eip

    def _guest_eip(self) -> int:
        return self.traps.patcher.to_guest_eip(self.cpu.read(EIP))

    def _slice_length(self) -> int:
        count = 1 if self._shadow else self.config.slice_insns
        event = self.devices.next_event_ns(self.now_ns)
        if event is not None:
            count = min(count, max(1, -(-(event - self.now_ns) // cfg.NS_PER_INSN)))
        if self.config.max_insns is not None:
            count = min(count, self.config.max_insns - self.stats.guest_insns)
        return count

    def _in_guest(self, eip: int) -> bool:
        # Not inside the VMM's own stubs (a ring 3 -> 1 delivery may be in flight), nor in
        # patch code, whose address a frame must not show: the patch block exits at its
        # guest return address while `pending` is set (runtime/patching.py).
        return not self.machine.vmm.contains(eip)

    def _invalid_opcode(self) -> bool:
        """Unicorn stops on opcodes it does not implement (UD2 and undefined ones
        included) instead of raising #UD. Deliver #UD through the guest's IDT as
        the CPU would, if the guest loaded one; False: stop with a diagnosis."""
        eip = self.cpu.read(EIP)
        if self.vcpu.guest_cpl() == 0:
            # A privileged instruction Unicorn does not implement (RDPMC, XSETBV on some
            # models, MONITOR/MWAIT, STAC/CLAC, INVPCID): emulate it like a trap.
            try:
                op = self.traps.decode(eip)
            except (GuestStop, PageFault):
                op = None
            if op is not None and op.cls == "int1":
                # ICEBP (F1): a #DB trap through the guest's IDT (SDM vol. 3 §17.3.1.1).
                self.traps.inject(1, op.next_address, None, False)
                return True
            if op is not None and op.cls in EMULATORS:
                self.stats.exit("trap", op.cls, eip)
                self.traps.last.append(("trap", op.cls, eip))
                self.traps.execute(op, op.next_address)
                return True
        # A guest with an IDT gets #UD as the CPU raises it, whatever its gate holds (a gate
        # that is not present is #NP, delivered or escalated by runtime/deliver.py); a guest
        # without one (no LIDT yet: still the loader's real-mode IDTR, where the CPU would
        # triple-fault) is stopped with the opcode as the reason, the more useful diagnosis.
        idtr = self.vcpu.table("idtr")
        if idtr == LOADER_IDTR or idtr[1] < 6 * 8 + 7:
            return False
        self.traps.inject(VEC_UD, eip, None, False)
        return True

    def _unicorn_stop(self, err: UcError) -> GuestStop:
        eip = self.cpu.read(EIP)
        reason = _UNMAPPED.get(err.errno, f"Unicorn stopped: {err}")
        if err.errno == uconst.UC_ERR_EXCEPTION:
            reason = "triple fault"
        return GuestStop(reason, eip, str(err))

    def symbolize(self, addr: int) -> str:
        return self.boot.symbolize(addr)
