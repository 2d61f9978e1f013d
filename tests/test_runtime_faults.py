"""Faults against the reference: #PF error codes for every present/write/user combination and
the delivery edge cases (IDT limit, gate not present, bad gate type, a #PF while delivering,
double and triple fault), each guest run under ring1 and under QEMU (tests/refguest.py),
and QEMU's answer checked against the one the Intel SDM gives (vol. 3 §4.7 for the #PF
error code, §6.12-6.15 and table 6-5 for delivery)."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pytest
from refguest import Outcome, hexlines, run_reference, run_ring1, write_elf
from runtime_guest import HANDLERS, IDT, IDTR, KCODE, KERNEL, USER, asm, gate, kernel, to_user

from runtime.config import RunConfig
from runtime.vm import Vm

PD, PT = 0x30000, 0x31000
#: The page every #PF case touches: its PTE (or, for PDE_CASE, its PDE) is the case's.
PAGE = 0x380000
#: A linear address under page-directory entry 2, which the cases leave not present.
NO_PDE = 0x800000

#: A #PF handler: prints the error code, the frame's EIP and CS, CR2; exits with 14.
PF_REPORT = """
    mov eax, [esp]
    call {p}
    mov eax, [esp + 4]
    call {p}
    mov eax, [esp + 8]
    call {p}
    mov eax, cr2
    call {p}
    mov al, 14
    out 0xf4, al
"""
#: A handler for `vector`: prints [esp] (the error code when there is one), exits with `vector`.
REPORT = """
    mov eax, [esp]
    call {p}
    mov al, {vector}
    out 0xf4, al
