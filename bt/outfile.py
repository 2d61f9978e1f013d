"""Output files: checked before any work, written whole or not at all.

Every file a `bt` command writes (`bt patch -o`, `--json`, `--html`, `--serial`,
`--save-runs`) goes through one `Outputs` set:

    with Outputs(inputs=[kernel]) as outs:          # 1. arguments already parsed
        report = outs.document(args.json, "--json")  # 2. checked, temporary file created
        ...                                          # 3. the work
        report.write_text(text)                      #    (into the temporary file)
        outs.commit()                                # 4. every output renamed into place

An output is refused (`OutputError`, exit 2) when it is a directory, exists but is not
a regular file (a device such as /dev/null or /dev/full, a FIFO, a socket), is one of
the command's inputs (hard links and symlinks included), names the same file as another
output, or its folder is missing or not writable. The folder is checked by creating the
temporary file `NAME.XXXXXXXX.tmp` in it, so the check is the real thing (root passes
`os.access` on a read-only /proc; only creating a file tells). That happens when the
output is declared, before the command reads its input.

Until `commit()`, an existing file of that name is untouched. `commit()` closes every
temporary file and renames it over its name (`os.replace`, atomic in one folder). Leaving
the `with` block without `commit()` (an error, an exception, Ctrl-C) removes them. A
symlink is written through: the file it points to is replaced, the link stays.

Streams (`stream()`, for `bt run --serial`) are written while the command runs. A new
name or a regular file gets the same temporary-file treatment. A stream may also be
`-` (standard output), a path naming this process's standard output or error
(`/dev/stdout`, `/dev/fd/2`), which is then written directly, or an existing character
device or FIFO (`/dev/null` to discard, a terminal, a named pipe), written in place,
because a stream has no "whole" to wait for. A write that fails there (`/dev/full`)
ends the command with `OutputError`. Documents are never written to a device: `-o
/dev/null` is refused rather than replacing /dev/null with a file.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, cast

from bt.errors import OutputError

STDOUT = "-"


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def _std_stream(st: os.stat_result) -> BinaryIO | None:
    """Standard output or error, if `st` is the file behind it (same device and inode)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if _identity(os.fstat(stream.fileno())) == _identity(st):
                return stream.buffer
        except (AttributeError, OSError, ValueError):     # replaced by a test, or closed
            continue
    return None


def _new_file_mode(existing: os.stat_result | None) -> int:
    """An existing file keeps its permission bits; a new one gets 0666 minus the umask,
    as `open()` would give it (mkstemp's 0600 is for the temporary name only)."""
    if existing is not None:
        return stat.S_IMODE(existing.st_mode)
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _stdout_buffer() -> BinaryIO | None:
    return getattr(sys.stdout, "buffer", None)


