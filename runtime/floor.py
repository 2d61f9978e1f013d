"""The engine floor: a kernel on bare Unicorn at CPL 0, with no VMM.

What a guest costs when nothing of ring1 runs: the same multiboot kernel, loaded as
`bt run` loads it (runtime/boot.py) and entered in the state QEMU's loader leaves
(its GDT, CS 0x08, DS 0x10, EAX/EBX of multiboot), on a Unicorn engine with one hook
on IN and one on OUT and nothing else: COM1 (its line status always says "ready") and
the isa-debug-exit port. Every privileged instruction runs natively at CPL 0, so no
exit happens and no instruction is counted. This is the floor `bt bench engine`
measures ring1 against (issue 14): no VMM on the same engine can be faster.

It has no interrupt controller, timer, disk or screen: a kernel that waits for an
interrupt (HLT with nothing to wake it) or needs a device stops here with a reason,
and the floor is not measured for it. The per-store probe (`store_cost`) measures
what the installed Unicorn charges for a guest store, the engine's largest cost
(runtime/README.md, "Virtual time").
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from unicorn import UC_HOOK_INSN, UC_PROT_ALL, Uc, UcError
from unicorn import x86_const as ux

from bt.errors import InputError
from bt.layout import ENTRY_EFLAGS, ENTRY_ESP, LOADER_GDT_BASE, RAM_DEFAULT
from runtime.boot import LOADER_CS, LOADER_DS, LOADER_GDT, load_boot_image
from runtime.engine import hook_native, new_engine

COM1, COM1_LCR, COM1_LSR = 0x3F8, 0x3FB, 0x3FD
LCR_DLAB = 0x80           # while set, COM1+0 is the divisor latch, not the transmitter
LSR_READY = 0x60          # THR empty and transmitter idle: the guest never waits
DEBUG_EXIT = 0xF4
CR0_PE_ET = 0x11          # protected mode, as the loader leaves it (ET is hard-wired)


@dataclass(frozen=True)
class FloorRun:
    serial: bytes
    #: The value the guest wrote to isa-debug-exit, None when it stopped otherwise.
    status: int | None
    #: Why the guest stopped without isa-debug-exit ("" when it used it).
    reason: str
    eip: int
    seconds: float       #: `emu_start` to the guest's last instruction: guest code only


def run_floor(kernel: str | Path, cmdline: str = "", ram_size: int = RAM_DEFAULT,
              timeout_s: float = 120.0, block_hook: bool = False) -> FloorRun:
    """Run `kernel` on a bare engine until it writes isa-debug-exit, halts or faults.
    `block_hook`: with a C block hook that does nothing (runtime/native), Unicorn's own cost
    of any exact per-block count such as ring1's block clock (runtime/clock.py)."""
    image = load_boot_image(kernel, ram_size=ram_size, cmdline=cmdline)
    uc = new_engine()
    uc.mem_map(0, ram_size, UC_PROT_ALL)
    for addr, data in image.chunks:
        uc.mem_write(addr, data)
    uc.mem_write(LOADER_GDT_BASE, LOADER_GDT)
    uc.reg_write(ux.UC_X86_REG_GDTR, (0, LOADER_GDT_BASE, len(LOADER_GDT) - 1, 0))
    uc.reg_write(ux.UC_X86_REG_CR0, CR0_PE_ET)
    uc.reg_write(ux.UC_X86_REG_CS, LOADER_CS)
    for seg in (ux.UC_X86_REG_DS, ux.UC_X86_REG_ES, ux.UC_X86_REG_SS, ux.UC_X86_REG_FS, ux.UC_X86_REG_GS):
        uc.reg_write(seg, LOADER_DS)
    uc.reg_write(ux.UC_X86_REG_EAX, image.eax)
    uc.reg_write(ux.UC_X86_REG_EBX, image.ebx)
    uc.reg_write(ux.UC_X86_REG_ESP, ENTRY_ESP)
    uc.reg_write(ux.UC_X86_REG_EFLAGS, ENTRY_EFLAGS)

    serial = bytearray()
    status: list[int] = []
    lcr = [0]

    def on_in(u: Uc, port: int, _size: int, _data: object) -> int:
        return LSR_READY if port == COM1_LSR else 0

    def on_out(u: Uc, port: int, _size: int, value: int, _data: object) -> None:
        if port == COM1 and not lcr[0] & LCR_DLAB:
            serial.append(value & 0xFF)
        elif port == COM1_LCR:
            lcr[0] = value
        elif port == DEBUG_EXIT:
            status.append(value)
            u.emu_stop()

    uc.hook_add(UC_HOOK_INSN, on_in, None, 1, 0, ux.UC_X86_INS_IN)
    uc.hook_add(UC_HOOK_INSN, on_out, None, 1, 0, ux.UC_X86_INS_OUT)
    if block_hook:
        add_noop_block_hook(uc)
    reason = ""
    t0 = time.perf_counter()
    try:
        uc.emu_start(image.entry, 1 << 32, timeout=int(timeout_s * 1e6))
    except UcError as err:
        reason = f"the engine stopped: {err}"
    seconds = time.perf_counter() - t0
    eip = uc.reg_read(ux.UC_X86_REG_EIP)
    if not status and not reason:
        reason = "the guest halted or ran out of time (the floor has no interrupts to wake it)"
    return FloorRun(bytes(serial), status[0] if status else None, reason, eip, seconds)


