"""No guest action ends in exit 8 (issue 11, item 10): hostile or merely unusual guest
operations each end as the guest's own exception, its exit status, or a clean stop with a
reason (exit 4), never as an internal error. The operations are those that once reached
the VMM's emulation with state it did not check, and their neighbours.

The attack guests (tests/test_attacks.py) compare what QEMU does; these cover what ring1
does not emulate (a clean stop is the documented answer) and the VMM's own addresses.
"""

from __future__ import annotations

import random
import struct

import pytest
from runtime_guest import GDT, KCODE, RESULTS, USER, gdt_bytes, kernel, run, to_user, words

from bt import layout
from bt.errors import GuestStop
from runtime import segments
from runtime.segments import call_gate, segment
from runtime.vm import RunResult

# A handler for every exception that records its vector and exits 1.
RECORD = f"""
    mov dword ptr [{RESULTS:#x}], {{vector}}
    mov eax, [esp]
    mov [{RESULTS + 4:#x}], eax
    mov al, 0
    out 0xf4, al
    hlt
"""
HANDLERS = {v: (RECORD.format(vector=v), 3 if v == 0x80 else 0, False)
            for v in (0, 6, 8, 10, 11, 12, 13, 14, 0x80)}


def _gdt_with(index: int, desc: bytes) -> tuple[tuple[int, bytes], ...]:
    """The test GDT (runtime_guest: slots 0-5) with one more descriptor, loaded by LGDT again."""
    table = bytearray(gdt_bytes().ljust(8 * (index + 1), b"\0"))
    table[index * 8:index * 8 + 8] = desc
    return ((GDT, bytes(table)), (0x20F00, struct.pack("<HI", len(table) - 1, GDT)))


RELOAD_GDT = ".byte 0x0f, 0x01, 0x15\n.long 0x20f00\n"
WRMSR = "mov ecx, {msr:#x}\nmov eax, {value:#x}\nxor edx, edx\nwrmsr\n"


def _outcome(result: RunResult | GuestStop) -> str:
    if isinstance(result, GuestStop):
        return f"stop: {result.reason}"
    return f"exit {result.exit_status}"


CASES = [
    # (name, kernel source, extra chunks, user source, expected outcome prefix, vector)
    ("mov ss, a DPL-3 selector", "mov ax, 0x20\nmov ss, ax\n", (), None, "exit 1", 13),
    ("mov ss, null", "xor eax, eax\nmov ss, ax\n", (), None, "exit 1", 13),
    ("iret into virtual-8086 mode",
     "push 0\npush 0\npush 0\npush 0\npush 0x2000\npush 0x8000\npush 0x20202\npush 0x1000\npush 0\niretd\n",
     (), None, "stop: virtual-8086 mode is not supported", None),
    ("far jump to a TSS", ".byte 0xea\n.long 0\n.word 0x28\n", (), None,
     "stop: hardware task switch", None),
    ("lcall through a 16-bit call gate", RELOAD_GDT + ".byte 0x9a\n.long 0\n.word 0x30\n",
     _gdt_with(6, call_gate(KCODE, 0x100000, 0).with_access(0x84).to_bytes()), None,
     "stop: 16-bit call gates are not supported", None),
    ("sysenter, SYSENTER_CS a data segment", WRMSR.format(msr=0x174, value=0x10) + "sysenter\n", (), None,
     "stop: SYSENTER_CS names no ring-0 code segment", None),
    ("syscall with EFER.SCE", WRMSR.format(msr=0xC0000080, value=1) + "syscall\n", (), None,
     "stop: SYSCALL with EFER.SCE = 1", None),
    ("syscall", "syscall\n", (), None, "exit 1", 6),
    ("the kernel jumps into the VMM's stub",
     f"mov eax, {layout.VMM_CODE + 0x40:#x}\njmp eax\n", (), None, "stop: INT3 in VMM memory", None),
    ("the kernel writes the real GDT",
     f"mov dword ptr [{layout.VMM_GDT + 8:#x}], 0\nmov al, 0\nout 0xf4, al\n", (), None, "exit 1", None),
    ("ltr of the VMM's TSS", f"mov ax, {segments.VMM_TSS:#x}\nltr ax\n", (), None, "exit 1", 13),
    ("lldt of the VMM's LDT", f"mov ax, {segments.VMM_LDT:#x}\nlldt ax\n", (), None, "exit 1", 13),
    ("a GDT with a descriptor in the VMM's slots",
     "mov word ptr [0x20f00], 0xffff\n" + RELOAD_GDT,
     ((GDT + layout.VMM_GDT_FIRST_SLOT * 8, segment(0, 0xFFFFFFFF, 0x9A).to_bytes()),), None,
     "stop: guest GDT holds descriptors in the VMM's slots", None),
    ("ring 3 jumps to the VMM's trampoline", to_user(), (), f"mov eax, {layout.VMM_USER_PAGE:#x}\njmp eax\n",
     "exit 1", 13),
    ("ring 3 calls into the VMM's stub", to_user(), (), f"mov eax, {layout.VMM_CODE + 0x40:#x}\ncall eax\n",
     "exit 1", 13),
    ("ring 3 writes the patch-writable state page", to_user(), (),
     f"mov dword ptr [{layout.PATCH_STATE_BASE:#x}], 0x3000\nint 0x80\n", "exit 1", 13),
    ("ring 3 lcalls the VMM's gate", to_user(), (), f".byte 0x9a\n.long 0\n.word {segments.VMM_GATE:#x}\n",
     "exit 1", 13),
    ("int to a gate whose handler segment is DPL 3",
     RELOAD_GDT + "int 0x40\n",
     (*_gdt_with(6, segment(0, 0xFFFFFFFF, 0xFA).to_bytes()),
      (0x21000 + 0x40 * 8, struct.pack("<HHBBH", 0x1000, 0x30, 0, 0x8E, 0x0010))), None, "exit 1", 13),
]