"""


def _handler(template: str, vector: int = 0) -> str:
    return template.format(p="0x1e0000", vector=vector)


def _tables(pte: int, pde2: int = 0) -> tuple[tuple[int, bytes], ...]:
    """Identity-map 4 MiB with user-writable 4 KiB pages; PAGE gets `pte`, PDE 2 `pde2`."""
    pd, pt = bytearray(4096), bytearray(4096)
    for i in range(1024):
        struct.pack_into("<I", pt, i * 4, (i << 12) | 0x7)
    struct.pack_into("<I", pt, ((PAGE >> 12) & 0x3FF) * 4, pte)
    struct.pack_into("<II", pd, 0, PT | 0x7, 0)
    struct.pack_into("<I", pd, 8, pde2)
    return ((PD, bytes(pd)), (PT, bytes(pt)))


def paging(wp: bool = True) -> str:
    bits = 0x80000000 | (0x10000 if wp else 0)        # PG, and WP when asked
    return f"mov eax, {PD:#x}\nmov cr3, eax\nmov eax, cr0\nor eax, {bits:#x}\nmov cr0, eax\n"


# What the CPU pushes: P (bit 0) the page was present, W (bit 1) a write, U (bit 2) from CPL 3.
# Supervisor accesses of a present page fault only on writes to a read-only page with CR0.WP.
# With 32-bit paging (no PAE/NX, no SMEP) an instruction fetch sets no I/D bit (SDM §4.7).
READ, WRITE, FETCH = "mov eax, [{a:#x}]", "mov dword ptr [{a:#x}], 0x55", "mov eax, {a:#x}\njmp eax"
PF_CASES = [
    # id, who, access, PTE of PAGE, address, error code
    ("kernel-read-not-present", "kernel", READ, 0x0, PAGE, 0),
    ("kernel-write-not-present", "kernel", WRITE, 0x0, PAGE, 2),
    ("kernel-fetch-not-present", "kernel", FETCH, 0x0, PAGE, 0),
    ("kernel-write-read-only", "kernel", WRITE, PAGE | 0x1, PAGE + 4, 3),
    ("kernel-write-read-only-user-page", "kernel", WRITE, PAGE | 0x5, PAGE, 3),
    ("kernel-write-no-pde", "kernel", WRITE, PAGE | 0x7, NO_PDE + 8, 2),
    ("user-read-not-present", "user", READ, 0x0, PAGE, 4),
    ("user-write-not-present", "user", WRITE, 0x0, PAGE + 0xFFC, 6),
    ("user-fetch-not-present", "user", FETCH, 0x0, PAGE, 4),
    ("user-read-supervisor", "user", READ, PAGE | 0x3, PAGE, 5),
    ("user-write-supervisor", "user", WRITE, PAGE | 0x3, PAGE, 7),
    ("user-write-supervisor-read-only", "user", WRITE, PAGE | 0x1, PAGE, 7),
    ("user-write-read-only", "user", WRITE, PAGE | 0x5, PAGE, 7),
    ("user-fetch-supervisor", "user", FETCH, PAGE | 0x3, PAGE, 5),
    ("user-read-no-pde", "user", READ, PAGE | 0x7, NO_PDE, 4),
    ("user-write-no-pde", "user", WRITE, PAGE | 0x7, NO_PDE, 6),
]


def _same(ours: Outcome, theirs: Outcome) -> None:
    assert ours.serial == theirs.serial, f"ring1 printed\n{ours.serial.decode()}QEMU printed\n" \
                                         f"{theirs.serial.decode()}"
    assert (ours.status, ours.stop) == (theirs.status, theirs.stop)


@pytest.mark.parametrize("who, access, pte, address, error", [c[1:] for c in PF_CASES],
                         ids=[c[0] for c in PF_CASES])
def test_page_fault_error_code_matches_qemu(tmp_path: Path, who: str, access: str, pte: int, address: int,
                                            error: int):
    insn = access.format(a=address)
    handlers = {14: (_handler(PF_REPORT), 0, False)}
    if who == "kernel":
        img = kernel(paging() + insn + "\nhlt\n", handlers=handlers, chunks=_tables(pte))
        eip, cs = 0, KCODE
    else:
        img = kernel(paging() + to_user(), handlers=handlers, user=insn + "\nhlt\n", chunks=_tables(pte))
        eip, cs = USER, 0x1B
    elf = write_elf(img, tmp_path / "pf.elf")
    ours, _vm = run_ring1(elf)
    theirs = run_reference(elf)
    frame_eip = address if access is FETCH else eip
    if who == "kernel" and access is not FETCH:
        # The frame's EIP is the faulting instruction, somewhere in the kernel's code.
        frame_eip = int(theirs.serial.split(b"\n")[1], 16)
        code = dict(img.chunks)[KERNEL]
        want = asm(insn, frame_eip)
        assert code[frame_eip - KERNEL:frame_eip - KERNEL + len(want)] == want, "not the faulting instruction"
    assert theirs.serial == hexlines(error, frame_eip, cs, address), "QEMU disagrees with the SDM"
    assert theirs.status == (14 << 1) | 1
    _same(ours, theirs)


def test_a_supervisor_write_to_a_read_only_page_without_wp_does_not_fault(tmp_path: Path):
    src = paging(wp=False) + f"mov dword ptr [{PAGE:#x}], 0x55\nmov eax, [{PAGE:#x}]\ncall 0x1e0000\n" \
        "mov al, 0\nout 0xf4, al\n"
    elf = write_elf(kernel(src, handlers={14: (_handler(PF_REPORT), 0, False)}, chunks=_tables(PAGE | 0x1)),
                    tmp_path / "nowp.elf")
    theirs = run_reference(elf)
    assert theirs.serial == hexlines(0x55) and theirs.status == 1
    _same(run_ring1(elf)[0], theirs)


# -- delivery ---------------------------------------------------------------------------------------

def _idt_limit(limit: int) -> tuple[int, bytes]:
    return (IDTR, struct.pack("<HI", limit, IDT))


def _gate_bytes(vector: int, access: int) -> tuple[int, bytes]:
    """Gate `vector` pointing at its handler slot, with the access byte given (P, DPL, type)."""
    offset = HANDLERS + vector * 0x100
    return (IDT + vector * 8, struct.pack("<HHBBH", offset & 0xFFFF, KCODE, 0, access, offset >> 16))


NOT_PRESENT = 0x0E          # a 32-bit interrupt gate with P = 0
BAD_TYPE = 0x8C             # present, type 0xC: a call gate, not allowed in an IDT
REPORTERS = {v: (_handler(REPORT, v), 0, False) for v in (8, 10, 11, 12, 13)}

# id, kernel code, extra chunks, error code printed, exit value (the handler that ran)
DELIVERY_CASES = [
    # INT n beyond the IDT limit: #GP(vector * 8 + 2), IDT bit set, EXT clear (software).
    ("int-n-beyond-limit", "int 0x40\nhlt\n", (_idt_limit(0x20 * 8 - 1),), 0x40 * 8 + 2, 13),
    # INT n through a gate with P = 0: #NP(vector * 8 + 2).
    ("int-n-gate-not-present", "int 0x40\nhlt\n", (_gate_bytes(0x40, NOT_PRESENT),), 0x40 * 8 + 2, 11),
    ("int3-gate-not-present", "int3\nhlt\n", (_gate_bytes(3, NOT_PRESENT),), 3 * 8 + 2, 11),
    # A call gate in the IDT: #GP(vector * 8 + 2).
    ("int-n-bad-gate-type", "int 0x40\nhlt\n", (_gate_bytes(0x40, BAD_TYPE),), 0x40 * 8 + 2, 13),
    # #DE, then #NP delivering it: two contributory exceptions make #DF, error code 0.
    ("double-fault", "xor ecx, ecx\ndiv ecx\nhlt\n", (_gate_bytes(0, NOT_PRESENT),), 0, 8),
    # #PF, then #GP delivering it (its gate lies beyond the limit): #DF, error code 0.
    ("page-fault-beyond-limit", paging() + f"mov eax, [{PAGE:#x}]\nhlt\n",
     (_idt_limit(14 * 8 - 1), *_tables(0)), 0, 8),
]


@pytest.mark.parametrize("src, chunks, error, handler", [c[1:] for c in DELIVERY_CASES],
                         ids=[c[0] for c in DELIVERY_CASES])
def test_delivery_edge_cases_match_qemu(tmp_path: Path, src: str, chunks: tuple[tuple[int, bytes], ...],
                                        error: int, handler: int):
    elf = write_elf(kernel(src, handlers=REPORTERS, chunks=chunks), tmp_path / "deliver.elf")
    theirs = run_reference(elf)
    assert (theirs.serial, theirs.status) == (hexlines(error), (handler << 1) | 1), \
        "QEMU disagrees with the SDM"
    _same(run_ring1(elf)[0], theirs)


def test_a_page_fault_reading_the_idt_is_delivered_with_cr2(tmp_path: Path):
    # The IDT's second half lies in a page that is not present: INT 0x80 cannot read its gate
    # (a supervisor read, error code 0, CR2 = the gate's address) and #PF is delivered alone
    # (INT n is no exception, so this is no double fault).
    idt = PAGE - 0x80 * 8                # gates 0x80.. in PAGE, which is not present
    tables = _tables(0x0)
    gates = b"".join(gate(HANDLERS + v * 0x100) if v == 14 else bytes(8) for v in range(0x80))
    src = paging() + "int 0x80\nhlt\n"
    img = kernel(src, handlers={14: (_handler(PF_REPORT), 0, False)},
                 chunks=(*tables, (idt, gates), (IDTR, struct.pack("<HI", 256 * 8 - 1, idt))))
    elf = write_elf(img, tmp_path / "idtpf.elf")
    theirs = run_reference(elf)
    lines = theirs.serial.split(b"\n")
    assert lines[0] == b"00000000" and lines[3] == b"%08x" % (idt + 0x80 * 8), theirs.serial
    assert theirs.status == (14 << 1) | 1
    _same(run_ring1(elf)[0], theirs)


@pytest.mark.parametrize("src, chunks", [
    # #DE; #NP delivering it; #NP again delivering the #DF: shutdown.
    ("xor ecx, ecx\ndiv ecx\nhlt\n", (_gate_bytes(0, NOT_PRESENT), _gate_bytes(8, NOT_PRESENT))),
    # INT n onto a stack in a page that is not present: #PF, and #PF again delivering it, and
    # again delivering the #DF.
    (paging() + f"mov esp, {PAGE + 0x800:#x}\nint 0x40\nhlt\n", (*_tables(0x0),)),
], ids=["gates-not-present", "stack-not-present"])
def test_triple_fault_matches_qemu(tmp_path: Path, src: str, chunks: tuple[tuple[int, bytes], ...]):
    handlers = {**REPORTERS, 14: (_handler(PF_REPORT), 0, False), 0x40: (_handler(REPORT, 0x40), 0, False)}
    elf = write_elf(kernel("mov eax, 0x7f\ncall 0x1e0000\n" + src, handlers=handlers, chunks=chunks),
                    tmp_path / "triple.elf")
    theirs = run_reference(elf)
    assert theirs == Outcome(hexlines(0x7F), None, "triple fault"), "QEMU disagrees with the SDM"
    _same(run_ring1(elf)[0], theirs)


def test_invalid_opcode_through_a_gate_that_is_not_present_is_np(tmp_path: Path):
    # #UD is a benign exception: #NP(6 * 8 + 2 + EXT) is delivered, no double fault. QEMU
    # leaves EXT (bit 0) clear here where the SDM sets it for a fault during delivery of
    # an exception; printed and compared without it, and checked apart against the SDM.
    src = "ud2\nhlt\n"
    np = "mov eax, [esp]\nand eax, 0xfffffffe\ncall 0x1e0000\nmov al, 11\nout 0xf4, al\n"
    img = kernel(src, handlers={11: (np, 0, False)}, chunks=(_gate_bytes(6, NOT_PRESENT),))
    elf = write_elf(img, tmp_path / "ud.elf")
    theirs = run_reference(elf)
    assert (theirs.serial, theirs.status) == (hexlines(6 * 8 + 2), (11 << 1) | 1)
    _same(run_ring1(elf)[0], theirs)


# -- INT n to an exception's vector: a software interrupt, not the exception --------------------

#: A handler that prints the return address and CS its frame holds, and exits with `vector`.
FRAME_REPORT = """
    mov eax, [esp]
    call {p}
    mov eax, [esp + 4]
    call {p}
    mov al, {vector}
    out 0xf4, al
