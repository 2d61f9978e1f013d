"""`bt audit`: what a guest kernel in ring 1 can reach, learn and change of the VMM.

`take(vm, ended)` reads a run at the point it stopped (its end, or `--max-insns`: the
audit point the user picks) and measures three things, each from the run itself:

1. the VMM area in the guest's linear space (`reach`): every linear page that maps a
   VMM physical page, found by walking the CPU's page tables and the guest's own, with
   the protection seen from guest ring 1 and guest ring 3 (user code);
2. host values that leak (`probe`): each sensitive instruction of bt/isa.py that hands
   the guest a value, executed at the audit point in a scratch engine holding the run's
   CPU state and memory, unpatched and through the run's patch rules, next to what the
   guest set;
3. guard events of the run (`RunStats`): dropped stores into the VMM area, VMM moves,
   virtual flags words repaired.

Each row carries how VirtualBox, VMware and Xen handled it (`reference`).

An audit measures the run's own ring. `bt audit --guest-ring 3 [--ring3 split|flat]` audits
the guest kernel deprivileged to real CPL 3 (runtime/ring3/): the probes run at CPL 3 from the
audit point, unpatched (ring 3 runs unpatched), and the mappings are walked in ring 3's
views; its ring-1 columns then say where they are measured, as a ring-1 audit's ring-3
columns do. The JSON form is `ring1.audit/1` (docs/audit-json.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from runtime.audit import reference
from runtime.audit.probe import NOT_PROBED, PROBES, Outcome, Scratch
from runtime.audit.reach import (
    VIA_GUEST,
    VIA_GUEST_UNUSED,
    VIA_NO_PAGING,
    Access,
    Mapping,
    mappings,
    mappings_ring3,
)
from runtime.cpu import CS, EIP
from runtime.paging import CR0_PG

if TYPE_CHECKING:
    from runtime.vm import Vm

SCHEMA = "ring1.audit/1"
#: RunStats counters of the isolation work (issue 11), reported when the runtime has them.
ISSUE11_COUNTERS = ("table_writes", "user_patch_steps", "code_pages_seen")
#: What a ring-1 audit says in the columns of the guest kernel deprivileged to ring 3, and
#: a ring-3 audit in the ring-1 columns: each ring is its own run.
NOT_MEASURED = "measured in a run of its own: bt audit --guest-ring 3 [--ring3 split|flat]"
RING1_ELSEWHERE = "measured in a run of its own: bt audit without --guest-ring 3"


@dataclass(frozen=True)
class Leak:
    cls: str
    label: str
    guest: str | None
    unpatched: Outcome | None
    patched: Outcome | None
    why_not: str = ""  #: why unpatched/patched are None (the guest was in user mode)
    #: The guest kernel's real ring: 3 in an audit of `--guest-ring 3`, where `unpatched` is
    #: what the guest kernel at CPL 3 got and `patched` is None (ring 3 runs unpatched).
    ring: int = 1

    def to_dict(self) -> dict[str, Any]:
        ref = reference.LEAKS[self.cls]
        ring1 = self.ring == 1
        got = self.unpatched.to_dict() if self.unpatched else None
        return {
            "class": self.cls,
            "probe": self.label,
            "guest_set": self.guest,
            "ring1_unpatched": got if ring1 else RING1_ELSEWHERE,
            "ring1_patched": (self.patched.to_dict() if self.patched else None) if ring1 else RING1_ELSEWHERE,
            "leaks_unpatched": _differs(self.guest, self.unpatched),
            "leaks_patched": _differs(self.guest, self.patched) if ring1 else None,
            "ring3_kernel": NOT_MEASURED if ring1 else got,
            "not_measured_because": self.why_not or None,
            "reference": ref.to_dict(),
        }


def _differs(guest: str | None, got: Outcome | None) -> bool | None:
    """True when the instruction gave the guest something other than what it set (None: no
    value to compare, or not run)."""
    if guest is None or got is None:
        return None
    return got.value != guest


@dataclass
class Audit:
    kernel: str
    ended: str
    guest_insns: int
    virtual_ns: int
    eip: int
    cpl: int  #: the real CPL
    vmm_base: int
    paging: bool  #: the CPU's CR0.PG (the real one)
    guest_paging: bool  #: the guest's own (virtual) CR0.PG
    mappings: list[Mapping]
    leaks: list[Leak]
    guard: dict[str, Any]
    #: Linear address of each mapping -> {"ring1_load", "ring1_store", "ring3_user_load",
    #: "ring3_user_store"}: what the CPU did with a 4-byte access to its first page in the
    #: scratch engine (`Scratch.access`); empty when the probes could not run.
    cpu: dict[int, dict[str, str]] = field(default_factory=dict)
    verdict: list[str] = field(default_factory=list)
    guest_ring: int = 1  #: the guest kernel's real ring (`--guest-ring`)
    ring3_view: str | None = None  #: ring 3's paging views (`--ring3`), None in ring 1
    guest_cpl: int = 0  #: the CPL the guest believes it runs at (`VirtualCpu.guest_cpl`)
    #: Guest kernel (supervisor) pages guest user code can read (runtime/ring3/probe.py
    #: `reach`); None with guest paging off.
    user_reads_kernel_pages: int | None = None

    @property
    def kernel_key(self) -> str:
        """The JSON name of the guest kernel's column."""
        return "ring1" if self.guest_ring == 1 else "ring3_kernel"

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "kernel": self.kernel,
            "point": {
                "ended": self.ended,
                "guest_insns": self.guest_insns,
                "virtual_ns": self.virtual_ns,
                "eip": f"{self.eip:#010x}",
                "cpl": self.cpl,
                "guest_cpl": self.guest_cpl,
                "guest_ring": self.guest_ring,
                "ring3_view": self.ring3_view,
            },
            "vmm_area": {
                "base": f"{self.vmm_base:#010x}",
                "paging": self.paging,
                "guest_paging": self.guest_paging,
                "mappings": [
                    {**m.to_dict(self.kernel_key), "cpu": self.cpu.get(m.linear)} for m in self.mappings
                ],
                "user_reads_kernel_pages": self.user_reads_kernel_pages,
                **({"ring3_kernel": NOT_MEASURED} if self.guest_ring == 1 else {"ring1": RING1_ELSEWHERE}),
                "reference": {"vmm_slot": reference.AREA.to_dict(), "guest_alias": reference.ALIAS.to_dict()},
            },
            "leaks": [leak.to_dict() for leak in self.leaks],
            "not_probed": dict(NOT_PROBED),
            "guard": self.guard,
            "verdict": self.verdict,
        }


