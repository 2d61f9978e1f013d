"""Campaign manifests and the matrix: what is accepted, what is refused (one line, exit 2), and
which configurations a matrix makes."""

from __future__ import annotations

from pathlib import Path

import pytest

from bt.errors import InputError
from runtime.campaign import manifest, matrix
from runtime.campaign.plan import make_plan

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"


def write(tmp_path: Path, body: str, name: str = "m.toml") -> Path:
    path = tmp_path / name
    path.write_text(f'[[kernels]]\npath = "{SAMPLES}/hello/hello.elf"\n' + body)
    return path


def refused(tmp_path: Path, body: str, name: str = "m.toml") -> str:
    with pytest.raises(InputError) as err:
        manifest.load(write(tmp_path, body, name))
    message = str(err.value)
    assert "\n" not in message and message.startswith(str(tmp_path)), message
    return message


def test_the_sample_manifest_plans_every_sample():
    m = manifest.load(SAMPLES / "campaigns" / "samples.toml")
    names = [k.name for k in m.kernels]
    assert names == ["hello", "irqsave-pv", "irqsave", "timer", "zoo", "usermode"]
    assert all(k.expect is not None and k.expect.is_file() for k in m.kernels)
    assert m.kernels[0].run == {"max_insns": 200_000_000, "cmdline": "mode=test greeting=hi"}
    plan = make_plan(m)
    assert len(plan.configs) == 9 and len(plan.cells) == 6 * 9 * 3


def test_defaults_globs_names_and_expect_templates(tmp_path: Path):
    m = manifest.load(write(tmp_path, f'''
name = "greeter"
cmdline = "mode=test"
[defaults]
max_insns = 1000
cmdline = "x=1"
[[kernels]]
path = "{SAMPLES}/irqsave*/*.elf"
expect = "{{dir}}/expected.serial"
[campaign]
name = "t"
[report]
results = "out"
top = 3
'''))
    assert m.name == "t"
    assert [k.name for k in m.kernels] == ["greeter", "irqsave-pv", "irqsave"]
    assert m.kernels[0].run == {"max_insns": 1000, "cmdline": "mode=test"}  # the kernel's own wins
    assert m.kernels[1].run == {"max_insns": 1000, "cmdline": "x=1"}
    assert m.kernels[2].expect == SAMPLES / "irqsave" / "expected.serial"
    assert m.report.results == tmp_path / "out" and m.report.top == 3


@pytest.mark.parametrize(("body", "needle"), [
    ("[matrix]\nhott = [1]\n", "[matrix]: unknown key 'hott'; did you mean 'hot'?"),
    ("[campaign]\nnmae = 'x'\n", "[campaign]: unknown key 'nmae'"),
    ("colour = 'red'\n", "kernels[0]: unknown key 'colour'"),
    ("module = 'm.bin'\n", "'module': a campaign cannot pass it yet: a module's string is its path"),
    ("[reprot]\n", "top level: unknown key 'reprot'; did you mean 'report'?"),
    ("[matrix]\nhot = [0]\n", "[matrix]: hot: 0 is not a hot threshold"),
    ("[matrix]\nhot = [true]\n", "[matrix]: hot: True is not a hot threshold"),
    ("[matrix]\nmode = ['fast']\n", "'fast' is not a patching mode (none, dynamic, eager, static)"),
    ("[matrix]\ndisable_rule = ['irqflags']\n", "give a list of lists, one per configuration"),
    ("[matrix]\ndisable_rule = [['nosuchrule']]\n", "[matrix] disable_rule: no rule called nosuchrule"),
    ("[matrix]\ndisable_class = [['cpuid', 'nosuch']]\n",
     "[matrix] disable_class: unknown instruction class 'nosuch'"),
    ("[matrix]\nrepeats = 0\n", "repeats: 0 is not a number of runs per cell"),
    ("[matrix]\nhot = []\n", "hot: the list is empty"),
    ("max_insns = -5\n", "kernels[0] max_insns: -5 is not a positive integer"),
    ("timeout = 'soon'\n", "kernels[0] timeout: 'soon' is not a positive number of seconds"),
    ("expect = 'nowhere.serial'\n", "kernels[0] expect: "),
    ("[[kernels]]\npath = 'nothing*.elf'\n", "kernels[1] path: 'nothing*.elf' matches no file"),
    ("[[kernels]]\npath = 'missing.elf'\n", "missing.elf: no such file"),
    (f"[[kernels]]\npath = '{SAMPLES}/hello/hello.elf'\n", "two kernels are called 'hello'"),
    (f"[[kernels]]\npath = '{SAMPLES}/irqsave*/*.elf'\nname = 'x'\n", "matches 2 kernels; a name is for one"),
    ("[matrix\n", "not a TOML manifest"),
])
def test_bad_manifests_are_one_line(tmp_path: Path, body: str, needle: str):
    assert needle in refused(tmp_path, body)


