"""Patch rules from third parties: the entry-point group `ring1.patch_rules`, the example
plugin samples/plugins/vtsc (RDTSC -> virtual TSC), --list-rules and --disable-rule."""

from __future__ import annotations

import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from patch_harness import run_native, run_patched
from requires import unavailable

from bt.cli import main
from bt.errors import UsageError
from patchmgr.registry import BUILTIN, ENTRY_POINT_GROUP, load

PLUGIN = Path(__file__).resolve().parent.parent / "samples" / "plugins" / "vtsc"


def _vtsc_installed() -> bool:
    return any(ep.name == "vtsc" for ep in entry_points(group=ENTRY_POINT_GROUP))


def _virtual_tsc():  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(PLUGIN))
    try:
        from ring1_vtsc import STEP, VirtualTsc
    finally:
        sys.path.remove(str(PLUGIN))
    return VirtualTsc, STEP


def test_plugin_is_installed_through_its_entry_point() -> None:
    if not _vtsc_installed():
        unavailable("the example plugin is not installed (pip install -e samples/plugins/vtsc; "
                    ".ci/run installs it)")
    rules = load()
    info = next(i for i in rules.infos if i.rule.name == "vtsc")
    assert info.origin == "ring1-vtsc" and info.enabled
    assert rules.names[: len(BUILTIN)] == tuple(c.name for c in BUILTIN)   # built-ins are asked first
    assert "vtsc" not in load(["vtsc"]).enabled_names


def test_virtual_tsc_rule() -> None:
    VirtualTsc, step = _virtual_tsc()
    rules = load(extra=[] if _vtsc_installed() else [VirtualTsc()])
    src = "add eax, ebx\nrdtsc\nmov esi, eax\nmov edi, edx\nrdtsc\nnop\nnop\nnop\nnop\nnop"
    regs = {"eax": 0x7FFFFFFF, "ebx": 1}
    out, mgr = run_patched(src, regs, 0, 1, rules=rules)
    assert {p.op.mnemonic for p in mgr.patches.values()} == {"rdtsc"}
    assert (out.regs["esi"], out.regs["edi"]) == (step, 0)
    assert (out.regs["eax"], out.regs["edx"]) == (2 * step, 0)
    # RDTSC changes no flag: the ADD/ADC of the counter must not show.
    assert out.flags == run_native(src, regs, 0, 1).flags


def test_disable_unknown_rule_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        load(["no-such-rule"])


def test_list_rules(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["patch", "--list-rules"]) == 0
    out = capsys.readouterr().out
    for cls in BUILTIN:
        assert cls.name in out
    assert main(["patch", "--list-rules", "--disable-rule", "irqflags"]) == 0
    assert "(disabled)" in capsys.readouterr().out
