"""bt.isa: the instruction table, its classification, and Unicorn's behaviour as the probe measures it."""

from __future__ import annotations

import pytest
import unicorn_probe as probe
from capstone import CS_ARCH_X86, CS_MODE_32, CS_MODE_64, Cs
from keystone import KS_ARCH_X86, KS_MODE_32, KS_MODE_64, Ks

from bt import isa
from bt.errors import Ring1Error, UsageError

FIXED_NAMES = """cli sti pushf popf hlt mov_from_cr mov_to_cr mov_from_dr mov_to_dr lgdt lidt lldt ltr sgdt
sidt sldt str smsw lmsw clts invd wbinvd invlpg rdmsr wrmsr rdtsc rdtscp rdpmc cpuid in out ins outs iret
lar lsl verr verw push_sreg pop_sreg mov_from_sreg mov_to_sreg far_call far_jmp far_ret int_n int3 into
sysenter sysexit syscall sysret swapgs""".split()


def _insn(src: str, bits: int = 32):
    """Assemble `src` with Keystone ("hex:..." gives the bytes directly) and decode it with detail."""
    if src.startswith("hex:"):
        code = bytes.fromhex(src[4:])
    else:
        ks = Ks(KS_ARCH_X86, KS_MODE_64 if bits == 64 else KS_MODE_32)
        code = bytes(ks.asm(src, 0x1000)[0])
    md = Cs(CS_ARCH_X86, CS_MODE_64 if bits == 64 else CS_MODE_32)
    md.detail = True
    return next(md.disasm(code, 0x1000))


def test_fixed_class_names_exist():
    missing = [n for n in FIXED_NAMES if n not in isa.NAMES]
    assert not missing


def test_rows_are_complete_and_unique():
    assert len(set(isa.NAMES)) == len(isa.NAMES)
    ids = [i for c in isa.CLASSES for i in c.ids]
    assert len(ids) == len(set(ids)), "a Capstone id belongs to two rows"
    for c in isa.CLASSES:
        assert c.why and c.mnemonics and c.modes <= {32, 64}, c.name
        if c.handling in (isa.Handling.INLINE, isa.Handling.HYPERCALL, isa.Handling.INT3):
            assert c.rule, f"{c.name}: a patch handling needs a rule family"
        if c.handling is isa.Handling.NONE:
            assert c.note, f"{c.name}: 'none' needs the reason in note"


def test_by_name_unknown_is_a_usage_error():
    assert isa.by_name("cli").name == "cli"
    with pytest.raises(UsageError) as err:
        isa.by_name("nope")
    assert isinstance(err.value, Ring1Error) and err.value.exit_code == 2


CLASSIFIED = """
cli                     | 32 | cli
sti                     | 64 | sti
pushfd                  | 32 | pushf
pushfq                  | 64 | pushf
popfd                   | 32 | popf
mov eax, cr3            | 32 | mov_from_cr
mov cr0, eax            | 32 | mov_to_cr
mov rax, cr8            | 64 | mov_from_cr
mov eax, dr7            | 32 | mov_from_dr
mov dr0, eax            | 32 | mov_to_dr
lgdt [eax]              | 32 | lgdt
sidt [eax]              | 32 | sidt
str ax                  | 32 | str
smsw ax                 | 32 | smsw
in al, dx               | 32 | in
out 0x80, al            | 32 | out
rep insb                | 32 | ins
outsd                   | 32 | outs
iretd                   | 32 | iret
iretq                   | 64 | iret
push cs                 | 32 | push_sreg
push ss                 | 32 | push_sreg
pop ss                  | 32 | pop_sreg
mov eax, cs             | 32 | mov_from_sreg
mov word ptr [eax], ss  | 32 | mov_from_sreg
mov ss, ax              | 32 | mov_to_sreg
ljmp 8:0x1000           | 32 | far_jmp
ljmp [eax]              | 32 | far_jmp
hex:48ff28              | 64 | far_jmp
lcall [eax]             | 32 | far_call
retf                    | 32 | far_ret
hex:48cb                | 64 | far_ret
int 0x80                | 32 | int_n
int3                    | 32 | int3
into                    | 32 | into
sysenter                | 32 | sysenter
sysexit                 | 32 | sysexit
syscall                 | 64 | syscall
sysret                  | 64 | sysret
hex:480f07              | 64 | sysret
swapgs                  | 64 | swapgs
wrmsr                   | 64 | wrmsr
rdtscp                  | 64 | rdtscp
lar eax, ecx            | 32 | lar
verw cx                 | 32 | verw
lss esp, [eax]          | 32 | lss
"""


def _cases(table: str) -> list[tuple[str, int, str]]:
    rows = [[c.strip() for c in line.split("|")] for line in table.strip().splitlines()]
    return [(src, int(bits), name) for src, bits, name in rows]


@pytest.mark.parametrize(("src", "bits", "name"), _cases(CLASSIFIED))
def test_classify(src, bits, name):
    cls = isa.classify(_insn(src, bits))
    assert cls is not None and cls.name == name
    op = isa.decode(_insn(src, bits))
    assert op.cls == name and op.address == 0x1000