"""
SOFT_VECTORS = [0x00, 0x08, 0x0A, 0x0D, 0x0E, 0x11]


@pytest.mark.parametrize("vector", SOFT_VECTORS, ids=[f"int-{v:#04x}" for v in SOFT_VECTORS])
def test_int_n_to_an_exception_vector_pushes_no_error_code(tmp_path: Path, vector: int):
    # SDM §6.4.2: INT n to a vector of an exception that has an error code pushes none.
    src = f"int {vector:#x}\nhlt\n"
    img = kernel(src, handlers={vector: (FRAME_REPORT.format(p="0x1e0000", vector=vector), 0, False)})
    elf = write_elf(img, tmp_path / "soft.elf")
    theirs = run_reference(elf)
    code = dict(img.chunks)[KERNEL]
    after = KERNEL + code.index(bytes((0xCD, vector, 0xF4))) + 2
    assert (theirs.serial, theirs.status) == (hexlines(after, KCODE), (vector << 1) | 1), \
        "QEMU disagrees with the SDM"
    _same(run_ring1(elf)[0], theirs)


@pytest.mark.parametrize("vector", [v for v in SOFT_VECTORS if v != 0x0B],
                         ids=[f"int-{v:#04x}" for v in SOFT_VECTORS if v != 0x0B])
def test_int_n_through_a_gate_that_is_not_present_is_np_not_a_double_fault(tmp_path: Path, vector: int):
    # INT n is no exception: a fault delivering it is delivered alone (SDM table 6-5 pairs
    # exceptions only), #NP(vector * 8 + 2) with EXT clear.
    img = kernel(f"int {vector:#x}\nhlt\n", handlers=REPORTERS, chunks=(_gate_bytes(vector, NOT_PRESENT),))
    elf = write_elf(img, tmp_path / "softnp.elf")
    theirs = run_reference(elf)
    assert (theirs.serial, theirs.status) == (hexlines(vector * 8 + 2), (11 << 1) | 1), \
        "QEMU disagrees with the SDM"
    _same(run_ring1(elf)[0], theirs)


# -- from user mode: the kernel stack the TSS names -------------------------------------------------

#: A #GP handler that prints its error code and the frame's EIP and CS, and exits with 13.
GP_REPORT = """
    mov eax, [esp]
    call {p}
    mov eax, [esp + 4]
    call {p}
    mov eax, [esp + 8]
    call {p}
    mov al, 13
    out 0xf4, al
