"""Code the guest rewrites is scanned again before it runs (patchmgr/rescan.py, CSAM's
monitored pages): a never-trapping PUSHF the guest writes over a CALL, as Linux's
alternatives turn `call *pv_ops.irq.save_fl` into `pushf; pop %eax`, is patched before it
runs, so it reads the virtual IF. Unpatched, and before this, it leaked the real IF = 1."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from patchmgr.manager import PatchConfig
from runtime.config import RunConfig
from runtime.vm import Vm
from tests.scan_helpers import build_elf

# Interrupts stay virtually off (the entry state), the code at `site` is rewritten from
# `call noop; nop` into `pushf; pop %eax; nop x4`, then run: the exit status is
# (IF seen by PUSHF << 1) | 1. QEMU's answer is 1 (IF = 0).
GUEST = """
.text
.globl _start
_start:
    cli
    movl $site, %edi
    movl $0x9090589c, (%edi)
    movw $0x9090, 4(%edi)
    jmp site
noop:
    ret
{align}
site:
    call noop
    nop
    andl $0x200, %eax
    shrl $9, %eax
    outl %eax, $0xf4
1:  jmp 1b
.section .note.GNU-stack, "", @progbits
"""


@pytest.mark.parametrize("align", [".p2align 12", ""], ids=["other page", "same page"])
def test_rewritten_pushf_is_patched_before_it_runs(tmp_path: Path, align: str) -> None:
    path = build_elf(tmp_path, GUEST.format(align=align), ld_flags=("-N",))
    plain = Vm(RunConfig(kernel=path, serial=io.BytesIO(), patch=PatchConfig(enabled=False)))
    assert plain.run().exit_status == 3          # unpatched: PUSHF leaks the real IF
    vm = Vm(RunConfig(kernel=path, serial=io.BytesIO(), patch=PatchConfig()))
    assert vm.run().exit_status == 1
    assert vm.patches is not None
    assert vm.patches.stats.rescans >= 1 and vm.patches.stats.rescan_patched >= 1
    assert any(p.op.cls == "pushf" for p in vm.patches.patches.values())