def _guard(vm: Vm) -> dict[str, Any]:
    st = vm.stats
    return {
        "dropped_stores": st.vmm_writes,
        "first_writers": [
            {"eip": f"{e:#010x}", "symbol": vm.symbolize(e), "address": f"{a:#010x}", "size": n, "region": r}
            for e, a, n, r in st.vmm_writers
        ],
        "vmm_moves": [
            {"from": f"{m.old:#010x}", "to": f"{m.new:#010x}", "why": m.why, "eip": f"{m.eip:#010x}"}
            for m in st.vmm_moves
        ],
        "vflags_repairs": st.vflags_corrupted,
        "vflags_bad": [f"{w:#010x}" for w in st.vflags_bad],
        # Issue 11's monitors (runtime/tablewatch.py, userstep.py, codewatch.py): None in a
        # build without them.
        **{name: getattr(st, name, None) for name in ISSUE11_COUNTERS},
        "reference": {k: v.to_dict() for k, v in reference.GUARD.items()},
    }


def _not_in_kernel(vm: Vm) -> str:
    """Why the probes cannot run from the CPU state of the audit point ("" if they can)."""
    cpl, eip, area = vm.cpu.read(CS) & 3, vm.cpu.read(EIP), vm.machine.vmm
    why = ""
    if vm.vcpu.guest_cpl() != 0:
        # Ring 1: the real CPL tells; ring 3: the guest kernel is at real CPL 3 too, so the
        # VMM's record of the guest's mode (its virtual CPL) tells.
        why = f"the CPU was at CPL {cpl} at the audit point, not in the guest kernel"
        if vm.vcpu.ring == 3:
            why = "the guest was in user mode (virtual CPL 3) at the audit point, not in its kernel"
    elif area.contains(eip) and not area.in_patch_memory(eip):
        # The VMM's own ring-1 stub (a ring 3 -> 1 delivery in flight): CS is the VMM's.
        why = f"the CPU was in VMM code at {eip:#010x}, not in the guest kernel"
    return why + " (pick another --at-insns)" if why else ""


