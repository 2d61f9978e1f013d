"""One error tree for all of ring1.

Every error ring1 raises on purpose derives from `Ring1Error`. Errors of the
libraries underneath (Capstone, Keystone, Unicorn) are wrapped where they
enter ring1 (`raise SomeError(...) from err`), so the CLI can map classes to exit
codes and print one line.

Exit codes are even on purpose: `bt run` ends with the guest's own status the way
QEMU's isa-debug-exit reports it, `(value << 1) | 1`, which is always odd. So an
odd code is the guest speaking, an even non-zero code is ring1 speaking.
"""

from __future__ import annotations

from collections.abc import Callable


class Ring1Error(Exception):
    """Root of every error ring1 raises on purpose."""

    exit_code = 8
    #: Prints what follows the CLI's one error line on stderr (`bt run`'s last exits and
    #: statistics after a stop), so that the error line comes first; None: nothing follows.
    report: Callable[[], None] | None = None


class UsageError(Ring1Error):
    """A bad flag or a bad combination of flags."""

    exit_code = 2


class InputError(Ring1Error):
    """A file ring1 was asked to read is missing, corrupt or of a foreign kind."""

    exit_code = 2


class OutputError(UsageError):
    """An output file cannot be written where asked: a directory, a device, the input
    itself, a missing or read-only folder, a full disk (bt/outfile.py)."""


class HostError(Ring1Error):
    """The host cannot give ring1 what a run needs (memory under an address-space limit).
    Even, like every code of ring1's: never mistaken for a guest's odd status."""

    exit_code = 2


class ElfError(InputError):
    """Not an ELF, not x86, or no executable code. `path` names the file."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class AssembleError(Ring1Error):
    """Keystone refused to assemble a patch or stub (a bug in a patch rule)."""

    exit_code = 8


class PatchError(Ring1Error):
    """The patch manager could not apply or record a patch."""

    exit_code = 8


class GuestStop(Ring1Error):
    """The guest stopped abnormally: triple fault, jump into unmapped memory,
    unknown opcode, instruction or time budget exhausted. Carries the guest EIP."""

    exit_code = 4

    def __init__(self, reason: str, eip: int | None = None, detail: str = "") -> None:
        where = f" at EIP {eip:#010x}" if eip is not None else ""
        more = f" ({detail})" if detail else ""
        super().__init__(f"guest stopped{where}: {reason}{more}")
        self.reason = reason
        self.eip = eip
        self.detail = detail
        #: What the VMM did last before the stop, oldest first: (kind, class or
        #: vector, guest EIP). Filled by the run loop for the stop report.
        self.last_exits: list[tuple[str, str, int]] = []


class MismatchError(Ring1Error):
    """Two runs that must agree (unpatched vs patched, ring1 vs QEMU) did not."""

    exit_code = 6


class InternalError(Ring1Error):
    """A bug in ring1 itself. `last_exits` as for `GuestStop` when it hit during a run."""

    exit_code = 8

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self.last_exits: list[tuple[str, str, int]] = []
