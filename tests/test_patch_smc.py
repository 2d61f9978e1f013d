"""Self-modifying code: a guest write into a patch's JMP bytes removes the patch, a write
into its displaced code refreshes it (re-made from the new bytes on the next trap)."""

from __future__ import annotations

from patchmgr.manager import PatchConfig
from runtime.ruletest import CODE, run_patched

# Runs the window twice; between the passes it rewrites part of it.
LOOP = """
again:
cli
mov ebx, 1
add ecx, ebx
dec edx
jz done
mov byte ptr [{where}], {value}
jmp again
done:
nop
"""


def test_write_into_displaced_code_refreshes_the_patch() -> None:
    src = LOOP.format(where=CODE + 2, value=2)          # the immediate of `mov ebx, 1`
    out, mgr = run_patched(src, {"ecx": 0, "edx": 2}, 0, 1, config=PatchConfig(), sites=[])
    # Pass 1: CLI traps and gets patched; pass 2 runs the refreshed patch with `mov ebx, 2`.
    assert out.regs["ecx"] == 1 + 2
    assert mgr.stats.smc_refreshed == 1 and mgr.stats.smc_removed == 0
    assert [t.mnemonic for t in out.traps] == ["cli", "cli"]   # removed, so it trapped again
    assert CODE in mgr.patches                                   # and was patched anew


def test_write_into_the_jump_removes_the_patch() -> None:
    src = LOOP.format(where=CODE, value=0x90)                 # CLI becomes NOP
    out, mgr = run_patched(src, {"ecx": 0, "edx": 2}, 0, 1, config=PatchConfig(), sites=[])
    assert out.regs["ecx"] == 2
    assert mgr.stats.smc_removed == 1
    assert [t.mnemonic for t in out.traps] == ["cli"]           # the NOP does not trap
    assert CODE not in mgr.patches
    assert out.virtual_if == 0                                 # set by the first pass's CLI