def _leaks(vm: Vm, scratch: Scratch) -> list[Leak]:
    if vm.vcpu.ring == 3:  # unpatched only: ring 3 runs unpatched
        return [Leak(p.cls, p.label, p.guest(vm), scratch.run(p, None), None, ring=3) for p in PROBES]
    from patchmgr.registry import load

    rules = vm.patches.rules if vm.patches is not None else load()
    return [Leak(p.cls, p.label, p.guest(vm), scratch.run(p, None), scratch.run(p, rules)) for p in PROBES]


def take(vm: Vm, ended: str) -> Audit:
    """The audit of run `vm` where it stopped (`ended` says how)."""
    from runtime.ring3.probe import reach

    guard = _guard(vm)  # before the probes: nothing they do reaches the run's counters
    paging, maps = mappings(vm) if vm.ring3 is None else mappings_ring3(vm)
    why = _not_in_kernel(vm)
    cpu: dict[int, dict[str, str]] = {}
    if why:
        leaks = [Leak(p.cls, p.label, p.guest(vm), None, None, why, vm.vcpu.ring) for p in PROBES]
    else:
        scratch = Scratch(vm)
        try:
            leaks = _leaks(vm, scratch)
            # The tables' word checked by the CPU: an access to the first page of each mapping.
            cpu = {
                m.linear: {
                    f"{who}_{what}": scratch.access(m.linear, user=who != "ring1", store=what == "store")
                    for who in ("ring1", "ring3_user")
                    for what in ("load", "store")
                }
                for m in maps
            }
        finally:
            scratch.close()
    audit = Audit(
        kernel=str(vm.config.kernel),
        ended=ended,
        guest_insns=vm.stats.guest_insns,
        virtual_ns=vm.stats.virtual_ns,
        eip=vm.traps.patcher.to_guest_eip(vm.cpu.read(EIP)),
        cpl=vm.cpu.read(CS) & 3,
        vmm_base=vm.machine.vmm.base,
        paging=paging,
        guest_paging=bool(vm.vcpu.cr(0) & CR0_PG),
        mappings=maps,
        leaks=leaks,
        guard=guard,
        cpu=cpu,
        guest_ring=vm.vcpu.ring,
        ring3_view=vm.ring3.view if vm.ring3 is not None else None,
        guest_cpl=vm.vcpu.guest_cpl(),
        user_reads_kernel_pages=reach(vm)["user_reads_kernel_pages"],
    )
    audit.verdict = verdict(audit)
    return audit


def _pages(maps: list[Mapping]) -> int:
    return sum(m.size for m in maps) // 4096


def _physical(maps: list[Mapping]) -> int:
    return len({m.physical + k for m in maps for k in range(0, m.size, 4096)})


def _cpu_expects(access: Access) -> tuple[str, str]:
    """The load and store results the tables predict for one CPL."""
    if not access.read:
        return "#PF", "#PF"
    return "ok", {"yes": "made", "dropped": "dropped", "no": "#PF"}[access.write]


def cpu_disagrees(a: Audit) -> list[str]:
    """Mappings where an access the CPU made in the scratch engine did not do what the
    protection read from the tables says (a bug in the walk or in the runtime)."""
    out = []
    for m in a.mappings:
        got = a.cpu.get(m.linear)
        if got is None:
            continue
        for who, access in (("ring1", m.ring1), ("ring3_user", m.ring3)):
            if got[f"{who}_load"].startswith("not run"):
                continue
            seen = tuple(got[f"{who}_{k}"].removesuffix(" after a shadow fill") for k in ("load", "store"))
            if seen != _cpu_expects(access):
                out.append(f"{m.region} at {m.linear:#010x} from {who}: {seen[0]}/{seen[1]}")
    return out


def _regions(maps: list[Mapping]) -> str:
    return ", ".join(sorted({m.region for m in maps})) or "none"


