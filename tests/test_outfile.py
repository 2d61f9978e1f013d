"""bt/outfile.py: outputs are checked before any work and written whole or not at all
(issue 12, "files lost")."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from bt.errors import OutputError, UsageError
from bt.outfile import Outputs


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_written_on_commit_only(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    target.write_text("old")
    with Outputs() as outs:
        out = outs.document(target, "--json")
        out.write_text("new")
        assert target.read_text() == "old"          # untouched until commit
        assert len(_leftovers(tmp_path)) == 1
        outs.commit()
    assert target.read_text() == "new" and not _leftovers(tmp_path)


@pytest.mark.parametrize("stop", [RuntimeError("boom"), KeyboardInterrupt()])
def test_an_exception_or_ctrl_c_keeps_the_old_file(tmp_path: Path, stop: BaseException) -> None:
    target = tmp_path / "serial.txt"
    target.write_text("old")
    with pytest.raises(type(stop)), Outputs() as outs:
        stream = outs.stream(target, "--serial")
        stream.write(b"partial")
        raise stop
    assert target.read_text() == "old" and not _leftovers(tmp_path)


def test_refusals(tmp_path: Path) -> None:
    kernel = tmp_path / "k.elf"
    kernel.write_bytes(b"\x7fELF")
    (tmp_path / "link.elf").symlink_to(kernel)
    os.link(kernel, tmp_path / "hard.elf")
    cases = {
        tmp_path: "is a directory",
        kernel: "is the input",
        tmp_path / "link.elf": "is the input",
        tmp_path / "hard.elf": "is the input",
        tmp_path / "missing" / "x.json": "no folder",
        Path("/dev/null"): "not a regular file",
        Path("/proc/self/status"): "cannot write in",
        Path("-"): "cannot go to standard output",
    }
    for path, why in cases.items():
        with pytest.raises(OutputError, match=why), Outputs(inputs=[kernel]) as outs:
            outs.document(path, "-o")
    assert isinstance(OutputError("x"), UsageError)        # exit 2
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)      # still the device
    assert not _leftovers(tmp_path)


def test_the_same_file_twice_is_refused(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="same file"), Outputs() as outs:
        outs.stream(tmp_path / "x", "--serial")
        outs.document(tmp_path / "." / "x", "--json")
    assert not _leftovers(tmp_path)


def test_a_symlink_is_written_through_and_modes_kept(tmp_path: Path) -> None:
    real = tmp_path / "real.txt"
    real.write_text("old")
    real.chmod(0o640)
    (tmp_path / "link.txt").symlink_to(real)
    with Outputs() as outs:
        outs.document(tmp_path / "link.txt", "--json").write_text("new")
        outs.commit()
    assert (tmp_path / "link.txt").is_symlink() and real.read_text() == "new"
    assert stat.S_IMODE(real.stat().st_mode) == 0o640


def test_streams_to_devices_are_written_in_place(tmp_path: Path) -> None:
    with Outputs() as outs:
        outs.stream("/dev/null", "--serial").write(b"discarded")
        outs.commit()
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    with pytest.raises(OutputError, match="No space left"), Outputs() as outs:
        outs.stream("/dev/full", "--serial").write(b"x")


def test_a_folder_made_for_outputs_goes_again_on_failure(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    with pytest.raises(RuntimeError), Outputs() as outs:
        folder = outs.folder(runs, "--save-runs")
        outs.document(folder / "k.runs.json", "--save-runs").write_text("{}")
        raise RuntimeError
    assert not runs.exists()
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputError, match="not a folder"), Outputs() as outs:
        outs.folder(tmp_path / "file", "--save-runs")
