"""Host values that leak to the guest: each instruction really executed at the audit point.

A scratch Unicorn engine is made "the same way" as the run's: the run's CPU context
(`uc_context_save` of the live engine: every register, the hidden parts of the segment and
descriptor-table registers, CR0/CR3/CR4) restored into it, over copies of guest RAM and of
the VMM area mapped at the same physical addresses. Nothing of the run changes: probes
store into the copies. Each probe is a few bytes of code written into an unused page of the
VMM area's copy (executable at CPL 1 through the VMM's slot, as patch code is) and run
from the guest's CPL, with its registers, stack and segment state:

* unpatched: the instruction as the CPU runs it at CPL 1 (what an unpatched guest gets);
* patched: a patch manager over the scratch copy, with the run's patch rules, patches the
  probe site (`PatchManager.patch_all`, as `--eager` does) and the probe runs through the
  patch: inline translations run as emitted code, an int3 or hypercall exit is answered by
  the runtime's own emulator for its class (runtime/emulate), as in a run.

Under `--guest-ring 3` the audit point's CPU state is at real CPL 3 (the guest kernel
deprivileged, runtime/ring3/): each probe runs there unpatched (ring 3 runs unpatched), from
the VMM's user page, the one VMM page CPL 3 may fetch from; SGDT and SIDT store on the guest
kernel's stack (`Probe.stack`), since no VMM page is writable at CPL 3.

The list of instructions is `bt.isa`: every row whose CPL-1 behaviour leaks or silently
differs and which hands the guest a value (`PROBES` covers them; `NOT_PROBED` says why the
others are left out; tests/test_audit.py checks the two against the table).
"""

from __future__ import annotations

import ctypes
import mmap
import struct
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from unicorn import UC_HOOK_INTR, UC_HOOK_MEM_WRITE_PROT, UC_PROT_ALL, Uc, UcError
from unicorn import x86_const as ux
from unicorn.unicorn_const import UC_CTL_IO_WRITE, UC_CTL_TLB_FLUSH

from bt import layout
from runtime.context import EmulationFault
from runtime.cpu import Cpu
from runtime.emulate import EMULATORS
from runtime.engine import SCRATCH_TCG_BUFFER, new_engine
from runtime.latch import ExceptionLatch
from runtime.paging import CR0_PG, CR0_WP, Mmu, PageFault
from runtime.ruletest import LinearCode
from runtime.shadowpd import UNCHANGED, ShadowPd

if TYPE_CHECKING:
    from patchmgr.registry import RuleSet
    from runtime.vm import Vm

#: Where probe code goes (an unused page of the VMM area, bt.layout) and where SGDT/SIDT
#: store (the end of the patch-writable state page, which no field uses).
PROBE_HOME = layout.VMM_BASE + 0x100000
DATA_HOME = layout.PATCH_STATE_BASE + 0xF00
#: Where a ring-3 load runs: the second half of the VMM's user page, the one VMM page guest
#: ring 3 may fetch from (its first bytes are the ring 3 -> 1 trampoline).
USER_PROBE_HOME = layout.VMM_USER_PAGE + 0x800
_PAD = b"\x90" * 12  # room for a 5-byte patch window after a short instruction
_ZF = 1 << 6


@dataclass(frozen=True)
class Probe:
    """One instruction to run: `code(data)` its bytes (SGDT/SIDT store at linear `data`),
    `regs` set before it, `result(engine, data bytes)` the value it gave, as text."""

    cls: str
    label: str
    code: Callable[[int], bytes]
    result: Callable[[Uc, bytes], str]
    #: What the guest set, in the same words as `result` (None: nothing to compare with).
    guest: Callable[[Vm], str | None]
    regs: Callable[[Vm], dict[int, int]] = lambda _vm: {}
    #: Ring 3's form of a probe that stores (SGDT, SIDT): at CPL 3 no VMM page is writable, so
    #: it stores on the guest kernel's stack and pops the 8 bytes into EAX:EDX.
    stack: bytes | None = None