class Output:
    """One declared output. `write_bytes`/`write_text` fill its temporary file (or write
    straight to standard output for `-`)."""

    def __init__(self, path: Path, option: str, target: Path | None, tmp: Path | None,
                 mode: int, direct: BinaryIO | None, owned: bool = False) -> None:
        self.path = path
        self.option = option
        self._target = target          # what the temporary file is renamed to
        self._tmp = tmp
        self._mode = mode
        self._direct = direct          # standard output, a device or a FIFO: written in place
        self._owned = owned            # `_direct` was opened here (a device): close it at the end
        self._file: BinaryIO | None = None
        self._failed = False

    @property
    def temporary(self) -> Path | None:
        """The temporary file's path (None when written in place), for a writer that wants
        a path rather than `write_bytes`."""
        return self._tmp

    def _fail(self, err: OSError) -> OutputError:
        self._failed = True
        where = "standard output" if str(self.path) == STDOUT else f"{self.option} {self.path}"
        return OutputError(f"{where}: cannot write: {err.strerror or err}")

    def write_bytes(self, data: bytes) -> None:
        if self._direct is not None:
            self.write(data)
            self.flush()
            return
        assert self._tmp is not None
        try:
            self._tmp.write_bytes(data)
        except OSError as err:
            raise self._fail(err) from err

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode("utf-8"))

    # -- the stream interface (BinaryIO's write/flush, what runtime devices call) --------------
    def write(self, data: bytes) -> int:
        if self._failed:
            return len(data)
        try:
            if self._direct is not None:
                if self._direct is _stdout_buffer():
                    sys.stdout.flush()          # text printed before stays before
                self._direct.write(data)
            else:
                if self._file is None:
                    assert self._tmp is not None
                    self._file = open(self._tmp, "wb")
                self._file.write(data)
        except OSError as err:
            raise self._fail(err) from err
        return len(data)

    def flush(self) -> None:
        if self._failed:
            return
        try:
            if self._direct is not None:
                self._direct.flush()
            elif self._file is not None:
                self._file.flush()
        except OSError as err:
            raise self._fail(err) from err

    def _close(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            try:
                file.close()
            except OSError as err:
                raise self._fail(err) from err

    def _commit(self) -> None:
        if self._direct is not None:
            self.flush()
            if self._owned:
                with contextlib.suppress(OSError):
                    self._direct.close()
            return
        assert self._tmp is not None and self._target is not None
        self._close()
        try:
            os.chmod(self._tmp, self._mode)
            os.replace(self._tmp, self._target)
        except OSError as err:
            raise self._fail(err) from err
        self._tmp = None

    def _discard(self) -> None:
        with contextlib.suppress(OSError):
            self._close()
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
            self._tmp = None
        if self._direct is not None and self._owned:
            with contextlib.suppress(OSError):
                self._direct.close()


class Outputs:
    """The outputs of one command: declared (and checked) first, committed together."""

    def __init__(self, inputs: Iterable[str | Path | None] = ()) -> None:
        self._inputs: dict[tuple[int, int], str] = {}
        for path in inputs:
            if path is None or str(path) == STDOUT:
                continue
            with contextlib.suppress(OSError):
                self._inputs[_identity(os.stat(path))] = str(path)
        self._outputs: list[Output] = []
        self._targets: dict[str, str] = {}
        self._created_folders: list[Path] = []
        self._committed = False

    def __enter__(self) -> Outputs:
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None,
                 tb: TracebackType | None) -> None:
        if not self._committed:
            self.discard()

    def document(self, path: str | Path, option: str, *, dash: bool = False) -> Output:
        """A file written whole at the end. `dash`: `-` means standard output."""
        if str(path) == STDOUT:
            if not dash:
                # Not a file called "-" either: that is never what was meant.
                raise OutputError(f"{option} -: this output cannot go to standard output; "
                                  "give a file name")
            return self._add(Output(Path(STDOUT), option, None, None, 0, sys.stdout.buffer))
        return self._declare(Path(path), option, stream=False)

    def stream(self, path: str | Path, option: str) -> Output:
        """A file written as the command runs (see the module docstring for devices)."""
        if str(path) == STDOUT:
            return self._add(Output(Path(STDOUT), option, None, None, 0, sys.stdout.buffer))
        return self._declare(Path(path), option, stream=True)

    def folder(self, path: str | Path, option: str) -> Path:
        """A folder outputs go into (`--save-runs DIR`): it must exist or be creatable; one
        this call creates is removed again if nothing is committed into it."""
        folder = Path(path)
        try:
            st = os.stat(folder)
        except FileNotFoundError:
            try:
                folder.mkdir()
            except OSError as err:
                raise OutputError(f"{option} {path}: cannot create the folder: "
                                  f"{err.strerror or err}") from err
            self._created_folders.append(folder)
            return folder
        except OSError as err:
            raise OutputError(f"{option} {path}: {err.strerror or err}") from err
        if not stat.S_ISDIR(st.st_mode):
            raise OutputError(f"{option} {path}: not a folder")
        return folder

    def _declare(self, path: Path, option: str, stream: bool) -> Output:
        where = f"{option} {path}"
        try:
            st: os.stat_result | None = os.stat(path)      # follows symlinks, /dev/stdout included
        except FileNotFoundError:
            st = None
        except OSError as err:
            raise OutputError(f"{where}: {err.strerror or err}") from err
        if st is not None:
            if _identity(st) in self._inputs:
                raise OutputError(f"{where}: is the input {self._inputs[_identity(st)]}; "
                                  "write the output to another file")
            if stat.S_ISDIR(st.st_mode):
                raise OutputError(f"{where}: is a directory")
            std = _std_stream(st)
            if stream and std is not None:
                return self._add(Output(path, option, None, None, 0, std))
            if stream and (stat.S_ISCHR(st.st_mode) or stat.S_ISFIFO(st.st_mode)):
                return self._add(Output(path, option, None, None, 0, self._open_in_place(where, path),
                                        owned=True))
            if not stat.S_ISREG(st.st_mode):
                raise OutputError(f"{where}: not a regular file (a device, FIFO or socket); "
                                  "give a file name")
            if std is not None:
                raise OutputError(f"{where}: is this command's standard output or error; give a file name")
        target = Path(os.path.realpath(path))          # a symlink is written through
        key = str(target)
        if key in self._targets:
            raise OutputError(f"{where}: the same file as {self._targets[key]}")
        folder = target.parent
        if not folder.is_dir():
            raise OutputError(f"{where}: no folder {folder}")
        try:
            fd, tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=folder)
        except OSError as err:
            raise OutputError(f"{where}: cannot write in {folder}: {err.strerror or err}") from err
        os.close(fd)
        self._targets[key] = where
        return self._add(Output(path, option, target, Path(tmp), _new_file_mode(st), None))

    @staticmethod
    def _open_in_place(where: str, target: Path) -> BinaryIO:
        try:
            return cast(BinaryIO, open(target, "wb", buffering=0))
        except OSError as err:
            raise OutputError(f"{where}: cannot open: {err.strerror or err}") from err

    def _add(self, out: Output) -> Output:
        self._outputs.append(out)
        return out

    def commit(self) -> None:
        """Rename every temporary file into place. On a failure the rest are discarded."""
        try:
            for out in self._outputs:
                out._commit()
        except BaseException:
            self.discard()
            raise
        self._committed = True

    def discard(self) -> None:
        for out in self._outputs:
            out._discard()
        for folder in reversed(self._created_folders):
            with contextlib.suppress(OSError):
                folder.rmdir()        # only if still empty
        self._committed = True