def test_no_kernels_and_yaml_are_refused(tmp_path: Path):
    (tmp_path / "empty.toml").write_text("[matrix]\nhot = [1]\n")
    with pytest.raises(InputError, match="no kernels"):
        manifest.load(tmp_path / "empty.toml")
    with pytest.raises(InputError, match="YAML manifests are not read; write it in TOML"):
        manifest.load(tmp_path / "m.yaml")
    with pytest.raises(InputError, match="cannot read"):
        manifest.load(tmp_path / "absent.toml")


def test_a_dimension_a_mode_does_not_use_makes_no_new_configuration(tmp_path: Path):
    m = manifest.load(write(tmp_path, '''
[matrix]
mode = ["none", "dynamic", "eager", "static"]
hot = [1, 4, 64]
disable_rule = [[], ["irqflags"], ["irqflags", "irqflags"]]
'''))
    configs = m.matrix.configs()
    labels = [c.label(m.matrix.varying) for c in configs]
    # unpatched once; dynamic 3 hot x 2 rule sets (a rule named twice is the same set); eager and
    # static 2 rule sets each, whatever the hot threshold.
    assert labels == ["unpatched", "dynamic hot=1", "dynamic hot=1 -irqflags", "dynamic hot=4",
                      "dynamic hot=4 -irqflags", "dynamic hot=64", "dynamic hot=64 -irqflags",
                      "eager", "eager -irqflags", "static", "static -irqflags"]
    assert configs[0].is_baseline and all(c.baseline() == configs[0] for c in configs)
    assert configs[8].run() == ("dynamic", {"eager": True, "disable_rule": ["irqflags"]})
    assert configs[9].run() == ("static", {})
    m = manifest.load(write(tmp_path, '[matrix]\nmode = ["eager"]\ndisable_class = [[], ["cpuid"]]\n'))
    labels = [c.label(m.matrix.varying) for c in m.matrix.configs()]
    assert labels == ["unpatched", "eager", "eager -class:cpuid"]
    assert m.matrix.configs()[2].run() == ("dynamic", {"eager": True, "disable_class": ["cpuid"]})


def test_the_baseline_runs_even_when_the_matrix_does_not_list_it(tmp_path: Path):
    m = manifest.load(write(tmp_path, "[matrix]\nmode = 'static'\n"))
    assert [c.mode for c in m.matrix.configs()] == ["none", "static"]


def test_every_matrix_key_is_a_dimension_or_repeats():
    assert matrix.MATRIX_KEYS == ("mode", "hot", "disable_rule", "disable_class", "repeats")
    for d in matrix.DIMENSIONS:
        d.read(d.default if not d.list_valued else list(d.default))  # the default passes its own check
        assert d.modes <= matrix.ALL_MODES


def test_input_files_travel_by_content_once_runs_take_them(tmp_path: Path, monkeypatch):
    from runtime.config import RunConfig

    (tmp_path / "a.img").write_bytes(b"disk a")
    (tmp_path / "b.img").write_bytes(b"disk b")
    body = 'disk = ["a.img", "b.img"]\n'
    if "disks" not in RunConfig.__dataclass_fields__:
        assert "'disk': this ring1 cannot give a run a disk file yet (`bt run --disk` does not exist)" in (
            refused(tmp_path, body))
        monkeypatch.setattr(manifest, "available_inputs", lambda: dict(manifest.FILE_INPUTS))
    m = manifest.load(write(tmp_path, body))
    assert m.kernels[0].inputs == (("disk", tmp_path / "a.img"), ("disk", tmp_path / "b.img"))
    plan = make_plan(m)
    refs = next(iter(plan.cells.values())).inputs
    assert [(r.option, r.name, r.many) for r in refs] == [("disk", "a.img", True), ("disk", "b.img", True)]
    (tmp_path / "b.img").write_bytes(b"disk b, changed")  # another disk: other cells
    assert not set(make_plan(manifest.load(write(tmp_path, body))).cells) & set(plan.cells)
