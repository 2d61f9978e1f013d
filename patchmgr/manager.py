"""The patch manager: when to patch, applying and removing patches, and the maps the
runtime needs at exits, faults and interrupts (PATM's PATMR3InstallPatch,
PATMR3HandleTrap and the patch<->guest lookup trees).

The runtime drives it through five calls (runtime/patching.py adapts the VMM to them):

* `on_trap(op)` on every trap of a sensitive guest-kernel instruction: counts it and
  patches the site once it trapped `hot` times (PATM patched on the first trap);
* `exit_at(address_of_int3)`: the `ExitRecord` of a patch exit, None for the guest's
  own int3;
* `to_guest_eip(eip)`: the guest address to show for a patch address, in frames and
  reports (a fault inside patch code is reported at the guest instruction it stands for);
* `resume_at(eip)`: where to continue when the runtime resumes the guest at `eip` after
  emulating (a trap, an IRET, an interrupt frame): a guest address inside a patched
  window no longer holds the guest's instruction, so the equivalent patch address;
* `set_pending(on)` whenever the state block's `pending` word turns non-zero or zero:
  the gates of the blocks that look for pending interrupts are switched
  (patchmgr/block.py);
* `on_guest_write(address, size)` before a guest write lands on a watched range: a write
  into the patched instruction itself removes the patch, a write into the instructions
  its window displaced refreshes it: removed now, re-made from the new bytes on the
  site's next trap. Both are counted;
* `rescan(ranges)` before the guest runs code it rewrote (patchmgr/rescan.py: CSAM's
  monitored pages): the never-trapping sites in it are patched then.

The runtime must never deliver an interrupt while EIP is inside patch memory: it leaves
`pending` set and the block exits at its guest return address (patchmgr/block.py).
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from capstone import CS_ARCH_X86, CS_MODE_32, Cs

from bt import isa, layout
from bt.errors import InputError, PatchError
from bt.operation import Operation
from patchmgr import tables
from patchmgr.block import build, plan
from patchmgr.borrow import Borrowed, borrowed
from patchmgr.memory import PatchMemory
from patchmgr.patch import JMP_LEN, Block, ExitRecord, Patch, Refusal
from patchmgr.record import Record
from patchmgr.registry import RuleSet, load
from patchmgr.relocate import CannotMove
from patchmgr.rule import EmitContext, PatchRule
from patchmgr.window import CodeMap, LearningCodeMap, NoWindow, choose

if TYPE_CHECKING:
    from capstone import CsInsn

INT3 = b"\xcc"


def head(patch: Patch) -> bytes:
    """The bytes a patch writes at the start of its window (what `adopt` looks for)."""
    if patch.block is None:
        return INT3
    rel = (patch.block.address - (patch.start + JMP_LEN)) & 0xFFFFFFFF
    return b"\xe9" + rel.to_bytes(4, "little")


class GuestMemory(Protocol):
    """Guest-virtual memory as the guest kernel sees it (the runtime's adapter, or an ELF image)."""

    def read(self, address: int, size: int) -> bytes: ...

    def write(self, address: int, data: bytes) -> None:
        """Write and drop any translated code covering it (Unicorn: ctl_remove_cache)."""


class WriteWatch(Protocol):
    """Optional: call `on_guest_write` before any guest write into [start, end) lands."""

    def watch(self, start: int, end: int) -> object: ...

    def unwatch(self, handle: object) -> None: ...


@dataclass(frozen=True)
class PatchConfig:
    """How a run patches: `bt run --hot N / --eager / --no-patch / --disable-rule NAME /
    --disable-class CLASS`."""

    hot: int = 1
    eager: bool = False
    enabled: bool = True
    disabled_rules: tuple[str, ...] = ()
    disabled_classes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.hot < 1:
            raise PatchError("--hot must be at least 1")


@dataclass
class Stats:
    traps: Counter[int] = field(default_factory=Counter)
    exits: int = 0
    smc_removed: int = 0
    smc_refreshed: int = 0
    merged: int = 0             # sites whose own patch was folded into a later site's window
    dropped_on_move: int = 0    # blocks that could not be re-made when the VMM area moved
    #: Sites the guest ran (a trap, a first execution) that the static scan never reached:
    #: the first MAX_UNSCANNED of them, and how many there were in all.
    unscanned: set[int] = field(default_factory=set)
    unscanned_total: int = 0
    #: Rewritten code pages scanned again before the guest ran them (patchmgr/rescan.py),
    #: and the never-trapping sites found and patched (or deferred) in them.
    rescans: int = 0
    rescan_patched: int = 0


#: Unscanned sites remembered by address (a guest generating code cannot grow the set without end).
MAX_UNSCANNED = 4096
LEARNED = "the scan never reached it: code learned at run time"
NEVER_REACHED = "the scan never reached it, and this run patches nothing itself"


@dataclass(frozen=True)
class Unscanned:
    """A site the guest ran that the static scan never reached, and what became of it."""

    site: int
    text: str
    status: str          # "patched", "refused" or "unpatched"
    reason: str


class PatchManager:
    def __init__(self, config: PatchConfig, memory: GuestMemory, code: CodeMap | None,
                 rules: RuleSet | None = None, patch_memory: PatchMemory | None = None,
                 watch: WriteWatch | None = None, emulable: Callable[[str], bool] | None = None,
                 area: layout.VmmArea = layout.HOME, live: Callable[[int], bool] | None = None) -> None:
        self.config = config
        self.memory = memory
        self.code = code
        #: The code map can learn code the scan never reached (checked once: a Protocol
        #: isinstance check costs tens of microseconds, too much for every trap).
        self._learning: LearningCodeMap | None = code if isinstance(code, LearningCodeMap) else None
        self.rules = rules if rules is not None else load(config.disabled_rules,
                                                          disabled_classes=config.disabled_classes)
        #: Where the VMM area (so patch memory and the state block) is in the guest's linear
        #: space; it moves when the guest maps that slot itself (`relocate`).
        self.area = area
        self.patch_memory = patch_memory if patch_memory is not None else PatchMemory(area.patch_base)
        if self.patch_memory.top == self.patch_memory.base:   # fresh: the lookup tables first
            self.memory.write(area.linear(tables.BASE), tables.image())
            self.patch_memory.commit(area.linear(tables.BASE), tables.SIZE)
        self.watch = watch
        #: Whether the runtime can emulate an exit of a class (its emulator table).
        self.emulable: Callable[[str], bool] = emulable or (lambda cls: True)
        #: Whether guest address `a` may be patched now: the guest runs the kernel's code
        #: there, mapped where its ELF puts it (runtime/patching.py). Before the guest turns
        #: paging on, a kernel linked at 0x80100000 and loaded at 1 MiB runs its first
        #: instructions at their physical addresses: a JMP made for the virtual address would
        #: go astray there. Sites that are not live wait in `deferred`.
        self.live: Callable[[int], bool] = live or (lambda a: True)
        self.deferred: set[int] = set()
        #: Patches of a `bt patch` record not live when adopted: their guest bytes are the
        #: original ones until `retry_deferred` puts them back.
        self._suspended: dict[int, Patch] = {}
        self.ctx = EmitContext(area=area)
        self.patches: dict[int, Patch] = {}          # by site
        #: (start, site) of every patch's guest window, sorted, and the widest window: which
        #: patches cover an address, in O(log n) (asked on every trap and guest code store;
        #: a scan of all patches took 13 s of a Linux boot's 95).
        self._windows: list[tuple[int, int]] = []
        self._widest = 1
        self.refusals: dict[int, Refusal] = {}
        self.notes: dict[int, str] = {}              # why a site got INT3 rather than a JMP
        self.stats = Stats()
        self._exits: dict[int, tuple[Patch, ExitRecord]] = {}
        self._blocks: list[tuple[int, Patch]] = []   # (block address, patch), sorted
        self._watches: dict[int, object] = {}
        self._interior: dict[int, int] = {}          # guest address inside a window -> its chunk
        self._gates: dict[int, Block] = {}           # gate address -> its block
        self._bit_users: Counter[tuple[int, int]] = Counter()
        self._cs = Cs(CS_ARCH_X86, CS_MODE_32)
        self._cs.detail = True
        self._cs_lite = Cs(CS_ARCH_X86, CS_MODE_32)
        #: Trapping sites the static scan reached, and per class whether a rule handles it:
        #: `on_trap` asks both on every trap.
        self._scanned_sites: set[int] = set()
        self._handled: dict[str, bool] = {}
        #: Called whenever a patch or a refusal changes: what `quiet` said may no longer hold
        #: (the runtime's fast exits forget their sites, runtime/fastexit.py).
        self.on_change: Callable[[], None] | None = None

    # ---- the runtime's calls ----------------------------------------------------------------
    def on_trap(self, op: Operation) -> bool:
        """Count a trap of `op`; True if that made a patch (the runtime then resumes
        through `resume_at`, since the window may cover the instruction after `op`)."""
        if self.patch_memory.contains(op.address):
            return False    # a displaced instruction trapped inside a block: never patch patch code
        self.patch_memory.settle()      # the CPU is at a guest instruction: freed blocks are idle
        self.stats.traps[op.address] += 1
        if op.address not in self._scanned_sites and op.cls is not None and self._handles(op.cls):
            self._note_unscanned(op.address)
        if not self.config.enabled or op.address in self.patches or op.address in self.refusals:
            return False
        if self.stats.traps[op.address] >= self.config.hot:
            self._learn(op.address)
            return isinstance(self.patch_site(op.address), Patch)
        return False

    def quiet(self, op: Operation) -> bool:
        """Whether `on_trap(op)` will only count from now on, until `on_change` is called:
        the site was refused (or this run patches nothing), its scan question is answered,
        and no freed patch memory waits for the settling a trap does."""
        site = op.address
        if self.patch_memory.contains(site) or self.patch_memory.unsettled:
            return False
        if (site not in self._scanned_sites and op.cls is not None and self._handles(op.cls)
                and self._learning is not None and site not in self.stats.unscanned):
            return False
        return not self.config.enabled or site in self.refusals

    def count_traps(self, site: int, n: int) -> None:
        """`n` traps at a quiet site (taken by the runtime's fast exits)."""
        self.stats.traps[site] += n

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def _handles(self, cls: str) -> bool:
        # Asked on every trap: the answer per class is fixed once the rules are.
        known = self._handled.get(cls)
        if known is None:
            known = self._handled[cls] = self.rules.handles(cls)
        return known

    def _note_unscanned(self, site: int) -> None:
        code = self._learning
        if code is None or site in self.stats.unscanned:
            return
        if code.scanned(site):
            self._scanned_sites.add(site)     # the scan is fixed: never asked again
            return
        self.stats.unscanned_total += 1
        if len(self.stats.unscanned) < MAX_UNSCANNED:
            self.stats.unscanned.add(site)

    def _learn(self, site: int) -> None:
        """The guest runs `site`: if the scan never reached it, learn its code now (CSAM
        scanned a page when it first ran), so that it gets a window like scanned code."""
        if self._learning is not None and self.live(site):
            self._learning.learn(site, self.original)

    def unscanned_sites(self) -> list[Unscanned]:
        """The sites the guest ran that the static scan never reached, by address, and what
        became of each: patched (its code learned at run time), refused (why), or left
        unpatched (this run patches nothing itself: a kernel `bt patch` wrote, whose patches
        were all made ahead of time from what the scan reached, or `--no-patch`)."""
        out = []
        for site in sorted(self.stats.unscanned):
            insn = self._decode(site)
            text = f"{insn.mnemonic} {insn.op_str}".strip() if insn is not None else "?"
            covering = list(self._patches_covering_range(site, site + 1))
            if covering:
                p = covering[0]
                reason = (LEARNED if p.site == site
                          else f"inside the {p.kind} window of {p.site:#x}, learned at run time")
                out.append(Unscanned(site, text, "patched", reason))
            elif site in self.refusals:
                out.append(Unscanned(site, text, "refused", self.refusals[site].reason))
            elif not self.config.enabled:
                out.append(Unscanned(site, text, "unpatched", NEVER_REACHED))
            else:
                out.append(Unscanned(site, text, "unpatched",
                                     f"trapped fewer than --hot {self.config.hot} times"))
        return out

    def exit_at(self, address: int) -> ExitRecord | None:
        hit = self._exits.get(address)
        if hit is None:
            return None
        hit[0].exits += 1
        self.stats.exits += 1
        return hit[1]

    def to_guest_eip(self, eip: int) -> int:
        patch = self._patch_holding(eip)
        if patch is None or patch.block is None:
            return eip
        return patch.block.guest_of(eip)

    def resume_at(self, eip: int) -> int:
        return self._interior.get(eip, eip)

    def borrowed_at(self, eip: int) -> Borrowed | None:
        """What the patch code holding `eip` has borrowed from the guest just before that
        instruction (patchmgr/borrow.py), None outside patch blocks."""
        patch = self._patch_holding(eip)
        if patch is None or patch.block is None:
            return None
        block = patch.block
        start = block.address
        if eip >= block.tail:
            stubs = [c.entry for c in block.chunks if c.entry and c.entry <= eip]
            start = stubs[-1] if stubs else block.tail
        else:
            for chunk in block.chunks:
                if chunk.patch <= eip:
                    start = chunk.patch
        code = block.code[start - block.address:eip - block.address]
        words = {self.ctx.scratch(i) for i in range(layout.state_field("scratch").size // 4)}
        return borrowed(code, start, eip, words, self.ctx.state("saved_esp"))

    def code_seen(self, sites: Iterable[int]) -> None:
        """Sensitive instructions in code the scanner never saw, found as the guest first runs
        it (runtime/codewatch.py, CSAM's scan on first execution): patched now, as the
        scanner's silent sites are before they run."""
        if not self.config.enabled:
            return
        for site in sites:
            insn = self._decode(site) if self.is_unpatched(site) else None
            cls = isa.decode(insn).cls if insn is not None else None
            if cls is not None and self.rules.handles(cls):
                self.patch_site(site)

    def window_at(self, address: int) -> tuple[int, int] | None:
        """[start, end) of the patch whose guest window holds `address`, or None."""
        for patch in self._patches_covering_range(address, address + 1):
            return patch.start, patch.end
        return None

    def lift(self, address: int) -> None:
        """Put the guest's own bytes back over the window holding `address`, the patch kept:
        guest user code reached it, and ring 3 must run what the guest wrote there, not the
        guest kernel's patch (runtime/userstep.py). `relay` puts the patch back."""
        for patch in self._patches_covering_range(address, address + 1):
            self.memory.write(patch.start, patch.original)

    def relay(self, address: int) -> None:
        """The patch of the window holding `address` back in place after `lift` (nothing if
        the guest's write removed it meanwhile)."""
        for patch in self._patches_covering_range(address, address + 1):
            self.memory.write(patch.start, self._head(patch))

    def window_of(self, address: int) -> tuple[int, int] | None:
        """The guest window [start, end) of the JMP patch covering `address`, if any."""
        for patch in self._patches_covering_range(address, address + 1):
            if patch.block is not None:
                return patch.start, patch.end
        return None

    def set_pending(self, on: bool) -> None:
        """The runtime set (`on`) or cleared the state block's `pending` word: switch every
        block's gate to its check code, or back (patchmgr/block.py)."""
        for gate, block in self._gates.items():
            self._set_gate(gate, block, on)

    def _set_gate(self, gate: int, block: Block, on: bool) -> None:
        self.memory.write(gate, block.gate_on if on else block.gate_off)

    def _pending_now(self) -> bool:
        """The state block's `pending` word, where the memory has a state block (not an ELF
        being patched ahead of time)."""
        try:
            return self.memory.read(self.area.state("pending"), 4) != bytes(4)
        except PatchError:
            return False

    def on_guest_write(self, address: int, size: int) -> None:
        for patch in list(self._patches_covering_range(address, address + size)):
            patch.writes += 1
            self.remove(patch.site)
            if address < patch.op.next_address and patch.site < address + size:
                self.stats.smc_removed += 1          # the guest rewrote the patched instruction
            else:
                self.stats.smc_refreshed += 1
                self.stats.traps[patch.site] = 0     # re-made from the new bytes when it traps next

    def rescan(self, ranges: Iterable[tuple[int, int]]) -> int:
        """Guest code in `ranges` ((address, size), guest addresses) was rewritten and is about
        to run: patch the never-trapping sites in it now (patchmgr/rescan.py, CSAM)."""
        from patchmgr import rescan

        self.patch_memory.settle()
        return rescan.rescan(self, ranges) if self.config.enabled else 0

    def learn(self, site: int) -> None:
        """Learn the code at `site` if the scan never reached it (`_learn`)."""
        self._learn(site)

    def decode_current(self, site: int) -> CsInsn | None:
        """The guest's instruction at `site` now (patches taken out), None if unmapped."""
        return self._decode(site)

    def decode_current_lite(self, site: int) -> tuple[int, str, str] | None:
        """(size, mnemonic, operands) of the guest's instruction at `site` now, decoded without
        Capstone's detail; None if unmapped or undecodable."""
        try:
            code = self.original(site, 16)
        except PatchError:
            return None
        for _addr, size, mnemonic, op_str in self._cs_lite.disasm_lite(code, site, 1):
            return size, mnemonic, op_str
        return None

    def first_execution(self, site: int) -> int:
        """The guest is about to run `site`, a sensitive instruction that never traps
        (PUSHF, SGDT, MOV r,CS...: CSAM marked them for PATM before they ran). Patch it
        now; the runtime continues at the returned address instead of running the site."""
        self.patch_memory.settle()
        self._note_unscanned(site)
        if self.config.enabled and self.is_unpatched(site):
            self._learn(site)
            self.patch_site(site)
        return self.resume_at(site)

    # ---- making patches ---------------------------------------------------------------------
    def patch_all(self, sites: Iterable[int]) -> None:
        """Patch every site now (`--eager`, `bt patch`), in address order; a site that is not
        live yet (`live`) is deferred until `retry_deferred` finds it live."""
        for site in sorted(set(sites)):
            if not self.live(site):
                self.deferred.add(site)
            elif site not in self.patches and site not in self.refusals and self._free(site, site + 1):
                self.patch_site(site)

    def retry_deferred(self) -> None:
        """The guest's mapping changed and it runs live code now: patch what became live.
        The runtime calls this only while the guest executes at a live address, never from
        code it runs at another alias (the pre-paging boot code), which a patch under its
        feet would break."""
        for site in sorted(s for s in self._suspended if self.live(s)):
            patch = self._suspended.pop(site)
            if self._free(patch.start, patch.end):
                self.memory.write(patch.start, self._head(patch))
                self._register(patch)
        ready = sorted(s for s in self.deferred if self.live(s))
        self.deferred.difference_update(ready)
        self.patch_all(ready)

    def patch_site(self, site: int) -> Patch | Refusal:
        if not self.live(site):
            # Not recorded: the site is patched once it runs where the kernel's ELF puts it.
            return Refusal(site, Operation(None, site, 0, "?", (), "?"),
                           "not running where the kernel's ELF puts it (yet)")
        insn = self._decode(site)
        if insn is None:
            return self._refuse(site, None, "no instruction decodes here")
        op = isa.decode(insn)
        if op.cls is None:
            return self._refuse(site, op, "not a sensitive instruction")
        if not self._free(op.address, op.next_address):
            return self._refuse(site, op, "inside another patch's window")
        row = isa.by_name(op.cls)
        rule = self.rules.rule_for(op)
        if rule is None:
            return self._refuse(site, op, f"no enabled rule for class {op.cls} (table: {row.handling.value})")
        if not row.exit_adds_fidelity and self._emits_exits(rule, op):
            return self._refuse(site, op, f"rule {rule.name} would add exits to {op.cls}, which runs "
                                          f"without one unpatched (table: {row.handling.value})")
        why = "the table asks for the INT3 replacement"
        if row.handling is not isa.Handling.INT3:
            try:
                return self._install_jmp(site, op)
            except (NoWindow, CannotMove) as err:
                why = str(err)
            merged = self._merge(site, op)
            if merged is not None:
                return merged
        if not self.emulable(op.cls):
            return self._refuse(site, op, f"{why}; and no INT3 either: the runtime does not emulate {op.cls}")
        if not row.exit_adds_fidelity:
            return self._refuse(site, op, f"{why}; and no INT3 either: it would add exits to {op.cls}, "
                                          "which runs without one unpatched")
        self.notes[site] = why
        return self._install_int3(op)

    def _emits_exits(self, rule: PatchRule, op: Operation) -> bool:
        """Whether `rule`'s translation of `op` exits (a hypercall, or the INT3 replacement).
        Asked before patching a class that never exits unpatched: such a patch would cost
        more exits than the instruction (the general guard; bt.isa `exit_adds_fidelity`)."""
        code = rule.emit(op, EmitContext(self.ctx.data_slots()))
        return code is None or bool(code.exits)

    def _merge(self, site: int, op: Operation) -> Patch | None:
        """One window for this site and the patched sites just before it in its basic
        block, when their windows left it too few bytes (PATM recompiled a whole run of
        sensitive instructions into one block too). The earlier sites the new window does
        not take in are patched again on their own; if no window fits, all stays as it was."""
        bounds = self.code.block_of(site) if self.code is not None else None
        if bounds is None:
            return None
        victims = [p for p in self.patches.values() if bounds[0] <= p.start and p.end <= op.address]
        if not victims:
            return None
        for v in victims:
            self.remove(v.site, free=False)
        try:
            patch = self._install_jmp(site, op)
        except (NoWindow, CannotMove):
            for v in victims:           # put them back as they were
                self.memory.write(v.start, self._head(v))
                self._register(v)
            return None
        for v in victims:
            self._free_block(v)
        for v in victims:
            if patch.covers(v.site):
                self.stats.merged += 1
            else:
                self.patch_site(v.site)
        return patch

    @staticmethod
    def _head(patch: Patch) -> bytes:
        return head(patch)

    def _install_jmp(self, site: int, op: Operation) -> Patch:
        if self.code is None:
            raise NoWindow("no code map (scanner) for this guest")
        bounds = self.code.block_of(site)
        if bounds is None:
            if self._learning is not None and not self._learning.scanned(site):
                raise NoWindow("the scan never reached this site and its code could not be learned")
            raise NoWindow("site is outside every scanned basic block")
        bstart, bend = bounds
        raw = self.original(bstart, bend - bstart)
        insns = list(self._cs.disasm(raw, bstart))
        window = choose(site, insns, self.code, lambda i: plan(i, self.rules, self.ctx, self.emulable),
                        self._free)
        if not self._free(window.start, window.end):
            raise NoWindow("window overlaps another patch")
        address = self.patch_memory.reserve(64 * len(window.items) + 128)
        block = build(window.items, window.start, window.end, address, self.ctx)
        self.patch_memory.commit(address, len(block.code))
        original = self.original(window.start, window.end - window.start)
        patch = Patch(site, op, "jmp", window.start, window.end, original, block)
        self.memory.write(block.address, block.code)
        rel = (block.address - (window.start + JMP_LEN)) & 0xFFFFFFFF
        self.memory.write(window.start, b"\xe9" + rel.to_bytes(4, "little"))
        self._register(patch)
        return patch

    def _install_int3(self, op: Operation) -> Patch:
        original = self.original(op.address, 1)
        patch = Patch(op.address, op, "int3", op.address, op.address + 1, original)
        self.memory.write(op.address, INT3)
        self._register(patch)
        return patch

    def adopt(self, rec: Record) -> None:
        """Take over the patches of a statically patched kernel (`bt patch`): its code
        already holds the JMPs and INT3s; patch memory gets the recorded blocks."""
        # A record that does not fit this kernel or this ring1 is bad input (exit 2), not a
        # bug: the file says so, and `bt patch` never writes one (runtime/staticpatch.py checks).
        if rec.patch_base != self.patch_memory.base:
            raise InputError(f"patch record made for patch memory at {rec.patch_base:#x}, "
                             f"this ring1 has it at {self.patch_memory.base:#x}")
        self.memory.write(rec.patch_base, rec.code)
        self.patch_memory.commit(rec.patch_base, rec.patch_top - rec.patch_base)
        self.ctx = EmitContext(dict(rec.rule_data), area=self.area)
        for patch in rec.patches:
            head = self._head(patch)
            if self.memory.read(patch.start, len(head)) != head:
                raise InputError(f"patch record says {patch.kind} at {patch.start:#x}, the code disagrees")
            if self.live(patch.start):
                self._register(patch)
            else:
                # Code the guest first runs elsewhere (at its physical address, before paging):
                # the guest's own bytes until it is live (`retry_deferred`).
                self.memory.write(patch.start, patch.original)
                self._suspended[patch.site] = patch
        for refusal in rec.refusals:
            self.refusals[refusal.site] = refusal
        self._changed()

    def _free_block(self, patch: Patch) -> None:
        if patch.block is not None:
            self.patch_memory.free(patch.block.address, len(patch.block.code))

    def remove(self, site: int, free: bool = True) -> None:
        """Take the patch at `site` out; its block's bytes go back to patch memory unless
        `free` is false (a merge that may put the patch back)."""
        patch = self.patches.pop(site)
        self._windows.remove((patch.start, site))
        if free:
            self._free_block(patch)
        self.memory.write(patch.start, patch.original)
        self._unindex(patch)
        handle = self._watches.pop(site, None)
        if handle is not None and self.watch is not None:
            self.watch.unwatch(handle)

    def _unindex(self, patch: Patch) -> None:
        """Forget `patch` in every map the exits use (its guest bytes and watch stay)."""
        self._changed()
        for addr in [a for a, (p, _) in self._exits.items() if p is patch]:
            del self._exits[addr]
        self._blocks = [(a, p) for a, p in self._blocks if p is not patch]
        if patch.block is not None:
            if patch.block.gate is not None:
                del self._gates[patch.block.gate]
            for chunk in patch.block.chunks:
                if self._interior.pop(chunk.guest, None) is not None:
                    self._mark_interior(chunk.guest, -1)

    def _register(self, patch: Patch) -> None:
        old = self.patches.get(patch.site)
        if old is not None:
            self._windows.remove((old.start, old.site))
        self.patches[patch.site] = patch
        bisect.insort(self._windows, (patch.start, patch.site))
        self._widest = max(self._widest, patch.end - patch.start)
        self.refusals.pop(patch.site, None)
        self._index(patch)
        if self.watch is not None:
            self._watches[patch.site] = self.watch.watch(patch.start, patch.end)

    def _index(self, patch: Patch) -> None:
        self._changed()
        if patch.block is not None:
            for addr, record in patch.block.exits:
                self._exits[addr] = (patch, record)
            bisect.insort(self._blocks, (patch.block.address, patch), key=lambda t: t[0])
            if patch.block.gate is not None:
                self._gates[patch.block.gate] = patch.block
                self._set_gate(patch.block.gate, patch.block, self._pending_now())
            for chunk in patch.block.chunks:
                if chunk.guest != patch.start:
                    self._interior[chunk.guest] = chunk.resume
                    self._mark_interior(chunk.guest, +1)
        else:
            self._exits[patch.site] = (patch, ExitRecord(patch.op, patch.op.next_address))

    def _mark_interior(self, guest: int, delta: int) -> None:
        """Keep the interior bitmap patch code reads (patchmgr/tables.py) in step with
        `_interior`; a bit shared by aliasing addresses clears with its last user."""
        home, bit = tables.interior_bit(guest)
        where = self.area.linear(home)
        users = self._bit_users[(home, bit)] = self._bit_users[(home, bit)] + delta
        old = self.memory.read(where, 1)[0]
        self.memory.write(where, bytes([(old | bit) if users else (old & ~bit)]))

    # ---- the VMM area moved ------------------------------------------------------------------
    def relocate(self, area: layout.VmmArea) -> dict[int, int]:
        """The VMM area now sits at `area` (runtime/relocate.py; the runtime already maps it
        there). Patch memory is at the same physical place, so every block is re-made at its
        own offset from the new base, with the state-block and table addresses of the new
        place, and every guest JMP into it is re-pointed: PATM relocated its patch memory
        with fixup records; ring1 re-translates the window, which needs no record and gives
        the same bytes a fresh patch would. A block keeps its length (addresses in patch code
        are 32-bit fields, and patch memory is at least 2 MiB from any guest code, so every
        branch between them is a rel32), hence an EIP inside an old block is the same
        offset inside the new one.

        Returns {old block address: new block address}; a block that could not be re-made at
        the same length (never seen) is removed instead, and is absent from the map."""
        delta = area.base - self.area.base
        if not delta:
            return {}
        self.area = area
        self.ctx.area = area
        self.patch_memory.rebase(delta)
        moved: dict[int, int] = {}
        blocks = [p for _, p in self._blocks]
        for patch in blocks:
            self._unindex(patch)
        for patch in blocks:
            old = patch.block
            assert old is not None
            new = self._remade(patch, old.address + delta)
            if new is None:
                self.memory.write(patch.start, patch.original)
                del self.patches[patch.site]
                self._windows.remove((patch.start, patch.site))
                handle = self._watches.pop(patch.site, None)
                if handle is not None and self.watch is not None:
                    self.watch.unwatch(handle)
                self.stats.dropped_on_move += 1
                continue
            self.memory.write(patch.start, self._head(patch))
            self._index(patch)
            moved[old.address] = new.address
        # A `bt patch` record's suspended patches have blocks too: re-made, not yet applied.
        for site, patch in list(self._suspended.items()):
            if patch.block is not None and self._remade(patch, patch.block.address + delta) is None:
                del self._suspended[site]
                self.stats.dropped_on_move += 1
        return moved

    def _remade(self, patch: Patch, address: int) -> Block | None:
        """`patch`'s block re-made at `address` and written there (and `patch.block` set), or
        None if it cannot keep its length."""
        old = patch.block
        assert old is not None
        try:
            new = self._rebuild(patch, address)
        except (NoWindow, CannotMove, PatchError):
            return None
        if len(new.code) != len(old.code):
            return None
        patch.block = new
        self.memory.write(new.address, new.code)
        return new

    def _rebuild(self, patch: Patch, address: int) -> Block:
        """`patch`'s block made again at `address` from the guest bytes it replaced."""
        insns = list(self._cs.disasm(patch.original, patch.start))
        if sum(i.size for i in insns) != len(patch.original):
            raise PatchError(f"window at {patch.start:#x} no longer decodes")
        items = [plan(i, self.rules, self.ctx, self.emulable) for i in insns]
        return build(items, patch.start, patch.end, address, self.ctx)

    def _refuse(self, site: int, op: Operation | None, reason: str) -> Refusal:
        placeholder = op or Operation(None, site, 0, "?", (), "?")
        refusal = Refusal(site, placeholder, reason)
        self.refusals[site] = refusal
        self._changed()
        return refusal

    def is_unpatched(self, address: int) -> bool:
        """No patch covers `address` and none was refused there."""
        return address not in self.refusals and self._free(address, address + 1)

    # ---- views ------------------------------------------------------------------------------
    def original(self, address: int, size: int) -> bytes:
        """Guest bytes as the guest wrote them, patches taken out."""
        data = bytearray(self.memory.read(address, size))
        for patch in self._patches_covering_range(address, address + size):
            for i, b in enumerate(patch.original):
                if address <= patch.start + i < address + size:
                    data[patch.start + i - address] = b
        return bytes(data)

    def _decode(self, site: int) -> CsInsn | None:
        """The instruction at `site`, or None if its page is no longer mapped (code the guest
        ran before it changed its mapping, like a bzImage's decompressor)."""
        try:
            return next(self._cs.disasm(self.original(site, 16), site), None)
        except PatchError:
            return None

    def _free(self, start: int, end: int) -> bool:
        return not any(True for _ in self._patches_covering_range(start, end))

    def _patches_covering_range(self, start: int, end: int) -> Iterable[Patch]:
        windows = self._windows
        i = bisect.bisect_left(windows, (start - self._widest + 1, -1))
        found = []
        while i < len(windows) and windows[i][0] < end:
            patch = self.patches[windows[i][1]]
            if start < patch.end:
                found.append(patch)
            i += 1
        return found

    def _patch_holding(self, eip: int) -> Patch | None:
        i = bisect.bisect_right(self._blocks, eip, key=lambda t: t[0]) - 1
        if i < 0:
            return None
        patch = self._blocks[i][1]
        assert patch.block is not None
        return patch if eip < patch.block.limit else None

    def blocks(self) -> list[Block]:
        return [p.block for _, p in self._blocks if p.block is not None]
