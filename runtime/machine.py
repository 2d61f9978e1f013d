"""The Unicorn engine and what the VMM puts into the guest's address space.

Memory map (physical; linear == physical until the guest enables paging):

    0 .. ram_size             guest RAM
    VMM_BASE .. 4 GiB         the VMM area (bt/layout.py): real GDT, IDT, TSS, VMM
                              code, the user trampoline page, the state block (a
                              protected and a patch-writable page), stacks, the VMM
                              page table, the shadow LDT, patch memory; write-protected
                              against the guest but for the patch-writable state page
                              (runtime/guard.py, installed by runtime/vm.py)

VMM code (at `bt.layout.VMM_CODE`, hand-encoded so that nothing needs an
assembler at run time; the constants below are home addresses, `Machine.linear` gives
where each is now that the VMM area can move, bt/layout.py):

    BOOT      ring 0:  LTR [TSS_SEL_WORD]; IRETD      the first entry into ring 1 (run alone)
    STUB1     ring 1:  INT3                          where the call gate lands
    IRET_OUT  ring 1:  IRETD                         emulated IRET back to ring 3
    RETF_OUT  ring 1:  RETF                          emulated far RET back to ring 3
    STOP      never executed: the `until` address of every emu_start
    TRAMP     ring 3 (VMM_USER_PAGE): LCALL VMM_GATE:0

Why a call gate: the guest kernel's IDT gates are never used by the CPU (Unicorn
hands every exception to the VMM's hook), so a transition from guest ring 3 to
ring 1 needs another hardware-faithful inward mechanism. A far CALL through a
DPL-3 call gate makes the CPU itself switch to TSS.ss1:esp1 (= the guest's
ss0|1:esp0) and push the user SS:ESP and CS:EIP (Intel SDM vol. 3 §5.8.5), so
CPL really changes from 3 to 1; the INT3 at the gate's target (a software
interrupt, so Unicorn's stale `old_exception` is not touched) gives the VMM the
control to turn that call frame into the interrupt frame the guest expects
(runtime/deliver.py). Checked with unicorn 2.1.4: call gates work
(helper_lcall_protected), including the stack switch.
"""

from __future__ import annotations

import ctypes
import mmap
import resource
import struct

from unicorn import UC_ERR_NOMEM, UC_PROT_ALL, UcError
from unicorn import x86_const as ux

from bt import layout
from bt.errors import HostError, InternalError
from runtime import paging, segments
from runtime.cpu import CR0, CR4, CS, DS, EAX, EBX, EFLAGS, ES, ESP, FS, GS, SS, Cpu
from runtime.engine import TCG_BUFFER, new_engine

BOOT = layout.VMM_CODE + 0x000
STUB1 = layout.VMM_CODE + 0x040
#: Ring 1: IRETD / RETF of a frame already on the guest's stack that returns to
#: ring 3, for emulated returns (hypercalls): an outward change of CPL is the CPU's
#: to make (SDM IRET "RETURN-TO-OUTER-PRIVILEGE-LEVEL"), not a register write.
IRET_OUT = layout.VMM_CODE + 0x060
RETF_OUT = layout.VMM_CODE + 0x068
TSS_SEL_WORD = layout.VMM_CODE + 0x800
STOP = layout.VMM_CODE + 0xF00
TRAMP = layout.VMM_USER_PAGE

# TSS fields (SDM vol. 3 §7.2.1, figure 7-2).
TSS_ESP0, TSS_SS0, TSS_ESP1, TSS_SS1 = 4, 8, 12, 16
TSS_IOMAP = 102
#: CR4.TSD (SDM vol. 3 §2.5): RDTSC faults outside ring 0. The real CR4 always has it, so the
#: guest's RDTSC (CPL 1 or 3) faults and reads the virtual TSC, which follows virtual time
#: (runtime/emulate/msr.py), instead of Unicorn's, which counts host time. VirtualBox's raw
#: mode did the same when it could not offset the real TSC (its #GP handler emulated RDTSC).
CR4_TSD = 1 << 2


