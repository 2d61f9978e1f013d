"""Fast access to Unicorn's CPU: registers and physical memory.

The unicorn 2.1 Python binding spends about 3 µs per `reg_read`/`reg_write`
(it picks a register class per call); a trap-and-emulate exit does half a dozen
of them, which alone would break the 10 µs budget of one exit. `Cpu` calls the
C functions of libunicorn through ctypes with argument objects built once
(about 1 µs per call, measured with /tmp experiments noted in runtime/vm.py).

Memory accessed here is *physical* (Unicorn's `uc_mem_read` is physical in 2.x);
`runtime.paging` translates guest-linear addresses first.
"""

from __future__ import annotations

import ctypes
from typing import Final

from unicorn import Uc, UcError
from unicorn import x86_const as ux
from unicorn.unicorn_py3.unicorn import uclib

from bt.errors import InternalError

#: Capstone register names ("eax", "cr3", "ax", "al") -> Unicorn register ids.
REG_IDS: Final[dict[str, int]] = {
    name[len("UC_X86_REG_"):].lower(): getattr(ux, name)
    for name in dir(ux) if name.startswith("UC_X86_REG_")
}

EAX, ECX, EDX, EBX = ux.UC_X86_REG_EAX, ux.UC_X86_REG_ECX, ux.UC_X86_REG_EDX, ux.UC_X86_REG_EBX
ESP, EBP, ESI, EDI = ux.UC_X86_REG_ESP, ux.UC_X86_REG_EBP, ux.UC_X86_REG_ESI, ux.UC_X86_REG_EDI
EIP, EFLAGS = ux.UC_X86_REG_EIP, ux.UC_X86_REG_EFLAGS
CS, SS, DS, ES, FS, GS = (ux.UC_X86_REG_CS, ux.UC_X86_REG_SS, ux.UC_X86_REG_DS, ux.UC_X86_REG_ES,
                          ux.UC_X86_REG_FS, ux.UC_X86_REG_GS)
CR0, CR2, CR3, CR4 = ux.UC_X86_REG_CR0, ux.UC_X86_REG_CR2, ux.UC_X86_REG_CR3, ux.UC_X86_REG_CR4

#: Sizes of sub-registers, for operand widths.
REG_SIZE: Final[dict[str, int]] = {
    **{r: 4 for r in ("eax", "ebx", "ecx", "edx", "esi", "edi", "ebp", "esp")},
    **{r: 2 for r in ("ax", "bx", "cx", "dx", "si", "di", "bp", "sp", "cs", "ds", "es", "fs", "gs",
                      "ss")},
    **{r: 1 for r in ("al", "bl", "cl", "dl", "ah", "bh", "ch", "dh")},
}


class Cpu:
    """Registers and physical memory of one Unicorn engine, through ctypes."""

    def __init__(self, uc: Uc) -> None:
        self.uc = uc
        self._h = uc._uch  # the engine handle the binding itself passes to libunicorn
        self._val = ctypes.c_uint64(0)
        self._pval = ctypes.byref(self._val)
        self._reg_read = uclib.uc_reg_read
        self._reg_write = uclib.uc_reg_write
        self._mem_read = uclib.uc_mem_read
        self._mem_write = uclib.uc_mem_write
        self._buf = ctypes.create_string_buffer(64)

    def read(self, reg: int) -> int:
        # Unicorn stores only the register's own width (16 bits for selectors, 32
        # for EIP/EFLAGS): clear the buffer so no stale upper bits survive.
        self._val.value = 0
        if self._reg_read(self._h, reg, self._pval) != 0:
            raise InternalError(f"uc_reg_read({reg}) failed")
        return self._val.value

    def write(self, reg: int, value: int) -> None:
        self._val.value = value & 0xFFFFFFFFFFFFFFFF
        err = self._reg_write(self._h, reg, self._pval)
        if err != 0:
            raise UcError(err)

    def read_name(self, name: str) -> int:
        """A register by Capstone name; sub-registers (ax, al, ah) come out right."""
        value = self.read(REG_IDS[name])
        size = REG_SIZE.get(name, 4)
        return value & ((1 << (8 * size)) - 1)

    def write_name(self, name: str, value: int) -> None:
        """Write a register by Capstone name; sub-registers keep the other bits."""
        size = REG_SIZE.get(name)
        if size is None or size == 4 or name in ("cs", "ds", "es", "fs", "gs", "ss"):
            self.write(REG_IDS[name], value & 0xFFFFFFFF)
        else:
            self.write(REG_IDS[name], value & ((1 << (8 * size)) - 1))

    def phys_read(self, addr: int, size: int) -> bytes:
        buf = self._buf if size <= 64 else ctypes.create_string_buffer(size)
        if self._mem_read(self._h, addr, buf, size) != 0:
            raise UnmappedPhys(addr)
        return buf.raw[:size]

    def phys_write(self, addr: int, data: bytes) -> None:
        if self._mem_write(self._h, addr, data, len(data)) != 0:
            raise UnmappedPhys(addr)

    def phys_u32(self, addr: int) -> int:
        return int.from_bytes(self.phys_read(addr, 4), "little")

    def phys_write_u32(self, addr: int, value: int) -> None:
        self.phys_write(addr, (value & 0xFFFFFFFF).to_bytes(4, "little"))


class UnmappedPhys(Exception):
    """A physical address outside every mapped region (the caller turns it into a GuestStop)."""

    def __init__(self, addr: int) -> None:
        super().__init__(f"physical address {addr:#x} not mapped")
        self.addr = addr
