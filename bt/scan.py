"""The scanner (after VirtualBox's CSAM): every privileged and sensitive instruction of a kernel.

1. A linear sweep decodes every byte of the executable sections once (`bt.sweep`).
   A multiboot header inside a code section (xv6 has one at the start of `.text`) is
   data: it is cut out of the sweep (`bt.multiboot`), so its magic and checksum do not
   swallow the first instruction after it.
2. Recursive descent from the entry point, every function symbol (and global label in
   code) and every direct branch or call target, over the sweep's arrays: CSAM follows
   jumps and calls and stops at ret/iret/jmp/ud2 (raw-mode-reference.md). Direct far
   JMP/CALL (`ljmp $0x08, $1f` after LGDT) are followed to their offset, and an IRET or
   RETF right after a `push $label` in the same block (`push $sel; push $label; iret`,
   the usual way to reload CS) to that label: the only immediate such a return can pop
   as EIP. Targets that fall inside an instruction of the sweep (overlapping code) are
   decoded apart.
   Bytes the descent never reaches are reported as "unreached"; a sensitive instruction
   there is still a site, flagged `reached = False`. INT3 bytes count as padding unless
   reached.
3. Basic-block boundaries and direct branch targets are recorded, because the patch
   manager needs them: a site is `jump`-patchable (PATM's 5-byte JMP into patch memory)
   only when its 5-byte window holds no branch target other than the site itself, no
   block end, and crosses no page; `int3` (PATM's one-byte replacement) when only the
   first byte is safe; `trap-only` otherwise. Each refusal carries its reason.

Which instruction is sensitive, and how, is asked of `bt.isa`; this module keeps no list.
Rendering lives in `bt.scanreport`.
"""

from __future__ import annotations

import bisect
import fnmatch
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Literal

import numpy as np
from capstone import x86_const as x86

from bt import arrays, isa, multiboot
from bt.elf import KernelImage
from bt.sweep import MAX_INSN, Decoder, FlowKind, Sweep, flow_of

PATCH_SIZE = 5          # a near JMP rel32 (E9 cd), what PATM writes over a site
PAGE = 4096

_TARGET_KINDS = (FlowKind.COND, FlowKind.JUMP, FlowKind.CALL)
_FALLTHROUGH_KINDS = (FlowKind.COND, FlowKind.CALL, FlowKind.CALL_INDIRECT)
MAX_TABLE = 4096        # entries read from one jump table at most
MAX_OVERLAPPING = 1_000_000   # instructions decoded apart from the sweep (a runaway decode of data)
#: IRET/RETF whose popped EIP may be the immediate pushed just before them (no 66 prefix).
_FAR_RETURN_IDS = (x86.X86_INS_IRETD, x86.X86_INS_RETF)
_FAR_RETURN_OPCODES = (0xCF, 0xCB, 0xCA)
PUSH_IMM32 = 0x68


class Patch(str, Enum):
    JUMP = "jump"            # a 5-byte JMP to patch code fits
    INT3 = "int3"            # only the first byte may be replaced
    TRAP_ONLY = "trap-only"  # leave the bytes alone; the instruction traps (or is never run)


@dataclass(frozen=True)
class Site:
    address: int
    size: int
    code: bytes
    text: str
    cls: isa.InsnClass
    symbol: str | None       # "name+0x12", None without a symbol below the address
    reached: bool
    patch: Patch
    reason: str              # why not `jump` ("" when it is)


@dataclass(frozen=True)
class Stats:
    code_bytes: int
    sections: tuple[str, ...]
    data_bytes: int              # bytes of code sections known to be data (multiboot headers), not decoded
    instructions: int            # decoded by the linear sweep
    reached_instructions: int    # of those, reached by recursive descent (+ overlapping ones)
    reached_bytes: int
    unreached_bytes: int         # code bytes the descent never reached (padding included)
    padding_bytes: int           # unreached INT3 and alignment fillers (see _unreached)
    invalid_bytes: int           # bytes the sweep could not decode
    roots: int
    blocks: int
    branch_targets: int
    targets_outside_code: int
    overlapping_instructions: int  # decoded from targets inside a sweep instruction
    jump_tables: int               # switch tables whose entries were followed
    pushed_returns: int = 0        # IRET/RETF followed to the label pushed just before them


