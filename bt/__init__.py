"""ring1's lowest layer: the x86 virtualization table, ELF loading, the CSAM-style
scanner, and the guest address layout. Nothing in here imports `patchmgr` or
`runtime` (the CLI package `bt.cli` is the application layer above all three)."""

__version__ = "0.1.0"