def _vmm_code() -> bytes:
    code = bytearray(layout.PAGE_SIZE)
    boot = b"\x0f\x00\x1d" + struct.pack("<I", TSS_SEL_WORD) + b"\xcf"   # ltr [m16]; iretd
    at = BOOT - layout.VMM_CODE
    code[at:at + len(boot)] = boot
    code[STUB1 - layout.VMM_CODE] = 0xCC                                # int3
    code[IRET_OUT - layout.VMM_CODE] = 0xCF                             # iretd
    code[RETF_OUT - layout.VMM_CODE] = 0xCB                             # retf
    at = TSS_SEL_WORD - layout.VMM_CODE
    code[at:at + 2] = struct.pack("<H", segments.VMM_TSS)
    code[STOP - layout.VMM_CODE] = 0xF4                                  # hlt, never reached
    return bytes(code)


def _tramp() -> bytes:
    """The user page: the far CALL, then INT3s. Guest user code that jumps anywhere into the
    page (the guest maps nothing there) stops at once, with no side effect, and gets the #PF
    it would get on hardware (runtime/traps.py)."""
    code = b"\x9a" + struct.pack("<IH", 0, segments.VMM_GATE)          # lcall gate:0
    return code + b"\xcc" * (layout.PAGE_SIZE - len(code))


def _tss() -> bytes:
    tss = bytearray(layout.VMM_TSS_SIZE)
    struct.pack_into("<II", tss, TSS_ESP0, layout.VMM_STACK0_TOP, segments.VMM_DS0)
    struct.pack_into("<II", tss, TSS_ESP1, layout.VMM_STACK1_TOP, segments.VMM_DS1)
    # I/O bitmap right after the 104-byte TSS, all ones: on hardware every port
    # faults at CPL 1 with IOPL 0 (Unicorn does not check it, notes #1).
    struct.pack_into("<H", tss, TSS_IOMAP, 104)
    tss[104:] = b"\xff" * (len(tss) - 104)
    return bytes(tss)


#: What an engine needs besides guest RAM, the VMM area and the translation buffer, with
#: room to spare (Unicorn's own tables were about 3 MiB in 2.1.4; Python's heap grows too).
HEADROOM = 96 * layout.MiB


def _address_space_used() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        return 0


def check_host_memory(ram_size: int) -> None:
    """Refuse (HostError, exit 2) a run the host cannot hold, before Unicorn is asked for
    memory: it would exit(1) rather than report it. Under an address-space limit (ulimit -v)
    the sum is checked; in any case a mapping of the translation buffer's size is tried."""
    need = ram_size + layout.VMM_SIZE + TCG_BUFFER + HEADROOM
    soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
    used = _address_space_used()
    if soft != resource.RLIM_INFINITY and used + need > soft:
        raise HostError(f"not enough memory for this run: {ram_size >> 20} MiB of guest RAM and "
                        f"{(need - ram_size) >> 20} MiB for the VMM and Unicorn need {need >> 20} MiB, "
                        f"the address-space limit leaves {max(0, soft - used) >> 20} MiB (ulimit -v); "
                        "lower --ram or raise the limit")
    try:
        mmap.mmap(-1, TCG_BUFFER + HEADROOM).close()
    except OSError as err:
        raise HostError(f"the host refused {(TCG_BUFFER + HEADROOM) >> 20} MiB of memory for the "
                        f"emulator: {err.strerror or err}") from err


