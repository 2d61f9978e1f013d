"""`bt patch` as `bt run` will see its output: static patching (patchmgr/static.py) between
two checks made with the run's own loader (runtime/boot.py).

1. The input must be a kernel `bt run` can load (with the most RAM it gives, `--ram 3072`):
   what it refuses, `bt patch` refuses with the same one-line reason (exit 2).
2. The patcher works on the memory that loader plans (`BootPlan.places`), so it patches
   bytes at the addresses the run finds them.
3. Before the output is written, it is planned again as `bt run` would plan it, its record
   read back, and every recorded patch looked for where `PatchManager.adopt` will look for
   it. A disagreement is a bug in ring1 (exit 8), never an output `bt run` then rejects.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from bt import elf
from bt.errors import ElfError, InputError, InternalError
from bt.outfile import Outputs
from patchmgr.manager import head
from patchmgr.registry import RuleSet
from patchmgr.static import StaticOutput, StaticResult, patch_image, read_record
from runtime.boot import RAM_MAX, plan_boot
from runtime.patching import KernelMap


def patch_kernel(src: str | Path, rules: RuleSet, dst: str | Path = "OUT") -> StaticOutput:
    """The patched ELF of `src`, checked; `dst` only names it in messages."""
    plan = plan_boot(src, RAM_MAX)
    if plan.kernel is None:
        raise ElfError(str(src), "not an ELF (an a.out-kludge image): bt patch needs ELF sections")
    output = patch_image(plan.kernel, rules, plan.places, kernel_phys(plan.kernel))
    verify(dst, output.data)
    return output


def kernel_phys(image: elf.KernelImage) -> Callable[[int], int]:
    """Where `bt run` reads a kernel address while it adopts the patches (paging is off):
    through the program headers (runtime.patching.KernelMap), else the address itself."""
    kernel = KernelMap(image.segments)

    def phys(address: int) -> int:
        found = kernel.paddr(address)
        return address if found is None else found
    return phys


def verify(name: str | Path, data: bytes) -> None:
    """Raise `InternalError` unless `bt run` loads `data` and finds every recorded patch."""
    try:
        plan = plan_boot(name, RAM_MAX, data=data)
        record = read_record(plan.kernel) if plan.kernel is not None else None
    except InputError as err:
        raise InternalError(f"bt patch wrote a kernel bt run would refuse: {err}") from err
    if record is None:
        raise InternalError(f"bt patch wrote {name} without its patch record")
    assert plan.kernel is not None
    phys = kernel_phys(plan.kernel)
    for patch in record.patches:
        want = head(patch)
        if plan.read(phys(patch.start), len(want)) != want:
            raise InternalError(f"bt patch wrote {name} with its {patch.kind} at {patch.start:#x} missing "
                                "where bt run looks for it")


def patch_file(src: str | Path, dst: str | Path, rules: RuleSet) -> StaticResult:
    """Patch `src` into the file `dst`, written whole or not at all (bt/outfile.py)."""
    with Outputs(inputs=[src]) as outputs:
        out = outputs.document(dst, "-o")
        output = patch_kernel(src, rules, dst)
        out.write_bytes(output.data)
        outputs.commit()
    return output.result
