"""Linear sweep: decode every byte of the executable sections once, into numpy arrays.

This is the scanner's only full decoding pass, and the reason it can be faster than
`objdump -d`. Capstone's Python bindings cost far more per instruction than its C
decoder (building a tuple, decoding two strings, a ctypes struct per instruction:
about 1.8 us per instruction in `Cs.disasm_lite`, against 0.6 us for `cs_disasm`
itself), so this module calls `cs_disasm` through Capstone's own ctypes handle on
64 KiB chunks and reads the resulting `cs_insn` array as a numpy structured array,
without a Python object per instruction. Detail is off: the id, address, size and
raw bytes are all the later passes need (direct branch targets are computed from the
encoding's rel8/rel16/rel32), plus the text of the few sensitive sites.

Runs of 16 or more 0xCC bytes are not decoded: once the sweep reaches one at an
instruction boundary, every byte of it is a one-byte INT3 (Linux pads its text with
megabytes of them), so their records are written directly.

SKIPDATA is on, so undecodable bytes come back as one-byte records with id 0 (what
`objdump` prints as "(bad)"); they end a basic block.

What each instruction means for control flow is kept as a small code per flow
instruction (`FlowKind`); which instruction is sensitive is asked of `bt.isa`.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import IntEnum

import capstone
import numpy as np
from capstone import x86_const as x

from bt import arrays, isa
from bt.errors import InternalError

CHUNK = 1 << 16          # bytes decoded per cs_disasm call (about 20k instructions, 5 MB of cs_insn)
MAX_INSN = 15            # longest x86 instruction (SDM vol. 2 §2.1)


class FlowKind(IntEnum):
    """How an instruction leaves its basic block (0: it does not)."""

    NONE = 0
    COND = 1          # Jcc, LOOPcc, JECXZ: target and fall-through
    JUMP = 2          # direct JMP (near, or far with an immediate ptr16:32): target only
    CALL = 3          # direct CALL (near or far ptr16:32): target and fall-through (CSAM: calls return)
    CALL_INDIRECT = 4  # indirect CALL (far through memory included): fall-through only
    END = 5           # RET, IRET, indirect JMP, UD2, INT3, SYSEXIT, undecodable byte...


_COND_IDS = (x.X86_INS_JA, x.X86_INS_JAE, x.X86_INS_JB, x.X86_INS_JBE, x.X86_INS_JCXZ, x.X86_INS_JE,
             x.X86_INS_JECXZ, x.X86_INS_JG, x.X86_INS_JGE, x.X86_INS_JL, x.X86_INS_JLE, x.X86_INS_JNE,
             x.X86_INS_JNO, x.X86_INS_JNP, x.X86_INS_JNS, x.X86_INS_JO, x.X86_INS_JP, x.X86_INS_JRCXZ,
             x.X86_INS_JS, x.X86_INS_LOOP, x.X86_INS_LOOPE, x.X86_INS_LOOPNE)
# Instructions after which execution does not continue at the next byte (CSAM stops
# its descent at ret/iret/jmp/ud2; INT3 is Linux's padding between functions).
_END_IDS = (0, x.X86_INS_RET, x.X86_INS_RETF, x.X86_INS_RETFQ, x.X86_INS_IRET, x.X86_INS_IRETD,
            x.X86_INS_IRETQ, x.X86_INS_UD0, x.X86_INS_UD1, x.X86_INS_UD2, x.X86_INS_INT3,
            x.X86_INS_LJMP, x.X86_INS_SYSEXIT, x.X86_INS_SYSEXITQ, x.X86_INS_SYSRET,
            x.X86_INS_SYSRETQ)

_INSN_SIZE = ctypes.sizeof(capstone._cs_insn)
_F = {name: getattr(capstone._cs_insn, name) for name, _ in capstone._cs_insn._fields_}
# A view of Capstone's cs_insn array (capstone/include/capstone/capstone.h) without copying
# it; `op2` overlaps the first two characters of `op_str`.
_REC = np.dtype({
    "names": ["id", "address", "size", "bytes", "mnemonic", "op_str", "op2"],
    "formats": ["<u4", "<u8", "<u2", ("u1", (16,)), "S32", "S160", ("u1", (2,))],
    "offsets": [_F["id"].offset, _F["address"].offset, _F["size"].offset, _F["bytes"].offset,
                _F["mnemonic"].offset, _F["op_str"].offset, _F["op_str"].offset],
    "itemsize": _INSN_SIZE,
})

# Legacy prefixes (SDM vol. 2 §2.1.1); REX (0x40-0x4F) counts as a prefix in 64-bit mode only.
_PREFIX32 = np.zeros(256, dtype=bool)
_PREFIX32[[0xF0, 0xF2, 0xF3, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65, 0x66, 0x67]] = True
_PREFIX64 = _PREFIX32.copy()
_PREFIX64[0x40:0x50] = True

# Per Capstone id: the FlowKind it has if direct (JMP/CALL are refined by their operand),
# and whether it may be sensitive (1: by id alone, 2: depends on operands; see bt.isa).
_MAX_ID = 4096
_KIND_BY_ID = np.zeros(_MAX_ID, dtype=np.uint8)
_KIND_BY_ID[list(_COND_IDS)] = FlowKind.COND
_KIND_BY_ID[list(_END_IDS)] = FlowKind.END
_KIND_BY_ID[x.X86_INS_JMP] = FlowKind.JUMP
_KIND_BY_ID[x.X86_INS_CALL] = FlowKind.CALL
_KIND_BY_ID[x.X86_INS_LCALL] = FlowKind.CALL_INDIRECT
_SENSITIVE_BY_ID = np.zeros(_MAX_ID, dtype=np.uint8)
_SENSITIVE_BY_ID[sorted(isa.ID_CLASSES)] = 1
_SENSITIVE_BY_ID[sorted(isa.OPERAND_DEPENDENT_IDS)] = 2


@dataclass
class Candidate:
    """An instruction `bt.isa` may classify as sensitive (decoded again with detail later)."""

    index: int          # into Sweep.address
    address: int
    size: int
    id: int
    text: str


@dataclass
class Sweep:
    """Every instruction of the linear sweep, sorted by address, one array element each."""

    address: np.ndarray       # uint64
    size: np.ndarray          # uint8
    flow_index: np.ndarray    # int64 indices into `address` of flow instructions, ascending
    flow_kind: np.ndarray     # uint8 FlowKind per flow instruction
    flow_target: np.ndarray   # uint64 direct target per flow instruction (0: none)
    id: np.ndarray            # uint16 Capstone instruction id (0: undecodable byte)
    candidates: list[Candidate]   # every candidate except INT3 (mostly padding: see `id`)
    invalid_bytes: int

    @property
    def count(self) -> int:
        return int(self.address.shape[0])


class _Out:
    """Output arrays, allocated once at their largest possible size (one instruction per byte)
    and filled in place: the pages never written cost no memory, and no concatenation
    doubles the peak at the end."""

    def __init__(self, capacity: int) -> None:
        self.address = np.empty(capacity, dtype=np.uint64)
        self.size = np.empty(capacity, dtype=np.uint8)
        self.id = np.empty(capacity, dtype=np.uint16)
        self.flow_index = np.empty(capacity, dtype=np.int64)
        self.flow_kind = np.empty(capacity, dtype=np.uint8)
        self.flow_target = np.empty(capacity, dtype=np.uint64)
        self.n = 0          # instructions so far
        self.nf = 0         # flow instructions so far

    def put(self, address: np.ndarray, size: np.ndarray, ids: np.ndarray, flows: np.ndarray,
            kind: np.ndarray, target: np.ndarray) -> None:
        n, k, nf, kf = self.n, address.shape[0], self.nf, flows.shape[0]
        self.address[n:n + k] = address
        self.size[n:n + k] = size
        self.id[n:n + k] = ids
        self.flow_index[nf:nf + kf] = flows + n
        self.flow_kind[nf:nf + kf] = kind
        self.flow_target[nf:nf + kf] = target
        self.n, self.nf = n + k, nf + kf


class Decoder:
    """A Capstone engine for one mode, used for the bulk pass and for single instructions."""

    def __init__(self, bits: int) -> None:
        mode = capstone.CS_MODE_64 if bits == 64 else capstone.CS_MODE_32
        self.bits = bits
        try:
            self.bulk = capstone.Cs(capstone.CS_ARCH_X86, mode)
            self.bulk.skipdata = True
            self.plain = capstone.Cs(capstone.CS_ARCH_X86, mode)
            self.detail = capstone.Cs(capstone.CS_ARCH_X86, mode)
            self.detail.detail = True
        except capstone.CsError as err:
            raise InternalError(f"capstone: {err}") from err
        self._prefix = _PREFIX64 if bits == 64 else _PREFIX32
        self._maybe = _operand_dependent_opcodes(bits)

    def decode_one(self, code: bytes, address: int) -> capstone.CsInsn | None:
        """One instruction with detail (for classification), or None if undecodable."""
        return next(self.detail.disasm(code, address, 1), None)

    def sweep(self, regions: Iterable[tuple[int, memoryview]],
              progress: Callable[[int], None] | None = None) -> Sweep:
        """Decode each (address, bytes) region linearly, every byte once."""
        regions = list(regions)
        out = _Out(sum(len(data) for _, data in regions))
        candidates: list[Candidate] = []
        invalid = 0
        done = 0
        for base, data in regions:
            buf = (ctypes.c_char * len(data)).from_buffer_copy(data)
            start = ctypes.addressof(buf)
            runs = _padding_runs(np.frombuffer(memoryview(buf).cast("B"), dtype=np.uint8))
            off = 0
            r = 0
            while off < len(data):
                while r < len(runs) and runs[r][1] <= off:
                    r += 1
                if r < len(runs) and runs[r][0] <= off:
                    # At an instruction boundary inside a run of 0xCC: every byte is an INT3,
                    # so the run needs no decoding (Linux pads with megabytes of them).
                    off = self._int3_run(out, base, off, runs[r][1])
                    continue
                limit = min(off + CHUNK, runs[r][0] if r < len(runs) else len(data))
                end = min(limit + MAX_INSN, len(data))
                insns = ctypes.POINTER(capstone._cs_insn)()
                count = capstone._cs.cs_disasm(
                    self.bulk.csh, ctypes.cast(start + off, ctypes.POINTER(ctypes.c_char)),
                    end - off, base + off, 0, ctypes.byref(insns))
                if count == 0:
                    raise InternalError(f"capstone decoded nothing at {base + off:#x}")
                try:
                    view = (ctypes.c_char * (count * _INSN_SIZE)).from_address(
                        ctypes.addressof(insns.contents))
                    recs = np.frombuffer(view, dtype=_REC)
                    # keep what starts before the limit: all its bytes were in the buffer
                    recs = recs[:max(1, int(np.searchsorted(recs["address"], np.uint64(base + limit))))]
                    invalid += self._chunk(recs, out, candidates)
                    off = int(recs["address"][-1]) - base + int(recs["size"][-1])
                finally:
                    capstone._cs.cs_free(insns, count)
                if progress is not None:
                    progress(done + off)
            done += len(data)
        n, nf = out.n, out.nf
        return Sweep(address=out.address[:n], size=out.size[:n], id=out.id[:n],
                     flow_index=out.flow_index[:nf], flow_kind=out.flow_kind[:nf],
                     flow_target=out.flow_target[:nf], candidates=candidates, invalid_bytes=invalid)

    @staticmethod
    def _int3_run(out: _Out, base: int, start: int, end: int) -> int:
        k = end - start
        out.put(np.arange(base + start, base + end, dtype=np.uint64), np.ones(k, np.uint8),
                np.full(k, x.X86_INS_INT3, np.uint16), np.arange(k, dtype=np.int64),
                np.full(k, FlowKind.END, np.uint8), np.zeros(k, np.uint64))
        return end

    def _chunk(self, recs: np.ndarray, out: _Out, candidates: list[Candidate]) -> int:
        """Copy what later passes need out of Capstone's buffer (it is freed after this)."""
        first = out.n
        ids = recs["id"]
        kind = _KIND_BY_ID[ids]
        flows = np.flatnonzero(kind)
        kind = kind[flows]
        faddr, fsize, fbytes = recs["address"][flows], recs["size"][flows], recs["bytes"][flows]
        # JMP/CALL are direct when Capstone prints a bare "0x..." target (Intel syntax).
        op2 = recs["op2"][flows]
        direct = (op2[:, 0] == ord("0")) & (op2[:, 1] == ord("x"))
        kind[(kind == FlowKind.JUMP) & ~direct] = FlowKind.END
        kind[(kind == FlowKind.CALL) & ~direct] = FlowKind.CALL_INDIRECT
        far = self._far_direct(ids[flows], fbytes)
        target = self._targets(faddr, fsize, fbytes, kind)    # far rows are END/CALL_INDIRECT here
        if far.any():
            kind[far] = np.where(ids[flows][far] == x.X86_INS_LJMP, FlowKind.JUMP, FlowKind.CALL)
            target[far] = self._far_offsets(fbytes[far])
        out.put(recs["address"], recs["size"], ids, flows, kind, target)

        sensitive = _SENSITIVE_BY_ID[ids]
        maybe = np.flatnonzero(sensitive == 2)
        if maybe.shape[0]:
            raw = recs["bytes"][maybe]
            pos = self._opcode_position(raw)
            rows = np.arange(maybe.shape[0])
            sensitive[maybe] = self._maybe[raw[rows, pos], raw[rows, pos + 1]]
        sensitive[ids == x.X86_INS_INT3] = 0     # padding, mostly: the scanner looks at `id`
        for r in np.flatnonzero(sensitive).tolist():
            rec = recs[r]
            # Capstone does not clear its buffers past a string's NUL: cut there.
            mn = rec["mnemonic"].split(b"\0", 1)[0].decode()
            ops = rec["op_str"].split(b"\0", 1)[0].decode()
            candidates.append(Candidate(first + r, int(rec["address"]), int(rec["size"]), int(rec["id"]),
                                        f"{mn} {ops}".strip()))
        return int(np.count_nonzero(ids == 0))

    def _opcode_position(self, raw: np.ndarray) -> np.ndarray:
        """Index of the first non-prefix byte of each row (at most 5 prefixes looked at)."""
        return np.argmin(self._prefix[raw[:, :6]], axis=1)

    def _far_direct(self, ids: np.ndarray, code: np.ndarray) -> np.ndarray:
        """Rows that are a far JMP/CALL with an immediate ptr16:32 (EA/9A, no operand-size
        prefix: `ljmp $0x08, $1f` after LGDT). Their offset is followed like a near target;
        the ptr16:16 form (66 EA), which goes to 16-bit code, and 64-bit mode (where EA/9A
        are invalid) are not."""
        far = arrays.isin(ids, (x.X86_INS_LJMP, x.X86_INS_LCALL))
        if self.bits != 32 or not far.any():
            return np.zeros(ids.shape[0], dtype=bool)
        pos = self._opcode_position(code)
        r = np.arange(code.shape[0])
        opcode = code[r, pos]
        size16 = ((code[:, :6] == 0x66) & (np.arange(6) < pos[:, None])).any(axis=1)
        return far & arrays.isin(opcode, (0xEA, 0x9A)) & ~size16

    def _far_offsets(self, code: np.ndarray) -> np.ndarray:
        """The 32-bit offset of far direct JMP/CALL rows (the bytes after the opcode)."""
        pos = self._opcode_position(code)
        r = np.arange(code.shape[0])
        raw = code.astype(np.uint64)
        return (raw[r, pos + 1] | raw[r, pos + 2] << np.uint64(8) | raw[r, pos + 3] << np.uint64(16)
                | raw[r, pos + 4] << np.uint64(24))

    def _targets(self, address: np.ndarray, size: np.ndarray, code: np.ndarray,
                 kind: np.ndarray) -> np.ndarray:
        """Direct branch targets from the encoding: next address + the trailing rel8/16/32."""
        target = np.zeros(kind.shape[0], dtype=np.uint64)
        rows = np.flatnonzero((kind == FlowKind.COND) | (kind == FlowKind.JUMP) | (kind == FlowKind.CALL))
        if rows.shape[0] == 0:
            return target
        raw = code[rows].astype(np.int64)
        size = size[rows].astype(np.int64)
        pos = self._opcode_position(code[rows])
        r = np.arange(rows.shape[0])
        oplen = np.where(raw[r, pos] == 0x0F, 2, 1)
        width = size - pos - oplen

        def byte(k: np.ndarray) -> np.ndarray:
            return raw[r, np.clip(k, 0, 15)]

        rel8 = byte(size - 1)
        rel16 = rel8 << 8 | byte(size - 2)
        rel32 = rel16 << 16 | byte(size - 3) << 8 | byte(size - 4)
        rel = np.select([width == 1, width == 2, width == 4],
                        [(rel8 ^ 0x80) - 0x80, (rel16 ^ 0x8000) - 0x8000, (rel32 ^ 0x80000000) - 0x80000000])
        nxt = address[rows].astype(np.int64) + size   # wraps like the CPU does (two's complement)
        dest = (nxt + rel).astype(np.uint64)
        if self.bits == 32:
            dest &= np.uint64(0xFFFFFFFF)
        # 16-bit operand size: EIP is truncated to 16 bits (SDM JMP/Jcc/CALL operation).
        dest = np.where(width == 2, dest & np.uint64(0xFFFF), dest)
        bad = ~arrays.isin(width, (1, 2, 4))
        if bad.any():
            raise InternalError(f"unexpected branch encoding at {int(address[rows][bad][0]):#x}")
        target[rows] = dest
        return target


