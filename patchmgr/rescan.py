"""Code the guest rewrote, scanned again before it runs (VirtualBox's CSAM monitored pages).

The static scan sees the kernel as its ELF holds it. Some kernels rewrite their own code
at boot: Linux's alternatives and paravirt patching turn `call *pv_ops.irq.save_fl` into
an inline `pushf; pop %eax`, `call *pv_ops.irq.restore_fl` into `push %eax; popf`, and so
on, for every CPU feature it finds. The new PUSHF/POPF never trap, so PATM's rule "patch a
site when it traps" never sees them, and the scan did not know them: they would leak the
real IF (PUSHF) or silently drop the virtual one (POPF) forever.

CSAM kept every scanned page write-monitored, marked a written page dirty and scanned it
again before the guest next executed it. ring1 does the same: the runtime write-protects the
kernel's code pages (runtime/monitored.py), hands each store to it here as a
written range, takes the execute permission from a written page, and when the guest next
fetches an instruction from that page calls `rescan` with the page's written ranges, before
the instruction runs. The ranges are decoded again from the instruction boundary that holds
their first byte (the scanned basic block's start, decoded forward over the current bytes:
rewriting keeps instruction starts at the sites it rewrites), and each sensitive instruction
there that never traps is patched then, as CSAM marked and PATM patched such instructions
before they ran. Instructions that trap are patched by their first trap, as always.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from bt import isa

if TYPE_CHECKING:
    from patchmgr.manager import PatchManager

#: Bytes past a written range still decoded: the last written byte may start an instruction.
_TAIL = 15


def merge(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """(address, size) ranges as sorted, non-overlapping [start, end) intervals."""
    out: list[tuple[int, int]] = []
    for start, end in sorted((a, a + n) for a, n in ranges):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def silent_sites(manager: PatchManager, start: int, end: int) -> list[int]:
    """The sensitive instructions that never trap and some rule translates, decoded from the
    instruction holding `start` through `end`; [] where the code map knows no block there."""
    code = manager.code
    bounds = code.block_of(start) if code is not None else None
    if bounds is None:
        return []
    at = bounds[0]
    found = []
    limit = end + _TAIL
    while at < limit:
        # Without Capstone's detail first, and in full only what may be silent: Linux rewrites
        # its code 3,000 times at boot, and each rewrite decodes a block's worth (issue 14).
        lite = manager.decode_current_lite(at)
        if lite is None:
            break
        size, mnemonic, op_str = lite
        if at + size > start:
            if isa.maybe_silent(mnemonic, op_str):
                insn = manager.decode_current(at)
                op = isa.decode(insn) if insn is not None else None
                if (op is not None and op.cls is not None and manager.rules.handles(op.cls)
                        and isa.by_name(op.cls).unicorn is isa.Unicorn.SILENT):
                    found.append(at)
            if at >= end:
                break
        at += size
    return found


def rescan(manager: PatchManager, ranges: Iterable[tuple[int, int]]) -> int:
    """Patch the silent sensitive instructions in the rewritten `ranges` (guest addresses);
    returns how many sites were patched or deferred."""
    stats = manager.stats
    stats.rescans += 1
    sites: list[int] = []
    for start, end in merge(ranges):
        sites += silent_sites(manager, start, end)
    fresh = [s for s in dict.fromkeys(sites) if manager.is_unpatched(s)]
    before = len(manager.patches) + len(manager.deferred)
    for site in fresh:
        manager.learn(site)
    manager.patch_all(fresh)
    made = len(manager.patches) + len(manager.deferred) - before
    stats.rescan_patched += max(0, made)
    return made
