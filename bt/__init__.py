"""ring1's lowest layer: the x86 virtualization table, ELF loading, the CSAM-style
scanner, and the guest address layout. Nothing in here imports `patchmgr` or
`runtime` (the CLI package `bt.cli` is the application layer above all three)."""

__version__ = "0.1.0"

import os as _os

# ring1 uses NumPy for table scans, never for linear algebra. OpenBLAS would start a
# thread per core at import (~60 ms of start-up here) and spin them on the core the
# guest's Unicorn thread competes for (seen in `perf`). Set before anything imports NumPy;
# a caller's own setting wins.
_os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
