"""Reading an input file whole, with a bound.

`Path.read_bytes()` on /dev/zero, /dev/full or /dev/urandom never ends: it grows until
the process runs out of memory. Every file ring1 reads whole (the kernel, `--expect`,
`--replay`'s recorded runs) is read here: a device is refused, a regular file larger than
`MAX_INPUT` is refused before a byte is read, a FIFO (`<(...)`) is read up to the bound.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

#: The largest input read. Far above any kernel (a Linux vmlinux is tens of MiB); the
#: memory ring1 needs grows with the input (docs/robustness.md has the figures).
MAX_INPUT = 1 << 30


class Unreadable(Exception):
    """Why a file could not be read; `str()` is the reason, without the path."""


def read_input(path: str | Path, limit: int = MAX_INPUT) -> bytes:
    """The whole file, or `Unreadable` with a one-line reason."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if stat.S_ISDIR(st.st_mode):
                raise Unreadable("is a directory")
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISFIFO(st.st_mode)):
                raise Unreadable("is a device, not a file")
            if st.st_size > limit:
                raise Unreadable(f"{st.st_size:,} bytes: larger than the {limit >> 20} MiB ring1 reads")
            # Chunks: read(limit + 1) would reserve the whole bound up front.
            chunks, size = [], 0
            while size <= limit:
                chunk = f.read(min(1 << 24, limit + 1 - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
            data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    except FileNotFoundError:
        raise Unreadable("no such file") from None
    except IsADirectoryError:
        raise Unreadable("is a directory") from None
    except OSError as err:
        raise Unreadable(f"cannot read: {err.strerror or err}") from err
    if len(data) > limit:
        raise Unreadable(f"larger than the {limit >> 20} MiB ring1 reads")
    return data
