"""Fast access to Unicorn's CPU: registers and physical memory.

The unicorn 2.1 Python binding spends about 3 µs per `reg_read`/`reg_write`
(it picks a register class per call; measured here with a loop of 20,000 calls);
a trap-and-emulate exit does several, which alone would break the 10 µs budget of
one exit. `Cpu` calls the C functions of libunicorn through ctypes with argument
objects built once (0.7-1 µs per call, same measurement), and reads EIP and CS
in one batch call at the top of every exit.

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
    """Registers (through ctypes) and physical memory (host buffers) of one engine.

    Guest RAM and the VMM area are host memory the VMM allocates and hands to
    Unicorn with `mem_map_ptr`, so the VMM reads and writes guest-physical memory
    with plain slicing (a tenth of a µs) instead of `uc_mem_read` (1.5 µs). Code
    the VMM writes this way bypasses Unicorn's translation cache: whoever writes
    guest *code* calls `uc.ctl_remove_cache` (the patch manager does).
    """

    def __init__(self, uc: Uc) -> None:
        self.uc = uc
        self._h = ctypes.c_void_p(int(uc._uch.value or 0))  # type: ignore[union-attr]
        self._val = ctypes.c_uint64(0)
        self._pval = ctypes.byref(self._val)
        # Prototypes of our own (no per-call argument conversion by the binding's argtypes).
        lib = ctypes.CDLL(uclib._name)
        self._reg_read = lib.uc_reg_read
        self._reg_write = lib.uc_reg_write
        self._reg_read.restype = self._reg_write.restype = ctypes.c_int
        self._regions: list[tuple[int, int, memoryview]] = []
        # EIP and CS in one call, for the top of every exit.
        self._batch = lib.uc_reg_read_batch
        self._batch.restype = ctypes.c_int
        self._pair = (ctypes.c_uint64 * 2)()
        self._pair_ids = (ctypes.c_int * 2)(EIP, CS)
        self._pair_ptrs = (ctypes.c_void_p * 2)(ctypes.addressof(self._pair),
                                                ctypes.addressof(self._pair) + 8)
        # EIP, CS and EFLAGS in one call, for the top of an exception exit.
        self._triple = (ctypes.c_uint64 * 3)()
        self._triple_ids = (ctypes.c_int * 3)(EIP, CS, EFLAGS)
        self._triple_ptrs = (ctypes.c_void_p * 3)(*(ctypes.addressof(self._triple) + 8 * i for i in range(3)))

    def add_region(self, base: int, mem: memoryview) -> None:
        self._regions.append((base, base + len(mem), mem))

    def read(self, reg: int) -> int:
        # Unicorn stores only the register's own width (16 bits for selectors, 32
        # for EIP/EFLAGS): clear the buffer so no stale upper bits survive.
        self._val.value = 0
        if self._reg_read(self._h, reg, self._pval) != 0:
            raise InternalError(f"uc_reg_read({reg}) failed")
        return self._val.value

    # The two below mask each value to its register's width rather than clear the buffers
    # first (as `read` does): the same values, one ctypes store fewer per register on every exit.
    def eip_cs_flags(self) -> tuple[int, int, int]:
        t = self._triple
        if self._batch(self._h, self._triple_ids, self._triple_ptrs, 3) != 0:
            raise InternalError("uc_reg_read_batch failed")
        return t[0] & 0xFFFFFFFF, t[1] & 0xFFFF, t[2] & 0xFFFFFFFF

    def eip_cs(self) -> tuple[int, int]:
        pair = self._pair
        if self._batch(self._h, self._pair_ids, self._pair_ptrs, 2) != 0:
            raise InternalError("uc_reg_read_batch failed")
        return pair[0] & 0xFFFFFFFF, pair[1] & 0xFFFF

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

    def words(self, addr: int, count: int) -> ctypes.Array[ctypes.c_uint32]:
        """A live array of `count` 32-bit words at physical `addr` (for the state
        block, read and written on every exit: ~50 ns per access)."""
        off, mem = self._region(addr, 4 * count)
        return (ctypes.c_uint32 * count).from_buffer(mem.obj, off)

    def _region(self, addr: int, size: int) -> tuple[int, memoryview]:
        for lo, hi, mem in self._regions:
            if lo <= addr and addr + size <= hi:
                return addr - lo, mem
        raise UnmappedPhys(addr)

    def phys_read(self, addr: int, size: int) -> bytes:
        off, mem = self._region(addr, size)
        return bytes(mem[off:off + size])

    def phys_view(self, addr: int, size: int) -> memoryview:
        """A live view of `size` bytes at physical `addr`: it shows later writes (the CPU's and
        the VMM's), and compares with `bytes` in place."""
        off, mem = self._region(addr, size)
        return mem[off:off + size]

    def phys_write(self, addr: int, data: bytes) -> None:
        off, mem = self._region(addr, len(data))
        mem[off:off + len(data)] = data

    def phys_u32(self, addr: int) -> int:
        off, mem = self._region(addr, 4)
        return int.from_bytes(mem[off:off + 4], "little")

    def phys_write_u32(self, addr: int, value: int) -> None:
        off, mem = self._region(addr, 4)
        mem[off:off + 4] = (value & 0xFFFFFFFF).to_bytes(4, "little")


class UnmappedPhys(Exception):
    """A physical address outside every mapped region (the caller turns it into a GuestStop)."""

    def __init__(self, addr: int) -> None:
        super().__init__(f"physical address {addr:#x} not mapped")
        self.addr = addr
