"""Inline rules other than the interrupt flag read the virtual state, never the host's:
control registers, descriptor-table registers, and CS/SS with the guest's RPL 0."""

from __future__ import annotations

import struct

from bt.isa import CLASSES, Handling
from patchmgr.registry import load
from runtime.ruletest import CODE, DATA, KCODE1, KDATA1, asm, run_patched

STATE = {
    "cr0": struct.pack("<I", 0x80050033), "cr3": struct.pack("<I", 0x00123000),
    "cr4": struct.pack("<I", 0x00000690), "cr2": struct.pack("<I", 0xDEADBEEF),
    "gdtr": struct.pack("<HI", 0x00FF, 0x00105000), "idtr": struct.pack("<HI", 0x07FF, 0x00106000),
    "ldtr": struct.pack("<H", 0x0028), "tr": struct.pack("<H", 0x0030),
}
PAD = "\nnop\nnop\nnop\nnop\nnop"


def run(src: str, regs: dict[str, int] | None = None):  # type: ignore[no-untyped-def]
    out, mgr = run_patched(src + PAD, regs or {}, 0, 1, state=STATE)
    assert all(p.kind == "jmp" for p in mgr.patches.values()), mgr.notes
    assert out.exits == []
    return out


def test_mov_from_cr_reads_virtual_crs() -> None:
    out = run("mov eax, cr0\nmov ebx, cr3\nmov ecx, cr4\nmov edx, cr2")
    assert out.regs["eax"] == 0x80050033
    assert out.regs["ebx"] == 0x00123000
    assert out.regs["ecx"] == 0x00000690
    assert out.regs["edx"] == 0xDEADBEEF


def test_smsw() -> None:
    out = run(f"mov esi, 0xAAAA0000\nsmsw si\nsmsw eax\nsmsw word ptr [{DATA:#x}]", {"eax": 0})
    assert out.regs["esi"] == 0xAAAA0033
    assert out.regs["eax"] == 0x80050033
    assert out.data[:2] == struct.pack("<H", 0x0033)


def test_store_descriptor_table_registers() -> None:
    out = run(f"mov ebx, {DATA:#x}\nsgdt [ebx]\nsidt [ebx + 6]\nsldt word ptr [ebx + 12]\n"
              "mov esi, 0xFFFFFFFF\nsldt esi\nmov edi, 0xFFFF1111\nstr di\nstr eax", {"eax": 0})
    assert out.data[:6] == STATE["gdtr"]
    assert out.data[6:12] == STATE["idtr"]
    assert out.data[12:14] == STATE["ldtr"]
    assert out.regs["esi"] == 0x28          # zero-extended
    assert out.regs["edi"] == 0xFFFF0030    # 16-bit destination keeps the high half
    assert out.regs["eax"] == 0x30
    assert out.regs["ebx"] == DATA


def test_cs_ss_show_rpl_0() -> None:
    out = run(f"mov eax, cs\nmov bx, ss\npush cs\npop ecx\npush ss\npop edx\nmov word ptr [{DATA:#x}], cs",
              {"ebx": 0x55550000})
    assert out.regs["eax"] == KCODE1 & ~3
    assert out.regs["ebx"] == 0x55550000 | (KDATA1 & ~3)
    assert out.regs["ecx"] == KCODE1 & ~3
    assert out.regs["edx"] == KDATA1 & ~3
    assert out.data[:2] == struct.pack("<H", KCODE1 & ~3)


def test_hypercall_sites_exit_with_their_operation() -> None:
    out, _ = run_patched("nop\nnop\nnop\nnop\nmov cr3, eax\nwbinvd\nnop\nnop\nnop\nnop\nnop", {}, 0, 1)
    assert [op.mnemonic for op in out.exits if op] == ["mov", "wbinvd"]
    assert [op.cls for op in out.exits if op] == ["mov_to_cr", "wbinvd"]


def test_every_table_rule_is_registered() -> None:
    rules = load()
    for row in CLASSES:
        if row.rule is not None:
            assert row.rule in rules.names, row.name
        if row.handling in (Handling.INLINE, Handling.HYPERCALL, Handling.INT3):
            assert row.rule is not None, row.name


def _with_frame(flags: str, after: str) -> tuple[str, int]:
    """An IRETD to `after` through a frame as the guest kernel builds it (its RPL-0 CS)."""
    head = f"{flags}\npush {KCODE1 & ~3}\npush 0x12345678\niretd\nnop\n"
    back = CODE + len(asm(head, CODE))
    return head.replace("0x12345678", f"{back:#x}") + after, back


def test_iret_within_the_kernel_runs_inline() -> None:
    # A frame as the guest kernel builds it: its RPL-0 view of CS (the runtime strips RPL 1).
    src, back = _with_frame("push 0x0a97", "pushfd\npop esi\nmov edi, cs\nnop\nnop\nnop\nnop\nnop")
    out, mgr = run_patched(src, {}, 0, 0, targets={back})
    assert any(p.op.mnemonic == "iretd" and p.kind == "jmp" for p in mgr.patches.values()), mgr.notes
    assert out.exits == []                        # no exit: inline
    assert out.virtual_if == 0x200                # IF from the frame
    assert out.regs["esi"] & 0xFFF == 0xA97       # the frame's flags as PUSHF shows them
    assert out.regs["edi"] == KCODE1 & ~3         # and CS as the kernel sees it


def test_iret_exits_when_it_unmasks_a_pending_interrupt() -> None:
    src, back = _with_frame("push 0x202", "nop\nnop\nnop\nnop\nnop")
    out, _ = run_patched(src, {}, 0, 0, pending=1, targets={back})
    assert [op.mnemonic if op else None for op in out.exits] == ["iretd"]


def test_iret_into_a_patched_window_exits() -> None:
    # Nothing tells the patch manager that `back` is a target, so a window covers it, as
    # when a fault in displaced code was reported there: the runtime must resume it.
    src, back = _with_frame("push 0x2", "pushfd\npop esi\nnop\nnop\nnop\nnop\nnop")
    out, mgr = run_patched(src, {}, 0, 0, targets=set())
    assert mgr.resume_at(back) != back
    assert [op.mnemonic if op else None for op in out.exits] == ["iretd"]