@dataclass
class ScanResult:
    image: KernelImage
    sites: tuple[Site, ...]
    stats: Stats
    block_starts: np.ndarray = field(repr=False)    # uint64, sorted
    block_ends: np.ndarray = field(repr=False)      # uint64, exclusive, parallel to block_starts
    branch_targets: np.ndarray = field(repr=False)  # uint64, sorted unique direct targets (+ roots)
    unreached: tuple[tuple[int, int], ...] = field(repr=False)  # [start, end) runs, padding excluded
    instruction_starts: np.ndarray = field(repr=False)  # uint64, sorted: every linear-sweep instruction
    overlapping: frozenset[int] = field(repr=False)     # instructions decoded apart (inside others)

    def is_branch_target(self, address: int) -> bool:
        return _contains(self.branch_targets, address)

    def is_instruction_start(self, address: int) -> bool:
        """True where the linear sweep or the descent decoded an instruction."""
        return _contains(self.instruction_starts, address) or address in self.overlapping


def search(sorted_array: np.ndarray, value: int, side: Literal["left", "right"] = "left") -> int:
    """np.searchsorted for one Python int. The int is made the array's own type first: given a
    plain int, NumPy casts the whole uint64 array to float64 on every call (2.6 ms on a kernel's
    3 M instructions instead of 4 us; 13 s of a Linux kernel's scan)."""
    return int(np.searchsorted(sorted_array, sorted_array.dtype.type(value), side=side))


def _contains(sorted_array: np.ndarray, value: int) -> bool:
    i = search(sorted_array, value)
    return i < sorted_array.shape[0] and int(sorted_array[i]) == value


def select(sites: Iterable[Site], classes: Iterable[str] = (), symbol: str | None = None) -> list[Site]:
    """Sites whose class name, category or patch rule is in `classes` (all if empty) and whose
    symbol matches the glob `symbol`."""
    wanted = set(classes)
    out = []
    for s in sites:
        if wanted and not wanted & {s.cls.name, s.cls.category.value, s.cls.rule}:
            continue
        if symbol is not None and not fnmatch.fnmatchcase((s.symbol or "").split("+")[0], symbol):
            continue
        out.append(s)
    return out


def roots_of(image: KernelImage) -> list[int]:
    """Where the descent starts: the entry point, function symbols, global labels in code."""
    wanted = np.array([s.address for s in image.symbols if s.is_function or s.is_global], dtype=np.uint64)
    inside = np.zeros(wanted.shape[0], dtype=bool)
    for sec in image.executable_sections:
        inside |= (wanted >= sec.address) & (wanted < sec.address + sec.size)
    return sorted({virtual_entry(image), *wanted[inside].tolist()})


def virtual_entry(image: KernelImage) -> int:
    """The entry as a virtual address: vmlinux's e_entry is physical (startup_64's load address)."""
    if any(s.address <= image.entry < s.address + s.size for s in image.executable_sections):
        return image.entry
    for seg in image.segments:
        if seg.paddr <= image.entry < seg.paddr + seg.memsz and seg.paddr != seg.vaddr:
            return seg.vaddr + image.entry - seg.paddr
    return image.entry


def code_regions(image: KernelImage) -> tuple[list[tuple[int, memoryview]], int]:
    """(address, bytes) of the code the sweep decodes: every executable section, minus the
    multiboot headers that lie in one (data: see the module docstring); and the bytes cut."""
    regions = [(s.address, image.section_bytes(s)) for s in image.executable_sections]
    cut = 0
    for h in multiboot.headers(image.raw):
        for k, (address, data) in enumerate(regions):
            sec = next(s for s in image.executable_sections if s.address <= address < s.address + s.size)
            lo = sec.offset + (address - sec.address)
            if lo <= h.offset < lo + len(data):
                start = h.offset - lo
                end = min(start + h.size, len(data))
                pieces = [(address, data[:start]), (address + end, data[end:])]
                regions[k:k + 1] = [p for p in pieces if len(p[1])]
                cut += end - start
                break
    return regions, cut