def _reg(uc: Uc, reg: int, mask: int = 0xFFFFFFFF) -> int:
    return int(uc.reg_read(reg)) & mask


def _table(_uc: Uc, data: bytes) -> str:
    limit, base = struct.unpack("<HI", data[:6])
    return f"base {base:#010x} limit {limit:#x}"


def _flags(uc: Uc, _data: bytes) -> str:
    eax = _reg(uc, ux.UC_X86_REG_EAX)
    return f"IF {eax >> 9 & 1} IOPL {eax >> 12 & 3}"


def _sel(uc: Uc, _data: bytes) -> str:
    return f"{_reg(uc, ux.UC_X86_REG_EAX, 0xFFFF):#06x}"


def _zf(uc: Uc) -> bool:
    return bool(_reg(uc, ux.UC_X86_REG_EFLAGS) & _ZF)


def _lar(uc: Uc, _data: bytes) -> str:
    return f"access {_reg(uc, ux.UC_X86_REG_EAX) & 0x00F0FF00:#010x}" if _zf(uc) else "ZF 0 (not visible)"


def _lsl(uc: Uc, _data: bytes) -> str:
    return f"limit {_reg(uc, ux.UC_X86_REG_EAX):#010x}" if _zf(uc) else "ZF 0 (not visible)"


def _ver(uc: Uc, _data: bytes) -> str:
    return f"ZF {int(_zf(uc))}"


def _cpuid(uc: Uc, _data: bytes) -> str:
    vendor = b"".join(
        struct.pack("<I", _reg(uc, r)) for r in (ux.UC_X86_REG_EBX, ux.UC_X86_REG_EDX, ux.UC_X86_REG_ECX)
    )
    return f"max leaf {_reg(uc, ux.UC_X86_REG_EAX):#x}, {vendor.decode('latin-1')!r}"


def _tsc(uc: Uc, _data: bytes) -> str:
    return f"TSC {_reg(uc, ux.UC_X86_REG_EDX) << 32 | _reg(uc, ux.UC_X86_REG_EAX):#x}"


def _guest_cs(vm: Vm) -> dict[int, int]:
    return {ux.UC_X86_REG_ECX: vm.cpu.read(ux.UC_X86_REG_CS) & ~3}


def _guest_ss(vm: Vm) -> dict[int, int]:
    return {ux.UC_X86_REG_ECX: vm.cpu.read(ux.UC_X86_REG_SS) & ~3}


# -- what the guest set: its virtual registers and its own descriptors ---------------------------
def _g_flags(vm: Vm) -> str:
    vflags = vm.vcpu.vflags
    return f"IF {vflags >> 9 & 1} IOPL {vflags >> 12 & 3}"


def _g_table(which: str) -> Callable[[Vm], str]:
    def value(vm: Vm) -> str:
        base, limit = vm.vcpu.table(which)
        return f"base {base:#010x} limit {limit:#x}"

    return value


def _g_sel(which: str) -> Callable[[Vm], str]:
    def value(vm: Vm) -> str:
        if which == "ldtr":
            return f"{vm.vcpu.ldtr:#06x}"
        if which == "tr":
            return f"{vm.vcpu.tr:#06x}"
        if which == "cr0":
            return f"{vm.vcpu.cr(0) & 0xFFFF:#06x}"
        # The guest loaded its kernel selectors with RPL 0 (it believes it runs in ring 0);
        # the CPU holds them with RPL 1 (ring compression, runtime/README.md "RPL in frames").
        reg = ux.UC_X86_REG_CS if which == "cs" else ux.UC_X86_REG_SS
        return f"{vm.cpu.read(reg) & ~3 & 0xFFFF:#06x}"

    return value


