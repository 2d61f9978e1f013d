"""The scanner's sites against objdump -d: same addresses, same classes, or an explained difference.

objdump's side is read from its text only (mnemonic and operands, `scan_helpers.objdump_class`),
so it is an independent decoder (binutils, not Capstone) and an independent classifier.
Explained differences: INT3 padding (objdump lists every byte; the scanner counts
unreached INT3 as padding, not sites), instructions the descent decoded inside another
one (objdump's linear sweep cannot see them), and places where objdump's linear sweep
decodes at other boundaries than ours (data decoded as code).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from requires import in_ci, require_tool, unavailable

from bt import elf, scan
from tests.scan_helpers import build_elf, objdump_sites
from tests.test_scan import FAR_FLOW, PATCH_CASES, SIXTY_FOUR

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = sorted(ROOT.glob("samples/*/*.elf"))


PADDING = "INT3 padding (unreached INT3 is not a site)"
INSIDE = "decoded by the descent inside another instruction"
BOUNDARIES = "objdump's linear sweep decodes at other boundaries here (data as code)"


def compare(path: Path) -> tuple[dict[str, list[str]], list[str]]:
    """(explained differences by reason, unexplained differences)."""
    result = scan.scan(elf.load(path))
    ours = {s.address: s for s in result.sites}
    ref, ref_int3 = objdump_sites(path)
    explained: dict[str, list[str]] = {}
    unexplained: list[str] = []

    def explain(reason: str, line: str) -> None:
        explained.setdefault(reason, []).append(line)

    def explain_many(reason: str, addresses: np.ndarray, what: str) -> None:
        if addresses.shape[0]:       # millions for a vmlinux: keep a count and a few examples
            lines = explained.setdefault(reason, [])
            lines += [f"{a:#x}: only objdump: {what}" for a in addresses[:5].tolist()]
            lines += [""] * (addresses.shape[0] - min(5, addresses.shape[0]))

    # INT3 in bulk: objdump lists every padding byte.
    theirs3 = np.array(ref_int3, dtype=np.uint64)
    ours3 = np.array([a for a, s in ours.items() if s.cls.name == "int3"], dtype=np.uint64)
    only3 = np.setdiff1d(theirs3, ours3)
    at_start = np.isin(only3, result.instruction_starts)
    explain_many(PADDING, only3[at_start], "int3")
    explain_many(BOUNDARIES, only3[~at_start], "int3")
    ref.update({a: ("int3", "int3") for a in np.intersect1d(theirs3, ours3).tolist()})

    for address in sorted(set(ours) | set(ref)):
        site, theirs = ours.get(address), ref.get(address)
        if site is not None and theirs is not None:
            if site.cls.name != theirs[0]:
                unexplained.append(f"{address:#x}: scanner {site.cls.name} ({site.text}), "
                                   f"objdump {theirs[0]} ({theirs[1]})")
        elif site is not None:
            line = f"{address:#x}: only the scanner: {site.cls.name} ({site.text})"
            if address in result.overlapping:
                explain(INSIDE, line)
            elif site.cls.name == "int3" and address in theirs3:
                continue
            else:
                unexplained.append(line)
        elif theirs is not None:
            line = f"{address:#x}: only objdump: {theirs[0]} ({theirs[1]})"
            if not result.is_instruction_start(address):
                explain(BOUNDARIES, line)
            else:
                unexplained.append(line)
    return explained, unexplained


def _report(name: str, explained: dict[str, list[str]]) -> None:
    for reason, lines in explained.items():
        print(f"{name}: {len(lines)} explained: {reason}")
        for line in lines[:5]:
            if line:
                print(f"    {line}")


@pytest.mark.parametrize("path", SAMPLES, ids=[p.parent.name for p in SAMPLES])
def test_samples_match_objdump(path):
    explained, unexplained = compare(path)
    _report(path.name, explained)
    assert not unexplained, "\n".join(unexplained)
    # The samples are compiled C and small assembly: nothing to explain but INT3 padding.
    assert set(explained) <= {PADDING}, explained


@pytest.mark.parametrize(("source", "bits"), [(PATCH_CASES, 32), (SIXTY_FOUR, 64), (FAR_FLOW, 32)],
                         ids=["cases32", "cases64", "farflow"])
def test_built_kernels_match_objdump(tmp_path, source, bits):
    explained, unexplained = compare(build_elf(tmp_path, source, bits=bits))
    _report(f"built{bits}", explained)
    assert not unexplained, "\n".join(unexplained)


def test_linux_vmlinux_matches_objdump():
    """A kernel nobody here wrote: Debian's current x86-64 Linux, fetched by package name
    as `bt bench scan` does (bt/cli/vmlinux.py; ~100 MB download, ~25 s on 2 cores).
    Locally it runs on a cached one (`bt bench scan` fetches it); CI fetches it."""
    from bt.cli import vmlinux

    path = vmlinux.cached()
    if path is None:
        if not in_ci():
            unavailable(f"no cached vmlinux in {vmlinux.cache_dir()} (`bt bench scan` fetches one)")
        require_tool("dpkg-deb")
        path = vmlinux.fetch()
    explained, unexplained = compare(path)
    _report(path.name, explained)
    assert not unexplained, f"{len(unexplained)} unexplained:\n" + "\n".join(unexplained[:50])