class _Descent:
    """Recursive descent over the sweep's arrays, a frontier of addresses at a time."""

    def __init__(self, image: KernelImage, sweep: Sweep, decoder: Decoder,
                 regions: list[tuple[int, memoryview]]) -> None:
        self.image, self.sw, self.dec = image, sweep, decoder
        n = sweep.count
        self.regions = [(a, a + len(data), data) for a, data in regions]
        # "Stops": flow instructions plus the last instruction of each region (falls off the code).
        last = []
        for lo, hi, _ in self.regions:
            i = search(sweep.address, hi) - 1
            if i >= 0 and int(sweep.address[i]) >= lo:
                last.append(i)
        flows = sweep.flow_index
        last_arr = np.array(last, dtype=np.int64)
        pos = np.searchsorted(flows, last_arr)
        is_flow = np.zeros(last_arr.shape[0], dtype=bool)
        inside = pos < flows.shape[0]
        is_flow[inside] = flows[pos[inside]] == last_arr[inside]
        extra, at = last_arr[~is_flow], pos[~is_flow]
        self.stop = np.insert(flows, at, extra)
        self.stop_kind = np.insert(sweep.flow_kind, at, FlowKind.END)
        self.stop_target = np.insert(sweep.flow_target, at, 0)
        self.visited = np.zeros(n, dtype=bool)
        self.leaders: list[np.ndarray] = []
        self.misaligned_seen: set[int] = set()
        self.overlapping: dict[int, tuple[int, int, str]] = {}   # address -> (size, id, text)
        self.overlap_blocks: list[tuple[int, int]] = []
        self.targets: list[np.ndarray] = []
        self.outside = 0
        self.tables = 0
        self.pushed_returns = 0
        self.int3_id = isa.by_name("int3").ids[0]

    def run(self, roots: list[int]) -> None:
        frontier = np.array(roots, dtype=np.uint64)
        while frontier.shape[0]:
            frontier = arrays.unique(frontier)
            idx = np.searchsorted(self.sw.address, frontier)
            ok = idx < self.sw.count
            aligned = np.zeros(frontier.shape[0], dtype=bool)
            aligned[ok] = self.sw.address[idx[ok]] == frontier[ok]
            more = [self._misaligned(int(a)) for a in frontier[~aligned].tolist()]
            idx = idx[aligned]
            idx = idx[~self.visited[idx]]
            self.visited[idx] = True
            self.leaders.append(idx)
            j = np.searchsorted(self.stop, idx)
            kind, target = self.stop_kind[j], self.stop_target[j]
            s = self.stop[j]
            fall = self.sw.address[s] + self.sw.size[s].astype(np.uint64)
            has_target = arrays.isin(kind, _TARGET_KINDS)
            self.targets.append(target[has_target])
            # indirect JMPs (kind END, id JMP): a switch's jump table may name their targets
            indirect = s[(kind == FlowKind.END) & (self.sw.id[s] == x86.X86_INS_JMP)]
            tables = [self._jump_table(int(i)) for i in indirect.tolist()]
            # IRET/RETF with the instruction before them in the same block (s > idx)
            returns = s[(kind == FlowKind.END) & arrays.isin(self.sw.id[s], _FAR_RETURN_IDS) & (s > idx)]
            labels = [self._pushed_label(int(i)) for i in returns.tolist()]
            falls = arrays.isin(kind, _FALLTHROUGH_KINDS) | self._lone_int3(s)
            frontier = np.concatenate([target[has_target], fall[falls],
                                       *[np.array(m, dtype=np.uint64) for m in more + tables + labels]])

    def _lone_int3(self, s: np.ndarray) -> np.ndarray:
        """Stops that are a single INT3 the descent reached, with no INT3 on either side: a
        breakpoint the code executes (INT3 is a trap: the handler returns after it, SDM vol. 3
        §6.5), not the padding between functions (Linux pads with runs of 0xCC, and puts one
        after RET and indirect JMPs, where the descent never arrives)."""
        int3 = self.int3_id
        ids = self.sw.id
        lone = ids[s] == int3
        if not lone.any():
            return lone
        prev = ids[np.maximum(s - 1, 0)] != int3
        nxt = np.where(s + 1 < self.sw.count, ids[np.minimum(s + 1, self.sw.count - 1)] != int3, False)
        return lone & prev & nxt

    def _pushed_label(self, index: int) -> list[int]:
        """[label] when the IRET/RETF at sweep index `index` directly follows `push $label`
        (68 id) in straight-line code: the word it pops as EIP is that immediate (SDM IRET,
        RET far: EIP is popped first, so it is the last thing pushed). Anything between the
        PUSH and the return, a 16-bit form, or 64-bit code: not followed."""
        if self.image.bits != 32:
            return []
        at, prev = int(self.sw.address[index]), index - 1
        before = int(self.sw.address[prev])
        if before + int(self.sw.size[prev]) != at or int(self.sw.size[prev]) != 5:
            return []
        push, ret = self.image.read(before, 5), self.image.read(at, 1)
        if len(push) != 5 or push[0] != PUSH_IMM32 or not ret or ret[0] not in _FAR_RETURN_OPCODES:
            return []
        label = int.from_bytes(push[1:], "little")
        if self._region(label) is None:
            return []
        self.pushed_returns += 1
        self.targets.append(np.array([label], dtype=np.uint64))
        return [label]

    def _jump_table(self, index: int) -> list[int]:
        """Targets of `jmp [index*scale + table]` read from the table, while they point into code.

        gcc compiles dense switches to exactly this form (non-PIC, 32-bit kernels). CSAM did
        not need it (it scanned each page as it ran); a static scan does, or every case is
        "unreached". Reading stops at the first entry outside the executable sections.
        """
        address = int(self.sw.address[index])
        code = self.image.read(address, int(self.sw.size[index]))
        insn = self.dec.decode_one(code, address)
        if insn is None or len(insn.operands) != 1:
            return []
        op = insn.operands[0]
        width = self.image.bits // 8
        if (op.type != x86.X86_OP_MEM or op.mem.base != 0 or op.mem.index == 0 or op.mem.scale != width
                or op.mem.segment != 0):
            return []
        table = op.mem.disp & ((1 << self.image.bits) - 1)
        out: list[int] = []
        while len(out) < MAX_TABLE:
            entry = self.image.read(table + len(out) * width, width)
            if len(entry) != width:
                break
            target = int.from_bytes(entry, "little")
            if self._region(target) is None:
                break
            out.append(target)
        if out:
            self.tables += 1
            self.targets.append(np.array(out, dtype=np.uint64))
        return out

    def _region(self, address: int) -> tuple[int, int, memoryview] | None:
        for r in self.regions:
            if r[0] <= address < r[1]:
                return r
        return None

    def _misaligned(self, address: int) -> list[int]:
        """Decode from an address the sweep did not start an instruction at, until it meets
        the sweep again or leaves its block. Returns the successor addresses."""
        if address in self.misaligned_seen:
            return []
        self.misaligned_seen.add(address)
        region = self._region(address)
        if region is None:
            self.outside += 1
            return []
        lo, hi, data = region
        out: list[int] = []
        self.targets.append(np.array([address], dtype=np.uint64))
        pos = end = address
        while pos < hi and len(self.overlapping) < MAX_OVERLAPPING:
            if pos != address:
                i = search(self.sw.address, pos)
                if (i < self.sw.count and int(self.sw.address[i]) == pos) or pos in self.overlapping:
                    out.append(pos)     # back in step with the sweep, or with an earlier decode
                    break
            code = bytes(data[pos - lo:min(pos - lo + MAX_INSN, hi - lo)])
            insn = next(self.dec.plain.disasm(code, pos, 1), None)
            if insn is None:
                break                   # undecodable: the block ends
            self.overlapping[pos] = (insn.size, insn.id, f"{insn.mnemonic} {insn.op_str}".strip())
            end = pos + insn.size
            kind, target = flow_of(insn.id, insn.op_str, bytes(insn.bytes), self.image.bits)
            if kind in _TARGET_KINDS:
                out.append(target)
                self.targets.append(np.array([target], dtype=np.uint64))
            if kind in _FALLTHROUGH_KINDS:
                out.append(end)
            if kind is not FlowKind.NONE:
                break
            pos = end
        if end > address:
            self.overlap_blocks.append((address, end))
        return out

    def reached(self) -> np.ndarray:
        """Reached flag per sweep instruction: from each block start to its stop."""
        starts = np.concatenate(self.leaders) if self.leaders else np.zeros(0, np.int64)
        ends = self.stop[np.searchsorted(self.stop, starts)]
        diff = np.zeros(self.sw.count + 1, dtype=np.int32)
        np.add.at(diff, starts, 1)
        np.add.at(diff, ends + 1, -1)
        return np.cumsum(diff[:-1], dtype=np.int32) > 0