def _g_desc(what: str, reg: int) -> Callable[[Vm], str]:
    """LAR/LSL/VERR/VERW as CPL 0 would answer them from the guest's own descriptor."""

    def value(vm: Vm) -> str:
        try:
            desc = vm.gdt.guest_descriptor(vm.cpu.read(reg) & ~3)
        except PageFault as err:
            return f"#PF at {err.linear:#x}"  # its GDT is not mapped: CPL 0 would fault too
        if desc is None or not desc.present:
            return "ZF 0 (not visible)"
        if what == "lar":
            return f"access {(desc.raw >> 32) & 0x00F0FF00:#010x}"
        if what == "lsl":
            return f"limit {desc.limit:#010x}"
        if what == "verr":
            return f"ZF {int(not desc.is_system and (not desc.is_code or bool(desc.type & 2)))}"
        return f"ZF {int(not desc.is_system and not desc.is_code and bool(desc.type & 2))}"

    return value


def _none(_vm: Vm) -> None:
    return None


def _fixed(code: bytes) -> Callable[[int], bytes]:
    return lambda _data: code


#: Every probe, in bt.isa's order. Register forms where the instruction has one.
PROBES: tuple[Probe, ...] = (
    Probe("pushf", "PUSHFD: IF, IOPL", _fixed(b"\x9c\x58"), _flags, _g_flags),  # pushfd; pop eax
    Probe(
        "sgdt",
        "SGDT: GDTR",
        lambda d: b"\x0f\x01\x05" + struct.pack("<I", d),
        _table,
        _g_table("gdtr"),
        stack=b"\x83\xec\x08\x0f\x01\x04\x24\x58\x5a",  # sub esp, 8; sgdt [esp]; pop eax; pop edx
    ),
    Probe(
        "sidt",
        "SIDT: IDTR",
        lambda d: b"\x0f\x01\x0d" + struct.pack("<I", d),
        _table,
        _g_table("idtr"),
        stack=b"\x83\xec\x08\x0f\x01\x0c\x24\x58\x5a",  # sub esp, 8; sidt [esp]; pop eax; pop edx
    ),
    Probe("sldt", "SLDT: LDTR", _fixed(b"\x0f\x00\xc0"), _sel, _g_sel("ldtr")),  # sldt eax
    Probe("str", "STR: TR", _fixed(b"\x0f\x00\xc8"), _sel, _g_sel("tr")),  # str eax
    Probe("smsw", "SMSW: CR0 bits 0-15", _fixed(b"\x66\x0f\x01\xe0"), _sel, _g_sel("cr0")),  # smsw ax
    Probe(
        "lar",
        "LAR of the guest's CS",
        _fixed(b"\x0f\x02\xc1"),
        _lar,
        _g_desc("lar", ux.UC_X86_REG_CS),
        _guest_cs,
    ),  # lar eax, ecx
    Probe(
        "lsl",
        "LSL of the guest's CS",
        _fixed(b"\x0f\x03\xc1"),
        _lsl,
        _g_desc("lsl", ux.UC_X86_REG_CS),
        _guest_cs,
    ),  # lsl eax, ecx
    Probe(
        "verr",
        "VERR of the guest's CS",
        _fixed(b"\x0f\x00\xe1"),
        _ver,
        _g_desc("verr", ux.UC_X86_REG_CS),
        _guest_cs,
    ),  # verr cx
    Probe(
        "verw",
        "VERW of the guest's SS",
        _fixed(b"\x0f\x00\xe9"),
        _ver,
        _g_desc("verw", ux.UC_X86_REG_SS),
        _guest_ss,
    ),  # verw cx
    Probe("push_sreg", "PUSH CS: selector", _fixed(b"\x0e\x58"), _sel, _g_sel("cs")),  # push cs; pop eax
    Probe("push_sreg", "PUSH SS: selector", _fixed(b"\x16\x58"), _sel, _g_sel("ss")),  # push ss; pop eax
    Probe("mov_from_sreg", "MOV r,CS: selector", _fixed(b"\x8c\xc8"), _sel, _g_sel("cs")),  # mov eax, cs
    Probe("mov_from_sreg", "MOV r,SS: selector", _fixed(b"\x8c\xd0"), _sel, _g_sel("ss")),  # mov eax, ss
    Probe("rdtsc", "RDTSC: time stamp counter", _fixed(b"\x0f\x31"), _tsc, _none),
    Probe("rdtscp", "RDTSCP: time stamp counter", _fixed(b"\x0f\x01\xf9"), _tsc, _none),
    Probe("cpuid", "CPUID leaf 0: vendor", _fixed(b"\x31\xc0\x0f\xa2"), _cpuid, _none),  # xor eax,eax; cpuid
)