def _padding_runs(code: np.ndarray, shortest: int = 16) -> list[tuple[int, int]]:
    """[start, end) offsets of runs of at least `shortest` 0xCC bytes."""
    cc = (code == 0xCC).astype(np.int8)
    edge = np.diff(cc, prepend=np.int8(0), append=np.int8(0))
    starts, ends = np.flatnonzero(edge == 1), np.flatnonzero(edge == -1)
    keep = ends - starts >= shortest
    return list(zip(starts[keep].tolist(), ends[keep].tolist(), strict=True))




def _operand_dependent_opcodes(bits: int) -> np.ndarray:
    """(opcode, next byte) pairs that may make MOV/PUSH/POP/JMP/CALL sensitive.

    A pre-filter only, so the expensive detail decode runs on few instructions;
    `bt.isa.classify` decides. From the SDM opcode map: MOV r/m,Sreg 8C and MOV
    Sreg,r/m 8E (ModRM reg = segment register), MOV to/from CRn/DRn 0F 20-23, PUSH CS
    0E, PUSH SS 16, POP SS 17 (invalid in 64-bit mode), CALL/JMP far m16:xx FF /3, /5.
    """
    table = np.zeros((256, 256), dtype=bool)
    table[0x8C, :] = True
    table[0x8E, :] = True
    table[0x0F, 0x20:0x24] = True
    if bits == 32:
        table[[0x0E, 0x16, 0x17], :] = True
    modrm = np.arange(256)
    table[0xFF, ((modrm >> 3) & 7 == 3) | ((modrm >> 3) & 7 == 5)] = True
    return table


