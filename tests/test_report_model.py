"""The comparison model and the chart geometry, on small hand-made records."""

from __future__ import annotations

import dataclasses

import pytest
from report_fixtures import kernel_comparison, load_recorded

from runtime.report import fmt, svg
from runtime.report.kernel import Function, KernelInfo
from runtime.report.model import compare_kernel
from runtime.report.record import Patch, RunRecord, Site, Timing


def test_counts_and_reductions():
    k = kernel_comparison("synthetic")
    assert k.modes == ("unpatched", "dynamic")
    assert k.total.counts == {"unpatched": 40065, "dynamic": 71}
    assert [r.key for r in k.by_kind] == ["trap", "io", "hypercall", "interrupt"]
    trap = k.by_kind[0]
    assert trap.reduction("dynamic") == pytest.approx(1 - 4 / 40000)
    assert k.speedup("dynamic") == pytest.approx(1.2 / 0.05)


def test_sites_are_merged_by_address_and_hottest_first():
    k = kernel_comparison("synthetic")
    sti = next(s for s in k.sites if s.address == 0x100050)
    assert sti.counts == {"unpatched": 10000, "dynamic": 3}  # a hypercall and a trap exit, summed
    assert sti.symbol == "main+0x10"
    assert sti.patch == {"dynamic": "jump (refused)"}
    assert k.sites[0].counts["unpatched"] >= k.sites[-1].counts["unpatched"]


def test_functions_sum_their_sites():
    k = kernel_comparison("synthetic")
    irq_save = next(f for f in k.functions if f.name == "irq_save")
    assert irq_save.counts == {"unpatched": 20000, "dynamic": 2}
    assert sum(f.counts["unpatched"] for f in k.functions) == sum(
        s.count for s in k.runs["unpatched"].sites)


def test_top_limits_the_site_table_but_not_the_site_count():
    kernel, runs = load_recorded("synthetic")
    k = compare_kernel(kernel, runs, top=2)
    assert len(k.sites) == 2 and k.site_count == 6


def test_mismatch_names_the_first_differing_byte():
    kernel, runs = load_recorded("synthetic")
    runs["dynamic"] = dataclasses.replace(runs["dynamic"], serial=runs["unpatched"].serial[:5] + b"X")
    k = compare_kernel(kernel, runs)
    assert not k.ok
    (mm,) = k.mismatches
    assert mm.what == "serial" and mm.expected.startswith("byte 5 of 30")


def test_baseline_is_required():
    kernel, runs = load_recorded("synthetic")
    del runs["unpatched"]
    with pytest.raises(ValueError):
        compare_kernel(kernel, runs)


def test_symbols():
    k = KernelInfo("k.elf", "0" * 64, (Function("a", 0x1000, 0x10), Function("label", 0x1010, 0),
                                       Function("b", 0x1020, 0x10)))
    assert k.describe(0x1004) == "a+0x4"
    assert k.describe(0x1014) == "label+0x4"  # a zero-size symbol reaches the next one
    assert k.describe(0x1030) == "0x1030"
    assert k.describe(0x0fff) == "0xfff"


def test_reduction_never_rounds_up_to_100_percent():
    assert fmt.reduction(0.99999) == ">99.9%"
    assert fmt.reduction(1.0) == "100.0%"
    assert fmt.reduction(None) == "-"
    assert fmt.reduction(-0.0003) == "-<0.1%"
    assert fmt.reduction(0.0) == "0.0%"


@pytest.mark.parametrize("weights", [[1], [5, 3, 2, 1, 1], [1000, 1, 1, 1], [7] * 9])
def test_squarify_tiles_the_whole_rectangle(weights):
    w, h = 760.0, 320.0
    total = sum(weights)
    areas = [x * w * h / total for x in weights]
    rects = svg.squarify(areas, 0, 0, w, h)
    assert len(rects) == len(areas)
    for area, (x, y, rw, rh) in zip(areas, rects, strict=True):
        assert rw * rh == pytest.approx(area)
        assert -1e-6 <= x and x + rw <= w + 1e-6 and -1e-6 <= y and y + rh <= h + 1e-6


def test_added_exits_read_as_plus_n_not_a_negative_percentage():
    """Issue 17: a CPUID loop patched into hypercalls went from 3 exits to 5,003, shown as
    "-166666.7%". Added exits read "+5,000" in text and HTML, and JSON has `added`."""
    from report_fixtures import comparison

    from runtime.report import html, jsonout, text

    assert fmt.change({"unpatched": 3, "dynamic": 5003}, "dynamic") == "+5,000"
    assert fmt.change({"unpatched": 0, "dynamic": 7}, "dynamic") == "+7"
    assert fmt.change({"unpatched": 8, "dynamic": 2}, "dynamic") == "75.0%"
    assert fmt.change({"unpatched": 0, "dynamic": 0}, "dynamic") == "-"
    zoo = comparison("zoo")
    hypercall = next(r for r in zoo.kernels[0].by_kind if r.key == "hypercall")
    assert hypercall.added("dynamic") == hypercall.counts["dynamic"] > 0
    shown = f"+{hypercall.counts['dynamic']:,}"
    assert shown in text.render_plain(zoo) and shown in html.render(zoo)
    data = jsonout.to_json(zoo)["kernels"][0]["exits"]["by_kind"]
    row = next(r for r in data if r["kind"] == "hypercall")
    assert row["added"]["dynamic"] == hypercall.counts["dynamic"]