def scan(image: KernelImage, progress: Callable[[int, int], None] | None = None) -> ScanResult:
    """Scan a loaded kernel. `progress(done_bytes, total_bytes)` is called while decoding."""
    decoder = Decoder(image.bits)
    sections = image.executable_sections
    total = sum(s.size for s in sections)
    regions, data_bytes = code_regions(image)
    sw = decoder.sweep(regions, None if progress is None else (lambda done: progress(done, total)))
    roots = roots_of(image)
    descent = _Descent(image, sw, decoder, regions)
    descent.run(roots)
    reached = descent.reached()

    targets = arrays.unique(np.concatenate([np.array(roots, dtype=np.uint64), *descent.targets]))
    starts, ends = _blocks(descent)
    int3 = isa.by_name("int3")
    is_int3 = sw.id == int3.ids[0]
    unreached, padding = _unreached(sw, reached, is_int3)
    sites = _sites(image, sw, descent, decoder, reached, targets)
    reached_bytes = int(sw.size.sum(where=reached, dtype=np.int64))
    reached_bytes += sum(v[0] for v in descent.overlapping.values())
    stats = Stats(
        code_bytes=total,
        sections=tuple(s.name for s in sections),
        data_bytes=data_bytes,
        instructions=sw.count,
        reached_instructions=int(np.count_nonzero(reached)) + len(descent.overlapping),
        reached_bytes=reached_bytes,
        unreached_bytes=total - data_bytes - int(sw.size.sum(where=reached, dtype=np.int64)),
        padding_bytes=padding,
        invalid_bytes=sw.invalid_bytes,
        roots=len(roots),
        blocks=int(starts.shape[0]),
        branch_targets=int(targets.shape[0]),
        targets_outside_code=descent.outside,
        overlapping_instructions=len(descent.overlapping),
        jump_tables=descent.tables,
        pushed_returns=descent.pushed_returns,
    )
    return ScanResult(image=image, sites=tuple(sites), stats=stats, block_starts=starts, block_ends=ends,
                      branch_targets=targets, unreached=tuple(unreached),
                      instruction_starts=sw.address, overlapping=frozenset(descent.overlapping))