def verdict(a: Audit) -> list[str]:
    """What the guest kernel can read, change and learn, in a few sentences built from the
    measured rows only."""
    if a.guest_ring == 3:
        return _verdict_ring3(a)
    out: list[str] = []
    readable = [m for m in a.mappings if m.ring1.read and m.via not in (VIA_GUEST, VIA_GUEST_UNUSED)]
    user = [m for m in a.mappings if m.ring3.read]
    writable = [m for m in a.mappings if m.ring1.write == "yes"]
    dropped = [m for m in a.mappings if m.ring1.write == "dropped"]
    aliases = [m for m in a.mappings if m.via in (VIA_GUEST, VIA_GUEST_UNUSED)]
    where = "linear == physical (paging off)" if not a.paging else f"its slot at {a.vmm_base:#010x}"
    out.append(
        f"read: ring 1 reads {_pages(readable)} VMM pages through {where}"
        + (
            f" and {_pages(aliases)} more through the guest's own mappings of VMM physical pages"
            if aliases
            else ""
        )
        + f"; guest ring 3 reads {_pages(user)} ("
        + _regions(user)
        + ")."
    )
    if any(m.via == VIA_NO_PAGING for m in a.mappings):
        out.append("the CPU's paging is off at the audit point: no page protection applies to any CPL.")
    out.append(
        f"change: ring 1 writes {_physical(writable)} VMM physical pages ("
        + _regions(writable)
        + f"); stores into the other {_physical(dropped)} it reaches are dropped by the guard "
        f"({a.guard['dropped_stores']} in this run, {a.guard['vflags_repairs']} virtual flags "
        "repairs)."
    )
    out.append(_learn(a, "unpatched"))
    out += _user_reads(a)
    if a.cpu:
        ran3 = any(not c["ring3_user_load"].startswith("not run") for c in a.cpu.values())
        out.append(_agrees(a, "ring 1 and ring 3" if ran3 else "ring 1 (the guest has no ring-3 segments)"))
    out.append(f"ring 3 (guest kernel deprivileged): {NOT_MEASURED}.")
    return out


def _learn(a: Audit, how: str) -> str:
    ran = [x for x in a.leaks if x.unpatched is not None]
    if not ran:
        return f"learn: not measured ({a.leaks[0].why_not if a.leaks else 'no probes'})."
    leak_u = [x.label.split(":")[0] for x in ran if _differs(x.guest, x.unpatched)]
    out = (
        f"learn: {how}, {len(leak_u)} of {len(ran)} probes give the guest a value other "
        f"than the one it set ({', '.join(leak_u) or 'none'})"
    )
    if a.guest_ring == 3:
        return out + "."
    leak_p = [x.label.split(":")[0] for x in ran if _differs(x.guest, x.patched)]
    return out + f"; patched, {len(leak_p)} ({', '.join(leak_p) or 'none'})."


def _user_reads(a: Audit) -> list[str]:
    if a.user_reads_kernel_pages is None:
        return []
    return [
        f"guest user code reads {a.user_reads_kernel_pages} guest kernel (supervisor) pages "
        "in the tables the CPU walks in user mode."
    ]


def _agrees(a: Audit, rings: str) -> str:
    bad = cpu_disagrees(a)
    if bad:
        return "the CPU DISAGREES with the tables at: " + "; ".join(bad) + "."
    return f"the CPU agrees: a load and a store from {rings} at every mapping did what the tables say."


def _verdict_ring3(a: Audit) -> list[str]:
    """The same for the guest kernel deprivileged to ring 3 (`Mapping.ring1` is its access
    at real CPL 3, `Mapping.ring3` guest user code's)."""
    kernel = [m for m in a.mappings if m.ring1.read]
    user = [m for m in a.mappings if m.ring3.read]
    writable = [m for m in a.mappings if m.ring1.write == "yes"]
    dropped = [m for m in a.mappings if m.ring1.write == "dropped"]
    out = [
        f"read: the guest kernel at ring 3 ({a.ring3_view}) reads {_pages(kernel)} VMM pages "
        f"({_regions(kernel)}) of the {_pages(a.mappings)} mapped in its views; guest user code "
        f"reads {_pages(user)} ({_regions(user)}).",
        f"change: the guest kernel at ring 3 writes {_physical(writable)} VMM physical pages "
        f"({_regions(writable)}); stores into {_physical(dropped)} more are dropped by the guard "
        f"({a.guard['dropped_stores']} in this run).",
        _learn(a, "at CPL 3, unpatched (ring 3 runs unpatched)"),
        *_user_reads(a),
    ]
    if a.cpu:
        out.append(_agrees(a, "the guest kernel and guest user code (both at CPL 3)"))
    out.append(f"ring 1: {RING1_ELSEWHERE}.")
    return out
