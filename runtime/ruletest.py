"""Testing a patch rule: a bare Unicorn machine that runs the same guest code at CPL 0
(what hardware does natively, the reference) and, patched, at CPL 1 with real IOPL 0 and
real IF 1, the way ring1 runs a guest (GDT + IRETD into ring 1). Installed with ring1, so
a rule's own tests need no path hack:

    from runtime.ruletest import run_native, run_patched
    native = run_native("add eax, ebx\nrdtsc\nnop", {"eax": 1}, flags=0, guest_if=1)
    patched, manager = run_patched("add eax, ebx\nrdtsc\nnop", {"eax": 1}, 0, 1,
                                   rules=registry.load(extra=[MyRule()]))

It lives in `runtime`, not `patchmgr`, because it runs patch code on the CPU model and
needs the runtime's fix for Unicorn's stale `old_exception` (runtime/latch.py): layers
point runtime -> patchmgr -> bt. docs/patch-rules.md says what to compare.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from keystone import KS_ARCH_X86, KS_MODE_32, Ks
from unicorn import UC_HOOK_INTR, UC_HOOK_MEM_WRITE, Uc
from unicorn import x86_const as u

from bt import layout
from bt.operation import Operation
from patchmgr.manager import PatchConfig, PatchManager
from patchmgr.registry import RuleSet
from runtime.engine import SCRATCH_TCG_BUFFER, new_engine
from runtime.latch import ExceptionLatch

GDT, BOOT, CODE, STACK_TOP, DATA = 0x1000, 0x10000, 0x20000, 0x80000, 0x90000
KCODE0, KDATA0, KCODE1, KDATA1 = 0x08, 0x10, 0x19, 0x21
REGS = ("eax", "ebx", "ecx", "edx", "esi", "edi", "ebp", "esp")
_R = {n: getattr(u, f"UC_X86_REG_{n.upper()}") for n in REGS}
ARITH = 0x8D5 | 0x400          # CF PF AF ZF SF OF, and DF

_ks = Ks(KS_ARCH_X86, KS_MODE_32)


def asm(src: str, addr: int) -> bytes:
    return bytes(_ks.asm(src, addr)[0])


def _descriptor(access: int) -> bytes:
    return struct.pack("<HHBBBB", 0xFFFF, 0, 0, access, 0xCF, 0)


class UcMemory:
    def __init__(self, uc: Uc) -> None:
        self.uc = uc

    def read(self, address: int, size: int) -> bytes:
        return bytes(self.uc.mem_read(address, size))

    def write(self, address: int, data: bytes) -> None:
        self.uc.mem_write(address, data)
        self.uc.ctl_remove_cache(address, address + len(data))

    # WriteWatch: one Unicorn write hook per window (tests are small).
    manager: PatchManager | None = None

    def watch(self, start: int, end: int) -> object:
        def on_write(uc: Uc, _a: int, address: int, size: int, _v: int, _d: object) -> None:
            assert self.manager is not None
            self.manager.on_guest_write(address, size)
        return self.uc.hook_add(UC_HOOK_MEM_WRITE, on_write, None, start, end - 1)

    def unwatch(self, handle: object) -> None:
        self.uc.hook_del(handle)


@dataclass
class LinearCode:
    """A CodeMap for one straight-line function: one block, its entry the only target."""

    start: int
    end: int
    targets: set[int] = field(default_factory=set)

    def block_of(self, address: int) -> tuple[int, int] | None:
        if not self.start <= address < self.end:
            return None
        starts = sorted(t for t in self.targets | {self.start} if t <= address)
        nxt = [t for t in self.targets if t > address] + [self.end]
        return starts[-1], min(nxt)

    def is_branch_target(self, address: int) -> bool:
        return address == self.start or address in self.targets


def machine(code: bytes, cpl: int, eflags: int) -> Uc:
    uc = new_engine(SCRATCH_TCG_BUFFER)
    uc.mem_map(0, 0x100000)
    uc.mem_map(layout.VMM_BASE, layout.VMM_SIZE)
    gdt = b"\0" * 8 + b"".join(_descriptor(a) for a in (0x9A, 0x92, 0xBA, 0xB2, 0xFA, 0xF2))
    uc.mem_write(GDT, gdt)
    uc.reg_write(u.UC_X86_REG_GDTR, (0, GDT, len(gdt) - 1, 0))
    uc.reg_write(u.UC_X86_REG_CR0, uc.reg_read(u.UC_X86_REG_CR0) | 1)
    for reg, sel in ((u.UC_X86_REG_CS, KCODE0), (u.UC_X86_REG_SS, KDATA0),
                     (u.UC_X86_REG_DS, KDATA0), (u.UC_X86_REG_ES, KDATA0)):
        uc.reg_write(reg, sel)
    uc.mem_write(CODE, code)
    if cpl == 1:
        uc.mem_write(BOOT, asm(f"push {KDATA1}\npush {STACK_TOP}\npush {eflags:#x}\npush {KCODE1}\n"
                               f"push {CODE}\niretd", BOOT))
        uc.reg_write(u.UC_X86_REG_ESP, 0x8000)
    else:
        uc.reg_write(u.UC_X86_REG_ESP, STACK_TOP)
        uc.reg_write(u.UC_X86_REG_EFLAGS, eflags)
    return uc


@dataclass
class Outcome:
    regs: dict[str, int]
    flags: int               # arithmetic flags
    virtual_if: int          # IF as the guest kernel sees it
    stack: bytes
    data: bytes
    exits: list[Operation | None]
    resumes: list[int] = field(default_factory=list)
    traps: list[Operation] = field(default_factory=list)


def run_native(src: str, regs: dict[str, int], flags: int, guest_if: int) -> Outcome:
    """The reference: the code at CPL 0, where CLI/STI/POPF really act."""
    code = asm(src, CODE)
    uc = machine(code + b"\x90", 0, (flags & ARITH) | 2 | (0x200 if guest_if else 0))
    for n, v in regs.items():
        uc.reg_write(_R[n], v)
    uc.emu_start(CODE, CODE + len(code))
    efl = uc.reg_read(u.UC_X86_REG_EFLAGS)
    return _outcome(uc, efl & 0x200, [])


def run_patched(src: str, regs: dict[str, int], flags: int, guest_if: int,
                config: PatchConfig | None = None, sites: list[int] | None = None,
                targets: set[int] | None = None, pending: int = 0,
                state: dict[str, bytes] | None = None,
                rules: RuleSet | None = None, enter_at: int | None = None,
                stack: tuple[int, ...] = ()) -> tuple[Outcome, PatchManager]:
    """The same code at CPL 1, every sensitive site patched up front. `enter_at`: start at
    that guest address (through `resume_at`, as the runtime continues a guest) with
    `stack` pushed, instead of at the start."""
    code = asm(src, CODE)
    end = CODE + len(code)
    uc = machine(code + b"\x90", 1, (flags & ARITH) | 2 | 0x200)
    mem = UcMemory(uc)
    mem.write(layout.state("vflags"), struct.pack("<I", 0x2 | (0x200 if guest_if else 0)))
    mem.write(layout.state("pending"), struct.pack("<I", pending))
    for name, value in (state or {}).items():
        mem.write(layout.state(name), value)
    from capstone import CS_ARCH_X86, CS_GRP_BRANCH_RELATIVE, CS_GRP_CALL, CS_GRP_JUMP, CS_MODE_32, Cs
    from capstone import x86_const as x

    from bt import isa
    cs = Cs(CS_ARCH_X86, CS_MODE_32)
    cs.detail = True
    insns = list(cs.disasm(code, CODE))
    found = [i.address for i in insns if isa.classify(i) is not None]  # every sensitive site
    if targets is None:   # every relative jump or call target, as a scanner would find them
        targets = {i.operands[0].imm for i in insns
                   if (i.group(CS_GRP_JUMP) or i.group(CS_GRP_CALL) or i.group(CS_GRP_BRANCH_RELATIVE))
                   and i.operands and i.operands[0].type == x.X86_OP_IMM}
    mgr = PatchManager(config or PatchConfig(eager=True), mem, LinearCode(CODE, end, targets), rules=rules,
                       watch=mem)
    mem.manager = mgr
    mgr.patch_all(sites if sites is not None else found)
    exits: list[Operation | None] = []
    resumes: list[int] = []
    traps: list[Operation] = []

    def on_intr(uc: Uc, vector: int, _: object) -> None:
        eip = uc.reg_read(u.UC_X86_REG_EIP)
        if vector == 13:          # a trap of an unpatched CLI/STI: what the runtime does, in small
            insn = next(cs.disasm(mem.read(eip, 16), eip))
            op = isa.decode(insn)
            assert op.cls in ("cli", "sti"), op
            vf = struct.unpack("<I", mem.read(layout.state("vflags"), 4))[0]
            vf = (vf | 0x200) if op.cls == "sti" else (vf & ~0x200)
            mem.write(layout.state("vflags"), struct.pack("<I", vf))
            traps.append(op)
            mgr.on_trap(op)
            uc.reg_write(u.UC_X86_REG_EIP, mgr.resume_at(op.next_address))
            return
        record = mgr.exit_at(eip - 1) if vector == 3 else None
        if record is None:
            raise AssertionError(f"unexpected vector {vector} at {eip:#x}")
        exits.append(record.op)
        resumes.append(record.resume)
        uc.reg_write(u.UC_X86_REG_EIP, record.resume)

    latch = ExceptionLatch(uc)      # a handled #GP must not turn the next one into #DF (notes #3)

    def on_intr_cleared(uc: Uc, vector: int, data: object) -> None:
        on_intr(uc, vector, data)
        if vector == 13:
            latch.clear()

    uc.hook_add(UC_HOOK_INTR, on_intr_cleared)
    # Registers are set once ring 1 is entered (the IRETD stub uses the stack).
    uc.emu_start(BOOT, CODE)
    for n, v in regs.items():
        if n != "esp":
            uc.reg_write(_R[n], v)
    for word in stack:
        esp = uc.reg_read(u.UC_X86_REG_ESP) - 4
        uc.mem_write(esp, struct.pack("<I", word))
        uc.reg_write(u.UC_X86_REG_ESP, esp)
    uc.emu_start(CODE if enter_at is None else mgr.resume_at(enter_at), end, count=100_000)
    assert uc.reg_read(u.UC_X86_REG_EIP) == end
    efl = uc.reg_read(u.UC_X86_REG_EFLAGS)
    assert efl & 0x3200 == 0x200, "real IF must stay 1 and real IOPL 0"
    vflags = struct.unpack("<I", mem.read(layout.state("vflags"), 4))[0]
    out = _outcome(uc, vflags & 0x200, exits)
    out.resumes = resumes
    out.traps = traps
    return out, mgr


def _outcome(uc: Uc, vif: int, exits: list[Operation | None]) -> Outcome:
    regs = {n: uc.reg_read(_R[n]) for n in REGS}
    efl = uc.reg_read(u.UC_X86_REG_EFLAGS)
    return Outcome(regs, efl & ARITH, vif, bytes(uc.mem_read(STACK_TOP - 64, 64)),
                   bytes(uc.mem_read(DATA, 32)), exits)
