"""runtime/codewatch.py and the guard's page rights: which guest RAM pages the CPU may fetch
from once a patched run starts (the ELF's code only; watched pages keep their watch)."""

from __future__ import annotations

import io
from pathlib import Path

from unicorn import UC_PROT_EXEC, UC_PROT_WRITE

from bt import elf, layout
from patchmgr.manager import PatchConfig
from runtime.config import RunConfig
from runtime.vm import Vm

PAGE = layout.PAGE_SIZE


def _rights(vm: Vm) -> dict[int, int]:
    """Unicorn's rights of every guest RAM page."""
    out: dict[int, int] = {}
    for begin, end, perms in vm.machine.uc.mem_regions():
        for page in range(max(begin, 0), min(end + 1, vm.config.ram_size), PAGE):
            out[page] = perms
    return out


def test_only_the_elfs_code_pages_are_executable_and_watched_pages_stay_watched() -> None:
    vm = Vm(RunConfig(kernel=Path("samples/irqsave/irqsave.elf"), serial=io.BytesIO(), patch=PatchConfig()))
    code = {page for seg in elf.load(vm.config.kernel).segments if seg.executable
            for page in range(seg.paddr & ~(PAGE - 1), seg.paddr + seg.memsz, PAGE)}
    rights = _rights(vm)
    assert len(rights) == vm.config.ram_size // PAGE
    executable = {page for page, perms in rights.items() if perms & UC_PROT_EXEC}
    assert executable == code
    watched = {page for page in rights if vm.guard.watched(page)}
    assert watched                                   # the GDT's page and the patched code's
    assert all(not rights[page] & UC_PROT_WRITE for page in watched)
    assert all(rights[page] & UC_PROT_WRITE for page in rights.keys() - watched)