#: Rows of bt.isa that leak or silently differ at CPL 1 but give the guest no value to read.
NOT_PROBED: dict[str, str] = {
    "popf": "changes to IF/IOPL are dropped, nothing is read: the patched POPF keeps them in the "
    "virtual flags (the PUSHF row shows what the guest reads back)",
    "iret": "IF/IOPL of the frame are dropped, nothing is read (as POPF)",
}


@dataclass(frozen=True)
class Outcome:
    """What one probe gave: the value (or the fault that stopped it) and the exits it took."""

    value: str
    exits: int  #: exits the patch took (int3, hypercall): 0 for native code
    patch: str = "none"  #: "jmp", "int3" or "none" (no rule patched it)
    rule: str | None = None  #: the patch rule that patched it

    def to_dict(self) -> dict[str, object]:
        return {"value": self.value, "exits": self.exits, "patch": self.patch, "rule": self.rule}


class _ScratchMemory:
    """The patch manager's view of the scratch VMM area (probe code and patch memory live
    there): linear addresses in the VMM's slot -> the copy."""

    def __init__(self, scratch: Scratch) -> None:
        self.s = scratch

    def read(self, address: int, size: int) -> bytes:
        return self.s.cpu.phys_read(self.s.area.home(address), size)

    def write(self, address: int, data: bytes) -> None:
        self.s.cpu.phys_write(self.s.area.home(address), data)
        self.s.uc.ctl_remove_cache(address, address + len(data))

    def watch(self, start: int, end: int) -> object:
        return None

    def unwatch(self, handle: object) -> None:
        return None