@pytest.mark.parametrize(("src", "bits"), [
    ("mov eax, ebx", 32), ("mov ds, ax", 32), ("push ds", 32), ("pop es", 32), ("push eax", 32),
    ("jmp dword ptr [eax]", 32), ("call eax", 32), ("jmp qword ptr [rax]", 64), ("nop", 64), ("ret", 32),
])
def test_not_sensitive(src, bits):
    assert isa.classify(_insn(src, bits)) is None


# What the probe (tests/unicorn_probe.py) prints, mapped to the table's `unicorn` column.
def _verdict(outcome: list[str]) -> isa.Unicorn:
    first = outcome[0] if outcome else ""
    if first == "vector 13 at the probed instruction":
        return isa.Unicorn.GP
    if first.endswith("hook"):
        return isa.Unicorn.IO_HOOK
    if first.startswith("vector 13"):
        return isa.Unicorn.SILENT
    if first.startswith("vector "):
        return isa.Unicorn.SOFT_INT
    if "INSN_INVALID" in first:
        return isa.Unicorn.INVALID
    raise AssertionError(f"unexpected probe outcome {outcome}")


# Probe lines whose instruction is deliberately not a row, and why.
NOT_A_ROW = {
    "mov ds, ax": "faults only with the probe's flat DPL-0 GDT; ring1 shadows DPL-0 descriptors "
                  "as DPL 1 (SELM)",
}


#: Where the VMM's real CPU state is not the probe's bare machine (CR4 = 0): ring1 keeps the
#: real CR4.TSD set (runtime/machine.py), so RDTSC, silent on the probe, faults under the VMM.
UNDER_THE_VMM = {"rdtsc": (isa.Unicorn.SILENT, isa.Unicorn.GP)}


def test_unicorn_column_agrees_with_the_probe():
    wrong = []
    for src in probe.INSTRUCTIONS:
        cls = isa.classify(_insn(src))
        if cls is None:
            assert src in NOT_A_ROW, f"{src!r} is probed but not classified"
            continue
        seen = _verdict(probe.probe(src))
        if src in UNDER_THE_VMM:
            bare, vmm = UNDER_THE_VMM[src]
            if seen is not bare:
                wrong.append(f"{src}: the probe's bare machine should see {bare.value}, saw {seen.value}")
            seen = vmm
        if cls.unicorn is not isa.Unicorn.DEPENDS and cls.unicorn is not seen:
            wrong.append(f"{src}: table says {cls.unicorn.value}, probe saw {seen.value}")
    assert not wrong, "\n".join(wrong)


def test_maybe_silent_passes_every_silent_instruction_and_drops_plain_code() -> None:
    # The rescan's pre-filter (patchmgr/rescan.py) decodes without Capstone's detail: it must
    # let every instruction of a silent row through, whatever its operands.
    from capstone import CS_ARCH_X86, CS_MODE_32, Cs
    from keystone import KS_ARCH_X86, KS_MODE_32, Ks

    ks, cs = Ks(KS_ARCH_X86, KS_MODE_32), Cs(CS_ARCH_X86, CS_MODE_32)
    cs_full = Cs(CS_ARCH_X86, CS_MODE_32)
    cs_full.detail = True

    def lite(src: str) -> tuple[str, str, str | None]:
        code = bytes(ks.asm(src, 0x1000)[0] or b"")
        _a, _s, mnemonic, op_str = next(cs.disasm_lite(code, 0x1000, 1))
        return mnemonic, op_str, isa.decode(next(cs_full.disasm(code, 0x1000, 1))).cls

    silent = ["mov eax, cs", "mov word ptr [eax], ss", "mov ax, ds", "mov word ptr [esp+4], gs", "push cs",
              "push ss", "push ds", "push es", "push fs", "push gs", "pushfd", "pushf", "popfd", "popf",
              "sgdt [eax]", "sidt [eax]", "sldt ax", "str ax", "smsw ax", "lar eax, ecx", "lsl eax, ecx",
              "verr ax", "verw ax", "cpuid", "sysenter"]
    classes = set()
    for src in silent:     # some of these are no row's (MOV from DS is not sensitive): only rows count
        mnemonic, op_str, cls = lite(src)
        if cls is not None and isa.by_name(cls).unicorn is isa.Unicorn.SILENT:
            classes.add(cls)
            assert isa.maybe_silent(mnemonic, op_str), src
    assert {"mov_from_sreg", "push_sreg", "pushf", "popf", "sgdt", "sidt", "sldt", "str", "smsw", "lar",
            "lsl", "verr", "verw", "cpuid"} <= classes
    for src in ["mov eax, ebx", "mov dword ptr [eax], 5", "push eax", "push 0x10", "add eax, 1", "jmp 0x1000",
                "ret", "lea eax, [ebx+ecx*4]"]:
        mnemonic, op_str, cls = lite(src)
        assert cls is None and not isa.maybe_silent(mnemonic, op_str), src