@pytest.mark.parametrize("name, src, chunks, user, expect, vector", CASES, ids=[c[0] for c in CASES])
def test_hostile_guest_operations_end_cleanly(name: str, src: str, chunks: tuple[tuple[int, bytes], ...],
                                              user: str | None, expect: str, vector: int | None) -> None:
    vm, result = run(kernel(src, handlers=HANDLERS, user=user, chunks=chunks), max_insns=200_000)
    assert _outcome(result).startswith(expect), result
    if vector is not None:
        assert words(vm, RESULTS, 1)[0] == vector


def test_a_call_gate_to_ring0_with_a_bad_tss_stack_is_a_triple_fault() -> None:
    # SS0 null in the guest's TSS: the gate raises #TS(0), whose own delivery from ring 3
    # needs that same stack: #TS again, #DF, triple fault (QEMU shuts down the same way).
    gate = call_gate(KCODE, 0x100000, 3).to_bytes()
    src = "mov dword ptr [0x22008], 0\n" + RELOAD_GDT + to_user()
    user = ".byte 0x9a\n.long 0\n.word 0x33\n"
    _vm, result = run(kernel(src, handlers=HANDLERS, user=user, chunks=_gdt_with(6, gate)))
    assert isinstance(result, GuestStop) and result.reason == "triple fault", result


@pytest.mark.parametrize("ss0", [0, 0x08, 0x0B, 0x1B, 0x23, 0x30, 0x38])
def test_an_interrupt_from_ring3_onto_a_bad_tss_ss0_is_a_triple_fault(ss0: int) -> None:
    # Null, code, RPL 3, DPL 3, not present (slot 6), beyond the GDT: the CPU raises #TS or
    # #SS for SS0, whose delivery needs the same stack (QEMU shuts down). Reported at the
    # user instruction, never at the VMM's trampoline.
    src = f"mov dword ptr [0x22008], {ss0}\n" + RELOAD_GDT + to_user()
    chunks = _gdt_with(6, segment(0, 0xFFFFFFFF, 0x12).to_bytes())
    _vm, result = run(kernel(src, handlers=HANDLERS, user="int 0x80\n", chunks=chunks))
    assert isinstance(result, GuestStop) and result.reason == "triple fault", result
    assert result.eip == USER + 2