def add_noop_block_hook(uc: Uc) -> None:
    """A C block hook that does nothing: Unicorn's own cost of any exact per-block count."""
    from unicorn import UC_HOOK_BLOCK

    from runtime.clock import native_module

    native = native_module()
    if native is None:
        raise InputError("runtime._native is not built: no C block hook to install")
    hook_native(uc, UC_HOOK_BLOCK, native.noop_hook_address(), None)


@dataclass(frozen=True)
class StoreCost:
    """ns per iteration of three loops on a bare engine, one word of RAM each."""

    store_ns: float
    load_ns: float
    empty_ns: float

    @property
    def per_store_ns(self) -> float:
        return self.store_ns - self.empty_ns

    @property
    def per_load_ns(self) -> float:
        return self.load_ns - self.empty_ns


_STORE_LOOP = {
    # mov ecx, N; top: mov [0x8000], eax / mov eax, [0x8000] / nop; dec ecx; jnz top; hlt
    "store": bytes.fromhex("a300800000"),
    "load": bytes.fromhex("a100800000"),
    "empty": bytes.fromhex("9090909090"),
}


def _loop_ns(body: bytes, iters: int) -> float:
    uc = new_engine()
    uc.mem_map(0, 0x10000, UC_PROT_ALL)
    # Code at 0x1000, data at 0x8000: the same 4 KiB page would make every store a
    # write to a page holding translated code (Unicorn's slowest path), not the case measured.
    back = (-(len(body) + 3)) & 0xFF          # jnz to the body's first byte
    code = b"\xb9" + iters.to_bytes(4, "little") + body + b"\x49\x75" + bytes([back]) + b"\xf4"
    uc.mem_write(0x1000, code)
    end = 0x1000 + len(code) - 1
    uc.emu_start(0x1000, end)          # translate once, so the timed run measures execution
    t0 = time.perf_counter()
    uc.emu_start(0x1000, end)
    return (time.perf_counter() - t0) / iters * 1e9


def store_cost(iters: int = 2_000_000) -> StoreCost:
    """What one guest store costs on the installed Unicorn, beside one load (issue 14:
    Unicorn 2.1.4 sends every store through its soft-MMU slow path)."""
    return StoreCost(*(_loop_ns(_STORE_LOOP[k], iters) for k in ("store", "load", "empty")))


def main(argv: list[str] | None = None) -> int:
    """`python -m runtime.floor KERNEL [--cmdline C]`: one floor run, as JSON on stdout
    (the serial output in hex), for `bt bench engine`, which times the whole process."""
    import argparse
    import json

    p = argparse.ArgumentParser(prog="python -m runtime.floor", description=main.__doc__)
    p.add_argument("kernel", type=Path)
    p.add_argument("--cmdline", default="")
    p.add_argument("--block-hook", action="store_true", help="with a C block hook that does nothing")
    args = p.parse_args(argv)
    run = run_floor(args.kernel, args.cmdline, block_hook=args.block_hook)
    print(json.dumps({"serial": run.serial.hex(), "status": run.status,
                      "reason": run.reason, "eip": run.eip, "seconds": run.seconds}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
