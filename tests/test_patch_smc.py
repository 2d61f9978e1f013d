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


REWRITER = """
.text
.globl _start
.type _start, @function
_start:
    movl $%d, %%ecx
1:  cli
    movl $1, %%eax
    movl $2, %%ebx
    movb $0xfa, (1b)
    decl %%ecx
    jnz 1b
    movl $0, %%eax
    outl %%eax, $0xf4
2:  jmp 2b
.section .note.GNU-stack, "", @progbits
"""


def test_a_guest_that_rewrites_a_patched_site_forever_stays_bounded(tmp_path) -> None:
    """Issue 17: each rewrite removed the patch and the next trap made a new block in fresh
    patch memory (never reused: full after ~60,000 rewrites, then exit 8), and Unicorn's 1 GiB
    code buffer grew with the code translated again. Freed blocks are reused now, and the
    code buffer is 32 MiB (runtime/machine.py)."""
    import io

    from patchmgr.manager import PatchConfig
    from runtime.config import RunConfig
    from runtime.machine import TCG_BUFFER
    from runtime.vm import Vm
    from tests.scan_helpers import build_elf

    seen = []
    for n in (200, 1200):
        path = build_elf(tmp_path, REWRITER % n, ld_flags=("-N",), name=f"rewriter{n}")
        vm = Vm(RunConfig(kernel=path, serial=io.BytesIO(), patch=PatchConfig()))
        assert vm.run().exit_status == 1
        m = vm.patches
        assert m is not None and m.stats.smc_removed == n
        seen.append((m.patch_memory.used, len(m.patches), len(m.blocks()), len(m._exits), len(m._interior),
                     len(m.stats.traps), len(vm.stats.hits)))
        assert vm.machine.uc.ctl_get_tcg_buffer_size() == TCG_BUFFER
    assert seen[0] == seen[1], seen


def test_patch_memory_reuses_freed_blocks_only_once_settled() -> None:
    from patchmgr.memory import PatchMemory

    mem = PatchMemory(base=0x1000, size=0x1000)
    a = mem.reserve(100)
    mem.commit(a, 40)
    b = mem.reserve(100)
    mem.commit(b, 40)
    assert (a, b) == (0x1000, 0x1030)
    mem.free(a, 40)
    assert mem.reserve(30) == 0x1060            # freed, but the guest may still run it
    mem.settle()
    assert mem.reserve(30) == a                 # now it is handed out again
    mem.commit(a, 30)
    mem.free(b, 40)
    mem.settle()                    # the last block went: the top comes down, to a's end
    assert mem.top == 0x1020 and mem.reserve(16) == 0x1020