""".format(p="0x1e0000")


def test_sysenter_with_sysenter_cs_zero_is_gp0(tmp_path: Path):
    # SDM SYSENTER: #GP(0) when IA32_SYSENTER_CS[15:2] is 0; the fault is at the SYSENTER.
    img = kernel(to_user(), handlers={13: (GP_REPORT, 0, False)}, user="sysenter\nhlt\n")
    elf = write_elf(img, tmp_path / "sysenter.elf")
    theirs = run_reference(elf)
    assert (theirs.serial, theirs.status) == (hexlines(0, USER, 0x1B), (13 << 1) | 1), \
        "QEMU disagrees with the SDM"
    _same(run_ring1(elf)[0], theirs)


def _higher_half() -> tuple[tuple[int, bytes], ...]:
    """Identity-map the first 4 MiB and map 0xC0000000 onto physical 0 with a 4 MiB page."""
    pd, pt = bytearray(4096), bytearray(4096)
    for i in range(1024):
        struct.pack_into("<I", pt, i * 4, (i << 12) | 0x7)
    struct.pack_into("<I", pd, 0, PT | 0x7)
    struct.pack_into("<I", pd, 0x300 * 4, 0x83)      # PDE 768: 4 MiB page at physical 0, supervisor
    return ((PD, bytes(pd)), (PT, bytes(pt)))


def test_an_interrupt_from_user_mode_lands_on_a_higher_half_kernel_stack(tmp_path: Path):
    # TSS.esp0 above 2 GiB (where Linux keeps its kernel stacks): the frame lands there.
    from runtime_guest import KSTACK, TSS

    esp0 = 0xC0000000 + KSTACK
    report = "mov eax, esp\ncall 0x1e0000\nmov eax, [esp + 12]\ncall 0x1e0000\nmov al, 0x40\nout 0xf4, al\n"
    src = ("mov eax, cr4\nor eax, 0x10\nmov cr4, eax\n" + paging() + to_user())
    img = kernel(src, handlers={0x80: (report, 3, False)}, user="int 0x80\nhlt\n",
                 chunks=(*_higher_half(), (TSS + 4, struct.pack("<I", esp0))))
    elf = write_elf(img, tmp_path / "high.elf")
    theirs = run_reference(elf)
    assert (theirs.serial, theirs.status) == (hexlines(esp0 - 20, 0x90000), (0x40 << 1) | 1), \
        "QEMU disagrees with the SDM"
    _same(run_ring1(elf)[0], theirs)


def test_an_interrupt_from_user_mode_with_the_tss_not_mapped_is_a_triple_fault(tmp_path: Path):
    # The CPU reads SS0:ESP0 from the TSS; a #PF there, and again delivering #DF: shutdown.
    from runtime_guest import GDT, TSS_SEL

    from runtime.segments import segment

    tss = PAGE                                       # not present in the tables below
    tables = _tables(0x0)
    img = kernel("mov eax, 0x7f\ncall 0x1e0000\n" + paging() + to_user(),
                 handlers={**REPORTERS, 14: (_handler(PF_REPORT), 0, False), 0x80: ("hlt\n", 3, False)},
                 user="int 0x80\nhlt\n",
                 chunks=(*tables, (GDT + TSS_SEL, segment(tss, 103, 0x89, 0x0).to_bytes())))
    elf = write_elf(img, tmp_path / "notss.elf")
    theirs = run_reference(elf)
    assert theirs == Outcome(hexlines(0x7F), None, "triple fault"), "QEMU disagrees with the SDM"
    _same(run_ring1(elf)[0], theirs)


# -- the handler's code segment and the flags it starts with ----------------------------------------

def _gate_to(vector: int, selector: int) -> tuple[int, bytes]:
    """A present 32-bit interrupt gate for `vector` through code selector `selector`."""
    offset = HANDLERS + vector * 0x100
    return (IDT + vector * 8, struct.pack("<HHBBH", offset & 0xFFFF, selector, 0, 0x8E, offset >> 16))


def _seventh_descriptor(access: int) -> tuple[tuple[int, bytes], ...]:
    """GDT entry 6 (selector 0x30) with `access`, and the GDTR grown to hold it."""
    from runtime_guest import GDT, GDTR

    from runtime.segments import segment

    return ((GDT + 0x30, segment(0, 0xFFFFFFFF, access).to_bytes()),
            (GDTR, struct.pack("<HI", 7 * 8 - 1, GDT)))


@pytest.mark.parametrize("selector, extra, error, handler", [
    (0x10, (), 0x10, 13),                              # a data segment: #GP(selector)
    (0x00, (), 0x00, 13),                              # the null selector: #GP(0)
    (0x30, _seventh_descriptor(0x1A), 0x30, 11),       # a code segment that is not present: #NP(selector)
], ids=["data-segment", "null-selector", "code-not-present"])
def test_a_gate_whose_selector_is_not_usable_code(tmp_path: Path, selector: int,
                                                  extra: tuple[tuple[int, bytes], ...], error: int,
                                                  handler: int):
    img = kernel("int 0x40\nhlt\n", handlers=REPORTERS, chunks=(_gate_to(0x40, selector), *extra))
    elf = write_elf(img, tmp_path / "gatecs.elf")
    theirs = run_reference(elf)
    assert (theirs.serial, theirs.status) == (hexlines(error), (handler << 1) | 1), \
        "QEMU disagrees with the SDM"
    _same(run_ring1(elf)[0], theirs)


def test_a_handler_starts_with_the_arithmetic_flags_and_the_frame_keeps_them(tmp_path: Path):
    # SDM §6.12.1: the frame holds EFLAGS as they were; the handler runs with TF, NT, RF and VM
    # clear and every other flag kept (IF cleared through an interrupt gate: not printed, it
    # is the virtual IF under ring1, which PUSHF does not show unpatched).
    handler = ("pushfd\npop eax\nand eax, 0xcd5\ncall 0x1e0000\nmov eax, [esp + 8]\nand eax, 0xcd5\n"
               "call 0x1e0000\nmov al, 0x40\nout 0xf4, al\n")
    src = "mov eax, 0x7fffffff\nadd eax, 1\nstc\nstd\nint 0x40\nhlt\n"      # OF SF AF PF CF DF
    elf = write_elf(kernel(src, handlers={0x40: (handler, 0, False)}), tmp_path / "flags.elf")
    theirs = run_reference(elf)
    assert (theirs.serial, theirs.status) == (hexlines(0xC95, 0xC95), (0x40 << 1) | 1), \
        "QEMU disagrees with the SDM"
    _same(run_ring1(elf)[0], theirs)


def test_a_user_interrupt_whose_frame_does_not_fit_on_the_kernel_stack_is_a_triple_fault(tmp_path: Path):
    # esp0 16 bytes above a page that is not present: the 20-byte frame reaches into it (#PF),
    # and the #DF frame too: shutdown. (Under ring1 the VMM's 16-byte call frame fits; the
    # guest's frame built after it must not.)
    from runtime_guest import TSS

    esp0 = PAGE + 0x1000 + 16
    img = kernel("mov eax, 0x7f\ncall 0x1e0000\n" + paging() + to_user(),
                 handlers={**REPORTERS, 14: (_handler(PF_REPORT), 0, False), 0x80: ("hlt\n", 3, False)},
                 user="int 0x80\nhlt\n", chunks=(*_tables(0x0), (TSS + 4, struct.pack("<I", esp0))))
    elf = write_elf(img, tmp_path / "esp0.elf")
    theirs = run_reference(elf)
    assert theirs == Outcome(hexlines(0x7F), None, "triple fault"), "QEMU disagrees with the SDM"
    _same(run_ring1(elf)[0], theirs)


def test_a_fault_latched_inside_a_vmm_hook_does_not_double_the_next_page_fault(tmp_path: Path):
    # Inside a hook the VMM may change page rights or drop translations, and Unicorn can
    # raise a #PF of its own there that no hook sees but that stays latched in
    # old_exception (found booting xv6 --eager: its LGDT patch's hypercall started watching
    # the new GDT's page). Simulated here: the latch is set while the guest's INT3 is
    # handled. The guest's next #PF must reach its handler as a #PF, as under QEMU, not
    # as the #DF Unicorn makes of a #PF after a latched one.
    elf = write_elf(kernel(paging() + f"int3\nmov eax, [{NO_PDE:#x}]\nhlt\n",
                           handlers={3: ("iretd\n", 0, False), 14: (_handler(PF_REPORT), 0, False)},
                           chunks=_tables(PAGE | 0x7)), tmp_path / "latched.elf")
    out = io.BytesIO()
    vm = Vm(RunConfig(kernel=elf, serial=out))
    inject = vm.traps.inject

    def poisoned(vector: int, eip: int, error: int | None, soft: bool) -> None:
        inject(vector, eip, error, soft)
        if vector == 3:
            latch = vm.traps.latch
            if latch._live is not None:
                latch._live_field.value = 14
            else:                                  # through a saved context (latch.py)
                latch._save(latch._h, latch._ctx)
                latch._field.value = 14
                latch._restore(latch._h, latch._ctx)
            assert latch.latched() == 14
    vm.traps.inject = poisoned                     # type: ignore[method-assign]
    result = vm.run()
    theirs = run_reference(elf)
    assert (out.getvalue(), result.exit_status) == (theirs.serial, theirs.status)
    assert theirs.status == (14 << 1) | 1
