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

Each row carries how VirtualBox, VMware and Xen handled it (`reference`). The guest
kernel deprivileged to ring 3 (`bt run --guest-ring 3`) does not exist yet: its columns
say "not measured". The JSON form is `ring1.audit/1` (docs/audit-json.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from runtime.audit import reference
from runtime.audit.probe import NOT_PROBED, PROBES, Outcome, Scratch
from runtime.audit.reach import VIA_GUEST, VIA_GUEST_UNUSED, VIA_NO_PAGING, Access, Mapping, mappings
from runtime.cpu import CS, EIP
from runtime.paging import CR0_PG

if TYPE_CHECKING:
    from runtime.vm import Vm

SCHEMA = "ring1.audit/1"
#: RunStats counters of the isolation work (issue 11), reported when the runtime has them.
ISSUE11_COUNTERS = ("table_writes", "user_patch_steps", "code_pages_seen")
#: What the columns of the guest kernel deprivileged to ring 3 say until that mode exists.
NOT_MEASURED = "not measured (no --guest-ring 3 yet)"


@dataclass(frozen=True)
class Leak:
    cls: str
    label: str
    guest: str | None
    unpatched: Outcome | None
    patched: Outcome | None
    why_not: str = ""  #: why unpatched/patched are None (the guest was in ring 3)

    def to_dict(self) -> dict[str, Any]:
        ref = reference.LEAKS[self.cls]
        return {
            "class": self.cls,
            "probe": self.label,
            "guest_set": self.guest,
            "ring1_unpatched": self.unpatched.to_dict() if self.unpatched else None,
            "ring1_patched": self.patched.to_dict() if self.patched else None,
            "leaks_unpatched": _differs(self.guest, self.unpatched),
            "leaks_patched": _differs(self.guest, self.patched),
            "ring3_kernel": NOT_MEASURED,
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
    cpl: int
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
            },
            "vmm_area": {
                "base": f"{self.vmm_base:#010x}",
                "paging": self.paging,
                "guest_paging": self.guest_paging,
                "mappings": [{**m.to_dict(), "cpu": self.cpu.get(m.linear)} for m in self.mappings],
                "ring3_kernel": NOT_MEASURED,
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
    if cpl != 1:
        why = f"the CPU was at CPL {cpl} at the audit point, not in the guest kernel"
    elif area.contains(eip) and not area.in_patch_memory(eip):
        # The VMM's own ring-1 stub (a ring 3 -> 1 delivery in flight): CS is the VMM's.
        why = f"the CPU was in VMM code at {eip:#010x}, not in the guest kernel"
    return why + " (pick another --at-insns)" if why else ""


def _leaks(vm: Vm, scratch: Scratch) -> list[Leak]:
    from patchmgr.registry import load

    rules = vm.patches.rules if vm.patches is not None else load()
    return [Leak(p.cls, p.label, p.guest(vm), scratch.run(p, None), scratch.run(p, rules)) for p in PROBES]


def take(vm: Vm, ended: str) -> Audit:
    """The audit of run `vm` where it stopped (`ended` says how)."""
    guard = _guard(vm)  # before the probes: nothing they do reaches the run's counters
    paging, maps = mappings(vm)
    why = _not_in_kernel(vm)
    cpu: dict[int, dict[str, str]] = {}
    if why:
        leaks = [Leak(p.cls, p.label, p.guest(vm), None, None, why) for p in PROBES]
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


def verdict(a: Audit) -> list[str]:
    """What the guest kernel at ring 1 can read, change and learn, in a few sentences built
    from the measured rows only."""
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
        + (", ".join(sorted({m.region for m in user})) or "none")
        + ")."
    )
    if any(m.via == VIA_NO_PAGING for m in a.mappings):
        out.append("the CPU's paging is off at the audit point: no page protection applies to any CPL.")
    out.append(
        f"change: ring 1 writes {_physical(writable)} VMM physical pages ("
        + (", ".join(sorted({m.region for m in writable})) or "none")
        + f"); stores into the other {_physical(dropped)} it reaches are dropped by the guard "
        f"({a.guard['dropped_stores']} in this run, {a.guard['vflags_repairs']} virtual flags "
        "repairs)."
    )
    ran = [x for x in a.leaks if x.unpatched is not None]
    if ran:
        leak_u = [x.label.split(":")[0] for x in ran if _differs(x.guest, x.unpatched)]
        leak_p = [x.label.split(":")[0] for x in ran if _differs(x.guest, x.patched)]
        out.append(
            f"learn: unpatched, {len(leak_u)} of {len(ran)} probes give the guest a value other "
            f"than the one it set ({', '.join(leak_u) or 'none'}); patched, {len(leak_p)} "
            f"({', '.join(leak_p) or 'none'})."
        )
    else:
        out.append(f"learn: not measured ({a.leaks[0].why_not if a.leaks else 'no probes'}).")
    if a.cpu:
        bad = cpu_disagrees(a)
        ran3 = any(not c["ring3_user_load"].startswith("not run") for c in a.cpu.values())
        rings = "ring 1 and ring 3" if ran3 else "ring 1 (the guest has no ring-3 segments)"
        out.append(
            f"the CPU agrees: a load and a store from {rings} at every mapping did what the tables say."
            if not bad
            else "the CPU DISAGREES with the tables at: " + "; ".join(bad) + "."
        )
    out.append(
        "ring 3 (guest kernel deprivileged): not measured; `bt run --guest-ring 3` does not exist yet."
    )
    return out