def _blocks(descent: _Descent) -> tuple[np.ndarray, np.ndarray]:
    """Basic blocks [start, end): leaders are roots, targets and fall-throughs; a block ends at
    its stop (flow instruction) or just before the next leader."""
    sw = descent.sw
    lead = arrays.unique(np.concatenate(descent.leaders)) if descent.leaders else np.zeros(0, np.int64)
    stop = descent.stop[np.searchsorted(descent.stop, lead)]
    nxt = np.append(lead[1:], sw.count)
    last = np.minimum(stop, nxt - 1)
    starts = sw.address[lead]
    ends = sw.address[last] + sw.size[last].astype(np.uint64)
    if descent.overlap_blocks:
        extra = np.array(descent.overlap_blocks, dtype=np.uint64)
        starts = np.concatenate([starts, extra[:, 0]])
        ends = np.concatenate([ends, extra[:, 1]])
        order = np.argsort(starts, kind="stable")
        starts, ends = starts[order], ends[order]
    return starts, ends


def _runs(sw: Sweep, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Maximal runs of consecutive masked instructions: (first, last) sweep indices."""
    idx = np.flatnonzero(mask)
    if idx.shape[0] == 0:
        return idx, idx
    ends = sw.address[idx] + sw.size[idx].astype(np.uint64)
    # a run breaks where an index is skipped or the next instruction is not adjacent (section gap)
    brk = np.flatnonzero((np.diff(idx) != 1) | (sw.address[idx[1:]] != ends[:-1])) + 1
    return idx[np.concatenate([[0], brk])], idx[np.concatenate([brk - 1, [idx.shape[0] - 1]])]


# Compilers align jump targets with no-op fillers: NOP (0F 1F /0 included), XCHG AX,AX
# (66 90) and LEA ESI,[ESI+EIZ*1+0] (gas's 7-byte filler).
_FILLER_IDS = np.array([x86.X86_INS_NOP, x86.X86_INS_XCHG, x86.X86_INS_LEA], dtype=np.uint16)
FILLER_MAX = 16


def _unreached(sw: Sweep, reached: np.ndarray, is_int3: np.ndarray) -> tuple[list[tuple[int, int]], int]:
    """Unreached runs of code, and the bytes of padding left out of them: unreached INT3, and
    runs shorter than 16 bytes of filler instructions that end on a 4-byte boundary."""
    first, last = _runs(sw, ~reached & ~is_int3)
    start = sw.address[first]
    end = sw.address[last] + sw.size[last].astype(np.uint64)
    other = np.cumsum(~arrays.isin(sw.id, _FILLER_IDS), dtype=np.int32)
    before = np.where(first > 0, other[np.maximum(first - 1, 0)], 0)
    filler = (other[last] - before == 0) & (end - start < FILLER_MAX) & (end % 4 == 0)
    pad = int(np.count_nonzero(is_int3 & ~reached)) + int((end - start)[filler].sum())
    return list(zip(start[~filler].tolist(), end[~filler].tolist(), strict=True)), pad


def _sites(image: KernelImage, sw: Sweep, descent: _Descent, decoder: Decoder, reached: np.ndarray,
           targets: np.ndarray) -> list[Site]:
    int3_id = isa.by_name("int3").ids[0]
    found: list[tuple[int, int, int, str, bool, bool]] = []   # address, size, id, text, reached, overlap
    for c in sw.candidates:
        found.append((c.address, c.size, c.id, c.text, bool(reached[c.index]), False))
    for i in np.flatnonzero((sw.id == int3_id) & reached).tolist():
        found.append((int(sw.address[i]), 1, int3_id, "int3", True, False))
    for address, (size, insn_id, text) in descent.overlapping.items():
        if insn_id in isa.SENSITIVE_IDS:
            found.append((address, size, insn_id, text, True, True))

    checker = _Window(sw, descent, reached, targets)
    sites = []
    for address, size, insn_id, text, was_reached, overlap in sorted(found):
        code = image.read(address, size)
        cls = isa.ID_CLASSES.get(insn_id)
        if cls is None:     # operand-dependent: decode once more with detail and ask the table
            insn = decoder.decode_one(code, address)
            cls = isa.classify(insn) if insn is not None else None
            if cls is None:
                continue
        if not was_reached:
            patch, reason = Patch.TRAP_ONLY, "not reached by recursive descent (may be data)"
        elif overlap:
            patch, reason = checker.overlapping(address, size)
        else:
            patch, reason = checker.check(address)
        sym = image.symbol_at(address)
        sites.append(Site(address=address, size=size, code=code, text=text, cls=cls,
                          symbol=image.symbolize(address) if sym is not None else None,
                          reached=was_reached, patch=patch, reason=reason))
    return sites


class _Window:
    """PATM's patch-window rules for one site (raw-mode-reference.md, PATM)."""

    def __init__(self, sw: Sweep, descent: _Descent, reached: np.ndarray, targets: np.ndarray) -> None:
        self.sw, self.descent, self.reached, self.targets = sw, descent, reached, targets
        # instructions decoded from branches into the middle of others: starts and ends, by start
        inner = sorted((a, a + v[0]) for a, v in descent.overlapping.items())
        self.inner_starts = [a for a, _ in inner]
        self.inner_ends = [b for _, b in inner]

    def check(self, address: int) -> tuple[Patch, str]:
        """`jump`, or `int3` with the first problem of the 5-byte window (nearest first), or
        `trap-only` when another reached instruction runs through the site's first byte."""
        # an instruction is at most 15 bytes long: only starts in (address - 15, address) matter
        lo = bisect.bisect_left(self.inner_starts, address - MAX_INSN + 1)
        for k in range(lo, bisect.bisect_left(self.inner_starts, address)):
            start = self.inner_starts[k]
            if self.inner_ends[k] > address:
                return Patch.TRAP_ONLY, (f"the reached instruction at {start:#x} (decoded from a branch "
                                         "into the middle of another) runs through its first byte")
        end = address + PATCH_SIZE
        if address // PAGE != (end - 1) // PAGE:
            return Patch.INT3, f"5-byte window crosses the page boundary at {(end - 1) // PAGE * PAGE:#x}"
        problems = [self._block_problem(address, end)]
        t = search(self.targets, address + 1)
        if t < self.targets.shape[0] and int(self.targets[t]) < end:
            target = int(self.targets[t])
            problems.append((target, f"branch target {target:#x} (+{target - address}) "
                                     "inside the 5-byte window"))
        found = [p for p in problems if p is not None]
        if not found:
            return Patch.JUMP, ""
        return Patch.INT3, min(found)[1]

    def _block_problem(self, address: int, end: int) -> tuple[int, str] | None:
        """The first instruction of the window that ends a block, or where reached code stops."""
        sw, stop = self.sw, self.descent.stop
        i = search(sw.address, address)
        while True:
            if i >= sw.count or not self.reached[i]:
                a = int(sw.address[i]) if i < sw.count else end
                return a, "5-byte window runs past reached code"
            a = int(sw.address[i])
            if a != address and int(sw.address[i - 1]) + int(sw.size[i - 1]) != a:
                return a, "5-byte window runs past the end of its section"
            j = search(stop, i)
            if j < stop.shape[0] and int(stop[j]) == i:
                who = "the instruction itself" if a == address else f"'{self._text(a)}' at +{a - address}"
                return a, f"{who} ends a basic block inside the 5-byte window"
            if a + int(sw.size[i]) >= end:
                return None
            i += 1

    def _text(self, address: int) -> str:
        code = self.descent.image.read(address, MAX_INSN)
        insn = next(self.descent.dec.plain.disasm(code, address, 1), None)
        return f"{insn.mnemonic} {insn.op_str}".strip() if insn is not None else "(bad)"

    def overlapping(self, address: int, size: int) -> tuple[Patch, str]:
        """A site decoded from a branch into the middle of a sweep instruction."""
        sw = self.sw
        i = search(sw.address, address, side="right") - 1
        if i >= 0 and self.reached[i]:
            host = int(sw.address[i])
            return Patch.TRAP_ONLY, (f"instruction starts inside the reached instruction at {host:#x} "
                                     "(overlapping code): no byte can be replaced")
        return Patch.INT3, "decoded from a branch target the linear sweep did not start at"
