"""One emulator per instruction class of `bt.isa`, one module per family.

`EMULATORS[class_name](op, ctx, next_eip)` executes an `Operation` on the virtual
CPU; it returns None to continue at `next_eip`, an address to continue there, or
`runtime.context.HANDLED` when it has set EIP itself (an interrupt was delivered).
"""

from __future__ import annotations

from runtime.context import Emulator
from runtime.emulate import crs, io, irqflags, misc, msr, tables, transfers

EMULATORS: dict[str, Emulator] = {}
for _family in (irqflags, crs, tables, msr, io, transfers, misc):
    for _name, _fn in _family.EMULATORS.items():
        assert _name not in EMULATORS, f"class {_name} emulated twice"
        EMULATORS[_name] = _fn