# -- small cases the mutation check (tests/mutate.py) found untested --------------------------------

def _record(mode: str, serial: bytes = b"same\n", status: int | None = 1, stop: str = "",
            sites: tuple[Site, ...] = (), patches: tuple[Patch, ...] = ()) -> RunRecord:
    return RunRecord(mode, status, stop, serial, {"trap": 1}, {"cli": 1}, sites, patches, None, Timing(1.0))


KERNEL = KernelInfo("k.elf", "0" * 64, ())


def test_the_baseline_is_named_in_the_error():
    with pytest.raises(ValueError, match=r"^a comparison needs the unpatched run$"):
        compare_kernel(KERNEL, {"dynamic": _record("dynamic")})


def test_the_total_row_is_called_total():
    k = compare_kernel(KERNEL, {m: _record(m) for m in ("unpatched", "dynamic")})
    assert k.total.key == "total"


def test_a_site_row_names_the_instruction_as_the_baseline_saw_it():
    base = _record("unpatched", sites=(Site(0x1000, "cli", "cli", "trap", 5),
                                       Site(0x1010, "sti", "", "trap", 2)))
    patched = _record("dynamic", sites=(Site(0x1000, "int3", "int3", "hypercall", 5),),
                      patches=(Patch(0x1010, "irqflags", "jump", 5, "active", text="sti"),))
    k = compare_kernel(KERNEL, {"unpatched": base, "dynamic": patched})
    rows = {s.address: (s.cls, s.text) for s in k.sites}
    assert rows[0x1000] == ("cli", "cli")          # not the patched run's INT3
    assert rows[0x1010] == ("sti", "sti")          # the text the baseline lacked, from the patch


@pytest.mark.parametrize("base, other, expected, got", [
    (b"abc", b"abcd", "byte 3 of 3: b'abc'", "byte 3 of 4: b'abcd'"),  # one output a prefix of the other
    (b"xbc", b"ybc", "byte 0 of 3: b'xbc'", "byte 0 of 3: b'ybc'"),  # differs at the first byte
])
def test_a_mismatch_shows_where_the_outputs_part(base: bytes, other: bytes, expected: str, got: str):
    runs = {"unpatched": _record("unpatched", base), "dynamic": _record("dynamic", other)}
    k = compare_kernel(KERNEL, runs)
    (mm,) = k.mismatches
    assert (mm.what, mm.expected, mm.got) == ("serial", expected, got)


def test_a_mismatch_in_how_the_runs_ended():
    k = compare_kernel(KERNEL, {"unpatched": _record("unpatched", status=3),
                                "dynamic": _record("dynamic", status=None, stop="triple fault")})
    (mm,) = k.mismatches
    assert (mm.what, mm.expected, mm.got) == ("exit status", "3", "stopped: triple fault")


def test_runs_both_cut_by_a_limit_agree_on_the_output_they_share():
    """An OS that never ends is run to --max-insns: each run stops wherever it got to (the
    patched one runs other instructions), so only the output both printed is compared."""
    budget = "guest stopped at EIP {:#x}: instruction budget exhausted (--max-insns) (150000000 instructions)"
    base = _record("unpatched", b"boot\n$ ", status=None, stop=budget.format(0x8010397C))
    further = _record("dynamic", b"boot\n$ ls\n", status=None, stop=budget.format(0x8010455F))
    assert compare_kernel(KERNEL, {"unpatched": base, "dynamic": further}).mismatches == ()
    other = _record("dynamic", b"boot\n# ", status=None, stop=budget.format(0x8010455F))
    (mm,) = compare_kernel(KERNEL, {"unpatched": base, "dynamic": other}).mismatches
    assert mm.what == "serial"
    # A limit on one side only is still a difference in how the runs ended.
    ended = _record("dynamic", b"boot\n$ ", status=1)
    (mm,) = compare_kernel(KERNEL, {"unpatched": base, "dynamic": ended}).mismatches
    assert mm.what == "exit status"


def test_runs_cut_by_a_limit_are_described_as_such():
    from runtime.report.text import describe_outcome

    budget = "guest stopped at EIP {:#x}: instruction budget exhausted (--max-insns) (9 instructions)"
    k = compare_kernel(KERNEL, {"unpatched": _record("unpatched", b"ab", status=None, stop=budget.format(1)),
                                "dynamic": _record("dynamic", b"abc", status=None, stop=budget.format(2))})
    text = describe_outcome(k).plain
    assert text.startswith("Every run was cut by a limit") and "(2 bytes)" in text and "EIP" not in text