class Scratch:
    """A scratch engine holding the run's CPU state over copies of its memory."""

    def __init__(self, vm: Vm) -> None:
        self.vm = vm
        self.area = vm.machine.vmm
        self.context = vm.machine.uc.context_save()
        self._ram = mmap.mmap(-1, vm.machine.ram_size)
        self._ram[:] = vm.machine.ram  # no intermediate bytes: RAM may be GiBs
        self._vmm = mmap.mmap(-1, layout.VMM_SIZE)
        self._vmm[:] = vm.machine.vmm_memory
        self._vmm_pristine = bytes(self._vmm)
        self.uc, self._latch = self._engine()
        self.cpu = Cpu(self.uc)
        self.cpu.add_region(0, memoryview(self._ram))
        self.cpu.add_region(layout.VMM_BASE, memoryview(self._vmm))
        # The runtime's emulators, working on the scratch CPU (int3 patches exit to them).
        self.ctx = replace(vm.ctx, cpu=self.cpu, mmu=Mmu(self.cpu, vm.vcpu.paging_regs, lambda: self.area))
        # The run's shadow page directory logic over the copies (loads fill it as the run does).
        self.shadow = ShadowPd(
            memoryview(self._vmm),
            memoryview(self._ram),
            lambda: self.area,
            wp=lambda: bool(vm.vcpu.cr(0) & CR0_WP),
        )
        self.shadow.guest_pd = vm.shadow.guest_pd
        self._manager: object = None
        self._fault: str | None = None
        self._pf: int | None = None  #: CR2 of the last #PF a probe took
        self._until = 0  #: where the probe running now ends
        self._dropped = False  #: the last store hit a write-protected page
        self._error: Exception | None = None
        self._exits = 0
        #: The guest kernel's real ring (3 under `--guest-ring 3`: every probe runs at CPL 3,
        #: from the VMM's user page, the one VMM page CPL 3 may fetch from) and ring 3's views.
        self.ring = vm.vcpu.ring
        self.view = vm.ring3.view if vm.ring3 is not None else None

    def _engine(self) -> tuple[Uc, ExceptionLatch]:
        """An engine over the copies, in the run's CPU state, with the run's page protections
        of the VMM area (the VMM guard's), a hook that drops a store into a protected page
        as the guard does (runtime/guard.py) and the probes' interrupt hook."""
        uc = new_engine(SCRATCH_TCG_BUFFER)  # a few short probes: a small translation buffer
        for base, mem in ((0, self._ram), (layout.VMM_BASE, self._vmm)):
            uc.mem_map_ptr(base, len(mem), UC_PROT_ALL, ctypes.addressof(ctypes.c_char.from_buffer(mem)))
        uc.context_restore(self.context)
        for begin, last, perms in self.vm.machine.uc.mem_regions():
            # The VMM area's protections only: a write-protected guest RAM page is one the run
            # watches (the guest's GDT/LDT, page directory or code: issue 11), where the run
            # makes the guest's store after noting it. Dropping it here lost the probes' own
            # pushes (the mini-OS's kernel stack shares a watched page: PUSH CS read 0x0004).
            if perms != UC_PROT_ALL and begin >= layout.VMM_BASE:
                uc.mem_protect(begin, last - begin + 1, perms)
        uc.hook_add(UC_HOOK_INTR, self._on_intr)
        uc.hook_add(UC_HOOK_MEM_WRITE_PROT, self._on_write_prot)
        return uc, ExceptionLatch(uc)

    def _abandon(self, uc: Uc) -> None:
        """End the probe from the hook: continue at its `until` address, where Unicorn stops,
        with the fault cleared from Unicorn's old_exception as the run loop does
        (runtime/latch.py, unicorn issue #1883)."""
        self._latch.clear()
        uc.reg_write(ux.UC_X86_REG_EIP, self._until)

    def _on_intr(self, uc: Uc, vector: int, _data: object) -> None:
        eip = int(uc.reg_read(ux.UC_X86_REG_EIP))
        record = self._manager.exit_at(eip - 1) if vector == 3 and self._manager is not None else None  # type: ignore[attr-defined]
        if record is None:
            cr2 = int(uc.reg_read(ux.UC_X86_REG_CR2))
            self._fault = f"#PF at {cr2:#x}" if vector == 14 else f"fault: vector {vector}"
            self._pf = cr2 if vector == 14 else None
            self._abandon(uc)
            return
        self._exits += 1
        op = getattr(record, "op", None)
        resume = int(record.resume)
        if op is not None:
            try:
                EMULATORS[op.cls](op, self.ctx, resume)
            except PageFault as err:  # the run would deliver it to the guest: it is the answer
                self._fault = f"#PF at {err.linear:#x}"
                self._abandon(uc)
                return
            except EmulationFault as err:
                self._fault = f"fault: vector {err.vector} (emulating {op.cls})"
                self._abandon(uc)
                return
            except Exception as err:  # a bug: re-raised by `run`, never swallowed
                self._error = err
                self._abandon(uc)
                return
        uc.reg_write(ux.UC_X86_REG_EIP, resume)

    def run(self, probe: Probe, rules: RuleSet | None) -> Outcome:
        """Run `probe` from the audit point; patched through `rules` unless None."""
        from patchmgr.manager import PatchConfig, PatchManager

        self._vmm[:] = self._vmm_pristine  # patch memory and the data word as the run left them
        self.uc.ctl_remove_cache(self.area.base, self.area.end - 1)
        self.uc.context_restore(self.context)
        site, data = self.area.linear(PROBE_HOME), self.area.linear(DATA_HOME)
        code = probe.code(data) + _PAD
        stacked = False
        if self.ring == 3:
            if rules is not None:
                raise ValueError("ring 3 runs unpatched: no patched probe")
            site, stacked = self.area.linear(USER_PROBE_HOME), probe.stack is not None
            code = (probe.stack if probe.stack is not None else probe.code(data)) + _PAD
        memory = _ScratchMemory(self)
        memory.write(site, code)
        kind, rule_name = "none", None
        self._manager = None
        start = site
        if rules is not None:
            manager = PatchManager(
                PatchConfig(eager=True),
                memory,
                LinearCode(site, site + len(code)),
                rules=rules,
                emulable=EMULATORS.__contains__,
                area=self.area,
            )
            manager.patch_all([site])
            patch = manager.patches.get(site)
            if patch is not None:
                kind = patch.kind
                rule = rules.rule_for(patch.op)
                rule_name = rule.name if rule is not None else None
            self._manager = manager
            start = manager.resume_at(site)
        for reg, value in probe.regs(self.vm).items():
            self.uc.reg_write(reg, value)
        if self.ring == 3:
            self._latch.clear()  # as in `_once`
        self._fault, self._error, self._exits = None, None, 0
        end = site + len(code)
        try:
            self._until = end
            self.uc.emu_start(start, end, count=1000)
        except UcError as err:
            return Outcome(f"stopped: {err}", self._exits, kind, rule_name)
        if self._error is not None:
            raise self._error
        if self._fault is not None:
            return Outcome(self._fault, self._exits, kind, rule_name)
        if int(self.uc.reg_read(ux.UC_X86_REG_EIP)) != end:
            return Outcome("did not finish", self._exits, kind, rule_name)
        if stacked:
            stored = struct.pack("<II", _reg(self.uc, ux.UC_X86_REG_EAX), _reg(self.uc, ux.UC_X86_REG_EDX))
        else:
            at = DATA_HOME - layout.VMM_BASE
            stored = bytes(self._vmm[at : at + 8])
        return Outcome(probe.result(self.uc, stored), self._exits, kind, rule_name)

    def access(self, linear: int, user: bool = False, store: bool = False) -> str:
        """A 4-byte load (or `store`) at `linear`, at CPL 1 from the audit point's CPU state,
        or with `user` at CPL 3 (an IRETD from there to code on the VMM's user page, with the
        guest's own ring-3 selectors). Under `--guest-ring 3` both run at CPL 3 from code on
        the user page: the guest kernel's in its view, `user` with the real CR3 on split's
        user view. Loads give "ok", stores "made" or "dropped" (Unicorn
        has the page write-protected, as the run's VMM guard does); either may give "#PF" or
        another fault. A #PF the run's VMM would take for itself (a guest entry the shadow page
        directory has not copied yet, or a first write to a clean 4 MiB page:
        runtime/shadowpd.py) is handled as the run loop does: the entry is copied into the
        scratch shadow and the access runs again ("... after a shadow fill")."""
        if user and self.ring == 1 and self._user_selectors() is None:
            return "not run: no ring-3 code and data descriptors in the guest's GDT"
        filled = False
        # Ring 3 walks the kernel view in kernel mode (runtime/ring3/vtlb.py), whose fills are
        # not made here: only the shadow page directory's are (ring 1, and split's user view).
        fills = self.ring == 1 or (user and self.view == "split")
        for _ in range(3):
            if user or self.ring == 3:
                # Each attempt in an engine of its own over the same copies: once an engine has
                # run at CPL 3, restoring the CPL-1 context into it did not take (unicorn 2.1.4:
                # the next probe ran on at the ring-3 code, CS 0x1b; measured).
                main, latch = self.uc, self._latch
                self.uc, self._latch = self._engine()
                try:
                    got = self._once(linear, store, user)
                finally:
                    self.uc.mem_unmap(0, len(self._ram))
                    self.uc.mem_unmap(layout.VMM_BASE, layout.VMM_SIZE)
                    self.uc, self._latch = main, latch
            else:
                got = self._once(linear, store, user)
            if got is not None or self._pf != linear or not fills or self.shadow.fault(linear) == UNCHANGED:
                break
            filled = True
            self.uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE)
        if got is not None:
            return got
        if self._fault is not None:
            return "#PF" if self._pf == linear else self._fault
        done = ("dropped" if self._dropped else "made") if store else "ok"
        return done + (" after a shadow fill" if filled else "")

    def _once(self, linear: int, store: bool, user: bool) -> str | None:
        """One attempt of `access`: None when it ran (its outcome in `_fault`, `_pf`,
        `_dropped`), else why it could not."""
        insn = (b"\xa3" if store else b"\xa1") + struct.pack("<I", linear)  # mov [m], eax / mov eax, [m]
        site = self.area.linear(PROBE_HOME)
        memory = _ScratchMemory(self)
        if self.ring == 3:
            # Already at CPL 3 (the guest kernel's real CPL); guest user code differs only by
            # the tables it runs on: split's user view is the shadow page directory.
            site = self.area.linear(USER_PROBE_HOME)
            memory.write(site, insn)
            end = site + len(insn)
        elif user:
            selectors = self._user_selectors()
            assert selectors is not None
            cs3, ss3 = selectors
            code_at = self.area.linear(USER_PROBE_HOME)
            memory.write(code_at, insn)
            # push ss; push esp; push eflags (IF); push cs; push eip; iretd: to ring 3.
            frame = b"".join(b"\x68" + struct.pack("<I", v) for v in (ss3, 0, 0x202, cs3, code_at))
            memory.write(site, frame + b"\xcf")
            end = code_at + len(insn)
        else:
            memory.write(site, insn)
            end = site + len(insn)
        self._manager = None
        self.uc.context_restore(self.context)
        if self.ring == 3:
            # The run's context carries Unicorn's old_exception as the run left it: under ring 3
            # often #PF (the kernel view's fills), and the access's own #PF would become #DF;
            # the run loop clears it before every slice (runtime/latch.py), so here too.
            self._latch.clear()
            if user and self.view == "split" and self.vm.vcpu.cr(0) & CR0_PG:
                self.uc.reg_write(ux.UC_X86_REG_CR3, layout.VMM_SHADOW_PD)
        self._fault, self._error, self._pf, self._dropped = None, None, None, False
        self._until = end
        try:
            self.uc.emu_start(site, end, count=20)
        except UcError as err:
            return f"stopped: {err}"
        return None

    def _on_write_prot(
        self, _uc: Uc, _access: int, _address: int, _size: int, _value: int, _data: object
    ) -> bool:
        self._dropped = True  # as the run's guard: the store is not made
        return True

    def _user_selectors(self) -> tuple[int, int] | None:
        """The guest's first present DPL-3 code and writable data descriptors, as RPL-3
        selectors (its user segments: the shadow GDT keeps DPL 3 as it is)."""
        gdt = self.vm.gdt
        code = data = None
        for index in range(1, (gdt.guest_limit + 1) // 8):
            try:
                desc = gdt.guest_descriptor(index << 3)
            except PageFault:
                return None
            if desc is None or not desc.present or desc.is_system or desc.dpl != 3:
                continue
            if desc.is_code and code is None:
                code = index << 3 | 3
            elif not desc.is_code and desc.type & 2 and data is None:
                data = index << 3 | 3
        return (code, data) if code is not None and data is not None else None

    def close(self) -> None:
        self.uc.mem_unmap(0, len(self._ram))
        self.uc.mem_unmap(layout.VMM_BASE, layout.VMM_SIZE)