def test_ring3_on_the_trampoline_sees_its_own_fault_not_the_vmms() -> None:
    # With paging off the VMM's top 4 MiB is out of ring 3's reach by its page rights: the
    # guest gets #GP(0) at its own jump target, and the VMM keeps running.
    user = f"mov eax, {layout.VMM_USER_PAGE + 9:#x}\njmp eax\n"
    vm, result = run(kernel(to_user(), handlers=HANDLERS, user=user))
    assert isinstance(result, RunResult) and result.exit_status == 1
    vector, error = words(vm, RESULTS, 2)
    assert (vector, error) == (13, 0)
    assert vm.cpu.read_name("cs") & 3 == 1


def _random_cases(seed: int, count: int) -> list[tuple[str, bool]]:
    """Random privileged and sensitive instructions with random operands (selectors of
    every kind, ring1's own, MSRs, control registers, frames, ports), at CPL 0 or in ring 3."""
    rng = random.Random(seed)

    def sel() -> int:
        return rng.choice([0, 8, 0x10, 0x1B, 0x23, 0x28, 0x2B, segments.VMM_CS0, segments.VMM_GATE,
                           rng.randrange(0x10000)])

    def word() -> int:
        return rng.choice([0, 0x100000, layout.VMM_BASE, layout.PATCH_BASE, 0xFFFFFFFF,
                           rng.randrange(1 << 32)])

    out = []
    for _ in range(count):
        a, b, s = word(), word(), sel()
        src = rng.choice([
            f"mov ax, {s}\nmov {rng.choice(['ds', 'es', 'fs', 'gs', 'ss'])}, ax\n",
            f".byte {rng.choice(['0xea', '0x9a'])}\n.long {a}\n.word {s}\n",
            f"mov ax, {s}\n{rng.choice(['ltr', 'lldt', 'verr', 'verw'])} ax\n",
            f"mov eax, {a}\nmov {rng.choice(['cr0', 'cr3', 'cr4'])}, eax\n",
            f"mov ecx, {rng.choice([0x174, 0x176, 0xC0000080, a])}\nmov eax, {b}\nxor edx, edx\n"
            f"{rng.choice(['wrmsr', 'rdmsr'])}\n",
            "".join(f"push {word()}\n" for _ in range(5)) + rng.choice(["iretd\n", "retf\n", "retf 8\n"]),
            f"int {rng.randrange(256)}\n",
            f"mov ecx, 0x174\nmov eax, {s}\nxor edx, edx\nwrmsr\n"
            f"{rng.choice(['sysenter', 'sysexit', 'syscall'])}\n",
            f"mov edx, {rng.randrange(0x10000)}\n"
            f"{rng.choice(['in al, dx', 'out dx, al', 'rep insb'])}\n",
            f"push {a}\npopfd\n{rng.choice(['cli', 'sti', 'iretd'])}\n",
            f"mov eax, {a}\njmp eax\n",
            f"mov eax, {a}\nmov dword ptr [eax], {b}\n",
            ".byte " + ", ".join(str(rng.randrange(256)) for _ in range(12)) + "\n",
        ])
        out.append((src, rng.random() < 0.35))
    return out


@pytest.mark.parametrize("seed", [11, 12])
def test_random_hostile_instructions_never_end_in_an_internal_error(seed: int) -> None:
    # Every exception goes to one handler that ends the run; whatever the instruction does,
    # the run ends with the guest's status or a clean stop (an InternalError fails the test).
    handlers = {v: (f"mov dword ptr [{RESULTS:#x}], 1\nmov al, 0\nout 0xf4, al\nhlt\n", 3, False)
                for v in (*range(32), 0x80)}
    for src, user in _random_cases(seed, 25):
        if user:
            image = kernel(to_user(), handlers=handlers, user=src + "int 0x80\n")
        else:
            image = kernel(src + "mov al, 0\nout 0xf4, al\nhlt\n", handlers=handlers)
        _vm, result = run(image, max_insns=200_000)
        assert isinstance(result, RunResult | GuestStop), (src, result)