def far_direct_target(code: bytes, bits: int = 32) -> int | None:
    """The offset of a far JMP/CALL with an immediate ptr16:32 (EA/9A cd cw, no 66 prefix:
    the form `ljmp $0x08, $1f` takes), None for anything else (see `Decoder._far_direct`)."""
    if bits != 32:
        return None
    pos = 0
    while pos < min(len(code), 5) and _PREFIX32[code[pos]]:
        if code[pos] == 0x66:
            return None
        pos += 1
    if len(code) < pos + 7 or code[pos] not in (0xEA, 0x9A):
        return None
    return int.from_bytes(code[pos + 1:pos + 5], "little")


def flow_of(insn_id: int, op_str: str, code: bytes = b"", bits: int = 32) -> tuple[FlowKind, int]:
    """FlowKind and direct target of one instruction decoded outside the bulk pass
    (`code`: its bytes, to recognise a far direct JMP/CALL)."""
    kind = FlowKind(int(_KIND_BY_ID[insn_id])) if insn_id < _MAX_ID else FlowKind.NONE
    if insn_id in (x.X86_INS_LJMP, x.X86_INS_LCALL):
        far = far_direct_target(code, bits)
        if far is not None:
            return (FlowKind.JUMP if insn_id == x.X86_INS_LJMP else FlowKind.CALL), far
        return kind, 0
    direct = op_str.startswith("0x")
    if kind is FlowKind.JUMP and not direct:
        kind = FlowKind.END
    elif kind is FlowKind.CALL and not direct:
        kind = FlowKind.CALL_INDIRECT
    target = int(op_str, 16) if kind in (FlowKind.COND, FlowKind.JUMP, FlowKind.CALL) else 0
    return kind, target
