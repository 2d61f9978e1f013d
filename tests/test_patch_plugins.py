"""Patch rules from third parties: the entry-point group `ring1.patch_rules`, the example
plugin samples/plugins/vtsc (RDTSC -> virtual TSC), --list-rules and --disable-rule."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import ClassVar

import pytest

from bt.cli import main
from bt.errors import UsageError
from bt.operation import Operation
from patchmgr import registry
from patchmgr.registry import BUILTIN, ENTRY_POINT_GROUP, load
from patchmgr.rule import EmitContext, PatchCode, PatchRule
from runtime.ruletest import run_native, run_patched

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


@pytest.fixture
def vtsc_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The example plugin as `pip install samples/plugins/vtsc` leaves it, unless it is installed
    already: its package on sys.path and a dist-info whose entry_points.txt names it, which is
    all importlib.metadata reads. Not installed for real by the test command: an installed
    plugin is used by every `bt run`, and this one changes what RDTSC returns (Linux cannot
    calibrate its TSC with it, samples/plugins/vtsc/README.md)."""
    if not _vtsc_installed():
        info = tmp_path / "ring1_vtsc-0.1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ring1-vtsc\nVersion: 0.1.0\n")
        (info / "entry_points.txt").write_text("[ring1.patch_rules]\nvtsc = ring1_vtsc:VirtualTsc\n")
        monkeypatch.syspath_prepend(str(PLUGIN))
        monkeypatch.syspath_prepend(str(tmp_path))
    registry._entry_points.cache_clear()
    yield
    registry._entry_points.cache_clear()


def test_plugin_is_installed_through_its_entry_point(vtsc_installed: None) -> None:
    rules = load()
    info = next(i for i in rules.infos if i.rule.name == "vtsc")
    assert info.origin == "ring1-vtsc" and info.enabled and info.version == "0.1.0"
    assert rules.names[: len(BUILTIN)] == tuple(c.name for c in BUILTIN)   # built-ins are asked first
    assert "vtsc" not in load(["vtsc"]).enabled_names
    assert not rules.warnings


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


# ---- no silent surprises (issue 17) ---------------------------------------------------------

class _Shadowed(PatchRule):
    name: ClassVar[str] = "mycli"
    description: ClassVar[str] = "claims CLI, which irqflags takes first"
    claims: ClassVar[frozenset[str] | None] = frozenset({"cli"})

    def emit(self, op: Operation, ctx: EmitContext) -> PatchCode | None:
        return PatchCode("nop")


class _Typo(PatchRule):
    name: ClassVar[str] = "typo"
    claims: ClassVar[frozenset[str] | None] = frozenset({"rdtsc", "rdstc"})

    def emit(self, op: Operation, ctx: EmitContext) -> PatchCode | None:
        return PatchCode("nop")


class _ExitingCpuid(PatchRule):
    """A rule that would turn CPUID (never an exit unpatched) into a hypercall."""

    name: ClassVar[str] = "exiting_cpuid"
    claims: ClassVar[frozenset[str] | None] = frozenset({"cpuid"})

    def emit(self, op: Operation, ctx: EmitContext) -> PatchCode | None:
        return ctx.hypercall(op)


def _fake_plugins(monkeypatch: pytest.MonkeyPatch, *eps: EntryPoint) -> None:
    monkeypatch.setattr(registry, "_entry_points", lambda: tuple(eps))


def test_a_plugin_that_fails_to_load_is_reported_and_skipped(monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    _fake_plugins(monkeypatch, EntryPoint("broken", "ring1_no_such_module:Rule", ENTRY_POINT_GROUP),
                  EntryPoint("notarule", "os:path", ENTRY_POINT_GROUP))
    rules = load()
    assert rules.names == tuple(c.name for c in BUILTIN)
    assert len(rules.warnings) == 2
    assert "'broken'" in rules.warnings[0] and "failed to load" in rules.warnings[0]
    assert "'notarule'" in rules.warnings[1] and "not a PatchRule subclass" in rules.warnings[1]
    assert main(["patch", "--list-rules"]) == 0
    out, err = capsys.readouterr()
    assert "irqflags" in out and err.count("bt patch: warning:") == 2
    hello = Path(__file__).resolve().parent.parent / "samples" / "hello" / "hello.elf"
    assert main(["run", str(hello), "--no-patch"]) == 1
    assert "bt run: warning: patch-rule plugin 'broken'" in capsys.readouterr().err


def test_unknown_claimed_class_and_shadowed_rules_are_warned() -> None:
    rules = load(extra=[_Shadowed(), _Typo()])
    text = "\n".join(rules.warnings)
    assert "'typo'" in text and "'rdstc'" in text and "not an instruction class" in text
    assert "'mycli'" in text and "entirely shadowed" in text and "cli -> irqflags" in text
    got = rules.assignment()
    assert got["mycli"].gets == frozenset() and got["mycli"].shadowed == {"cli": "irqflags"}
    # With irqflags off, the plugin gets CLI, and nothing is shadowed any more.
    off = load(["irqflags"], extra=[_Shadowed()])
    assert off.assignment()["mycli"].gets == {"cli"} and not off.warnings


def test_list_rules_shows_the_classes_each_rule_gets(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["patch", "--list-rules", "--disable-class", "pushf"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    irqflags = lines[next(i for i, line in enumerate(lines) if line.startswith("irqflags")) + 1]
    assert "gets: cli, popf, sti" in irqflags
    assert "disabled classes: pushf" in out


def test_disabling_a_class(monkeypatch: pytest.MonkeyPatch) -> None:
    rules = load(disabled_classes=["pushf"])
    assert not rules.handles("pushf") and rules.handles("popf")
    src = "pushfd\npop eax\nnop\nnop\nnop\nnop\nnop\npopfd\nnop\nnop\nnop\nnop\nnop"
    _, mgr = run_patched(src, {}, 0, 1, rules=rules)
    assert {p.op.cls for p in mgr.patches.values()} == {"popf"}
    with pytest.raises(UsageError, match="unknown instruction class 'pushfq'"):
        load(disabled_classes=["pushfq"])


def test_a_patch_never_adds_exits_to_a_class_that_does_not_exit() -> None:
    src = "cpuid\nnop\nnop\nnop\nnop\nnop\nnop"
    out, mgr = run_patched(src, {}, 0, 1, rules=load(extra=[_ExitingCpuid()]))
    assert not mgr.patches and not out.exits
    (refusal,) = mgr.refusals.values()
    assert "would add exits to cpuid" in refusal.reason


def test_cpuid_is_left_native() -> None:
    from bt import isa

    assert not load().handles("cpuid")
    # Every row that never exits unpatched either has no rule or is translated for a leak.
    for row in isa.CLASSES:
        if not row.exits_unpatched:
            assert row.handling is not isa.Handling.HYPERCALL, row.name