class Machine:
    """A Unicorn x86-32 engine with guest RAM and the VMM area in place."""

    def __init__(self, ram_size: int) -> None:
        check_host_memory(ram_size)
        # Host memory the VMM owns (runtime/cpu.py): anonymous mappings, zeroed.
        try:
            self._ram = mmap.mmap(-1, ram_size)
            self._vmm = mmap.mmap(-1, layout.VMM_SIZE)
        except OSError as err:
            raise HostError(f"the host refused {ram_size >> 20} MiB of guest RAM: "
                            f"{err.strerror or err}") from err
        try:
            self.uc = new_engine(TCG_BUFFER)
            for base, mem in ((0, self._ram), (layout.VMM_BASE, self._vmm)):
                addr = ctypes.addressof(ctypes.c_char.from_buffer(mem))
                self.uc.mem_map_ptr(base, len(mem), UC_PROT_ALL, addr)
        except UcError as err:
            if err.errno == UC_ERR_NOMEM:
                raise HostError(f"Unicorn ran out of memory setting up the engine: {err}") from err
            raise InternalError(f"cannot set up the Unicorn engine: {err}") from err
        self.ram_size = ram_size
        self.cpu = Cpu(self.uc)
        self.cpu.add_region(0, memoryview(self._ram))
        self.cpu.add_region(layout.VMM_BASE, memoryview(self._vmm))
        #: Where the VMM area is in the guest's linear space now (it starts at home).
        self.vmm = layout.HOME
        #: The guest's GDT limit, which the real GDTR's limit is but for a few VMM instructions.
        self.guest_gdt_limit = 0
        self._install_vmm()

    @property
    def ram(self) -> memoryview:
        return memoryview(self._ram)

    @property
    def vmm_memory(self) -> memoryview:
        return memoryview(self._vmm)

    def linear(self, home: int) -> int:
        """Where home address `home` of the VMM area (a constant of this module or of
        bt.layout) is in the guest's linear space now."""
        return self.vmm.linear(home)

    def _install_vmm(self) -> None:
        cpu = self.cpu
        self._write_descriptors()
        cpu.phys_write(layout.VMM_TSS, _tss())
        cpu.phys_write(layout.VMM_CODE, _vmm_code())
        cpu.phys_write(TRAMP, _tramp())
        cpu.phys_write(layout.VMM_PT, paging.vmm_page_table())

    def _write_descriptors(self) -> None:
        """The VMM's own GDT slots for the area where it is now; the TSS descriptor keeps
        the busy bit the CPU set on LTR."""
        cpu = self.cpu
        for sel, desc in segments.vmm_descriptors(self.vmm).items():
            if sel == segments.VMM_GATE & ~3:
                desc = segments.call_gate(segments.VMM_CS1 & ~3, self.linear(STUB1), 3)
            at = layout.VMM_GDT + (sel & ~7)
            if sel == segments.VMM_TSS:
                busy = segments.Descriptor.from_bytes(cpu.phys_read(at, 8)).type == segments.TYPE_TSS_BUSY
                if busy:
                    desc = desc.with_access((desc.access & ~0xF) | segments.TYPE_TSS_BUSY)
            cpu.phys_write(at, desc.to_bytes())

    def move_to(self, area: layout.VmmArea) -> None:
        """Point the CPU's view of the VMM's structures at `area`: the descriptor-table
        registers, the TSS (register, descriptor and the stacks it names), the call gate.
        The page tables are the caller's (runtime/relocate.py)."""
        self.vmm = area
        self._write_descriptors()
        uc = self.uc
        for reg, home in ((ux.UC_X86_REG_GDTR, layout.VMM_GDT), (ux.UC_X86_REG_IDTR, layout.VMM_IDT)):
            sel, _base, limit, flags = uc.reg_read(reg)
            uc.reg_write(reg, (sel, area.linear(home), limit, flags))
        sel, _base, limit, flags = uc.reg_read(ux.UC_X86_REG_TR)
        uc.reg_write(ux.UC_X86_REG_TR, (sel, area.linear(layout.VMM_TSS), limit, flags))
        self.cpu.phys_write(layout.VMM_TSS + TSS_ESP0, struct.pack("<I", area.linear(layout.VMM_STACK0_TOP)))

    def load_cs(self, selector: int) -> None:
        """CS for a far transfer the VMM emulates (IRET, RETF, a call gate, an interrupt). A
        register write is the only way in, and Unicorn checks it as if it loaded a data
        segment (uc_check_cpu_x86_load_seg: readable), which refuses an execute-only code
        segment the CPU itself would load: for that one load the shadow descriptor is made
        readable, then restored (QEMU's TCG never checks read permission through CS, so the
        cached readable bit changes nothing the guest can see)."""
        try:
            self.cpu.write(CS, selector)
            return
        except UcError:
            pass
        at = (layout.VMM_LDT if selector & 4 else layout.VMM_GDT) + (selector & ~7) + 4
        high = self.cpu.phys_u32(at)
        if high & 0x1A00 != 0x1800:          # not an execute-only code segment: a VMM bug
            raise InternalError(f"the CPU refused CS {selector:#x} after the VMM's checks")
        self.cpu.phys_write_u32(at, high | 0x200)
        try:
            self.cpu.write(CS, selector)
        except UcError as err:
            raise InternalError(f"the CPU refused CS {selector:#x} after the VMM's checks") from err
        finally:
            self.cpu.phys_write_u32(at, high)

    def load_ldtr(self, selector: int, base: int, limit: int) -> None:
        """The real LDTR (hidden part included: base, limit, present LDT type)."""
        flags = 0x8200 if selector else 0
        self.uc.reg_write(ux.UC_X86_REG_LDTR, (selector, base, limit, flags))

    def write_tss_ring1(self, ss1: int, esp1: int) -> None:
        self.cpu.phys_write(layout.VMM_TSS + TSS_ESP1, struct.pack("<II", esp1, ss1))

    # -- the real GDT's limit ---------------------------------------------------------------------
    # The real GDTR's limit is the guest's own (runtime/segments.py `ShadowGdt`): a selector
    # beyond the guest's table faults as the guest's table says, and the VMM's own slots at the
    # end of the real GDT (`VMM_GDT_FIRST_SLOT`) are out of the guest's reach. The VMM opens
    # them only while its own code needs them, with no guest instruction in between: BOOT's
    # LTR and IRETD, and a ring 3 -> 1 delivery (TRAMP's far CALL through the VMM gate, to
    # STUB1's INT3: runtime/deliver.py).
    def set_guest_gdt_limit(self, limit: int) -> None:
        self.guest_gdt_limit = limit
        self._gdt_limit(limit)

    def open_vmm_slots(self) -> None:
        self._gdt_limit(layout.VMM_GDT_SIZE - 1)

    def close_vmm_slots(self) -> None:
        self._gdt_limit(self.guest_gdt_limit)

    def _gdt_limit(self, limit: int) -> None:
        sel, base, _limit, flags = self.uc.reg_read(ux.UC_X86_REG_GDTR)
        self.uc.reg_write(ux.UC_X86_REG_GDTR, (sel, base, limit, flags))

    def prepare_entry(self, entry: int, eax: int, ebx: int, esp: int, cs: int, ds: int, eflags: int,
                      ring: int = 1) -> None:
        """CPU state for BOOT, the VMM's two ring-0 instructions (LTR, IRETD) that enter the
        guest at `entry` in ring 1 with real IF = 1 and IOPL = 0, the arithmetic flags of
        `eflags`, CS and SS `cs`|1 and `ds`|1, DS/ES/FS/GS `ds` (guest selectors: the shadow
        GDT must hold them already; RPL 0 where the CPU allows it, as the guest loads its own:
        a DPL-1 data segment with RPL 0 is valid at CPL 1, CS and SS need RPL == CPL). The
        VMM slots stay open for BOOT; `close_vmm_slots` after. `ring` 3 enters the guest kernel
        in ring 3 instead (`bt run --guest-ring 3`: CS and SS `cs`|3 and `ds`|3)."""
        uc, cpu = self.uc, self.cpu
        uc.reg_write(ux.UC_X86_REG_GDTR, (0, layout.VMM_GDT, layout.VMM_GDT_SIZE - 1, 0))
        uc.reg_write(ux.UC_X86_REG_IDTR, (0, layout.VMM_IDT, layout.VMM_IDT_SIZE - 1, 0))
        cpu.write(CR0, 0x11)  # PE | ET
        cpu.write(CR4, CR4_TSD)
        cpu.write(CS, segments.VMM_CS0)
        cpu.write(SS, segments.VMM_DS0)
        # DPL-1 data selectors survive the IRETD to ring 1 (SDM IRET: outer-level
        # returns null data segments whose DPL < new CPL).
        for reg in (DS, ES, FS, GS):
            cpu.write(reg, ds)
        frame = struct.pack("<5I", entry, cs | ring, (eflags & ~0x3200) | 0x202, esp, ds | ring)
        top = layout.VMM_STACK0_TOP - len(frame)
        cpu.phys_write(top, frame)
        cpu.write(ESP, self.linear(top))
        cpu.write(EFLAGS, 0x2)
        cpu.write(EAX, eax)
        cpu.write(EBX, ebx)
