"""Where ring1 keeps what it fetches or derives from big inputs: $RING1_CACHE, or
~/.cache/ring1/. Debian kernels (`bt bench scan`, `bt bench linux`) and the vmlinux
ELF extracted from a bzImage (bt/bzimage.py) live there; nothing in it is committed."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("RING1_CACHE") or Path.home() / ".cache" / "ring1")


def write_atomic(target: Path, data: bytes) -> Path:
    """Write `data` to `target` whole or not at all (a temporary file renamed over it), so a
    run killed halfway never leaves a half-written file for the next one to trust."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.parent / f"{target.name}.{os.getpid()}.partial"
    try:
        partial.write_bytes(data)
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return target
