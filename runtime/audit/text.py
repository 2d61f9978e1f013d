"""`bt audit` as text: plain (`render`) or rich tables on a terminal (`render_rich`), the
same facts as the JSON form (runtime/audit/__init__.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from runtime.audit import NOT_MEASURED, RING1_ELSEWHERE, Audit, reference
from runtime.audit.probe import NOT_PROBED

if TYPE_CHECKING:
    from rich.console import Console


@dataclass(frozen=True)
class _Table:
    head: list[str]
    rows: list[list[str]]


def _row(cells: list[str], widths: list[int]) -> str:
    return "  " + "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    return [_row(head, widths), *(_row(r, widths) for r in rows)]


def _ref(name: str, ref: reference.Handled) -> list[str]:
    return [
        f"  {name}:",
        f"    ring compression hides it: {ref.compression}",
        f"    VirtualBox: {ref.virtualbox}",
        f"    VMware: {ref.vmware}",
        f"    Xen: {ref.xen}",
    ]


def _cpu(a: Audit, linear: int, who: str) -> str:
    got = a.cpu.get(linear)
    if got is None:
        return "not run"
    load, store = got[f"{who}_load"], got[f"{who}_store"]
    return load if load.startswith("not run") else f"load {load}, store {store}"


def _blocks(a: Audit) -> list[str | _Table]:
    ring3 = a.guest_ring == 3
    mode = (
        f" (guest kernel deprivileged to ring 3, --ring3 {a.ring3_view}; the guest in its "
        + ("kernel" if a.guest_cpl == 0 else "user mode")
        + ")"
        if ring3
        else ""
    )
    other = (
        f"  guest kernel at ring 1: {RING1_ELSEWHERE}"
        if ring3
        else f"  guest kernel at ring 3: {NOT_MEASURED}"
    )
    out: list[str | _Table] = [
        f"bt audit: {a.kernel}",
        f"audit point: {a.ended}; {a.guest_insns} guest instructions, EIP {a.eip:#010x}, CPL {a.cpl}{mode}, "
        f"virtual time {a.virtual_ns} ns",
        "",
        f"1. The VMM area in the guest's linear space (base {a.vmm_base:#010x}; the CPU's paging "
        f"{'on' if a.paging else 'off'}, the guest's {'on' if a.guest_paging else 'off'}), from the page "
        "tables of the run:",
    ]
    rows = [
        [
            m.region,
            f"{m.linear:#010x}",
            f"{m.physical:#010x}",
            str(m.size // 4096),
            m.via,
            m.ring1.text(),
            m.ring3.text(),
            _cpu(a, m.linear, "ring1"),
            _cpu(a, m.linear, "ring3_user"),
        ]
        for m in a.mappings
    ]
    out.append(
        _Table(
            [
                "region",
                "linear",
                "physical",
                "pages",
                "via",
                *(
                    ("guest kernel (CPL 3)", "guest user (CPL 3)", "CPU: guest kernel", "CPU: guest user")
                    if ring3
                    else ("guest ring 1", "guest ring 3 (user)", "CPU at CPL 1", "CPU at CPL 3")
                ),
            ],
            rows,
        )
    )
    out.append(other)
    out += _ref("the VMM's slot", reference.AREA)
    out += _ref("guest mappings of VMM physical pages", reference.ALIAS)
    out += ["", "2. Host values the guest can read, each instruction executed at the audit point:"]
    if a.leaks and a.leaks[0].unpatched is None:
        out.append(f"  not measured: {a.leaks[0].why_not}")
    elif ring3:
        rows = []
        for x in a.leaks:
            u = x.unpatched
            assert u is not None
            mark = " LEAK" if x.guest is not None and u.value != x.guest else ""
            rows.append([x.label, x.guest if x.guest is not None else "-", u.value + mark])
        out.append(_Table(["probe", "guest set", "ring 3 kernel (CPL 3, unpatched)"], rows))
    else:
        rows = []
        for x in a.leaks:
            u, p = x.unpatched, x.patched
            assert u is not None and p is not None
            mark_u = " LEAK" if x.guest is not None and u.value != x.guest else ""
            mark_p = " LEAK" if x.guest is not None and p.value != x.guest else ""
            how = (
                f"{p.patch}" + (f" {p.rule}" if p.rule else "") + (f", {p.exits} exit(s)" if p.exits else "")
            )
            rows.append(
                [x.label, x.guest if x.guest is not None else "-", u.value + mark_u, p.value + mark_p, how]
            )
        out.append(_Table(["probe", "guest set", "ring 1 unpatched", "ring 1 patched", "patch"], rows))
    out.append(other)
    for cls, why in NOT_PROBED.items():
        out.append(f"  not probed: {cls}: {why}")
    groups: dict[reference.Handled, list[str]] = {}
    for x in a.leaks:
        names = groups.setdefault(reference.LEAKS[x.cls], [])
        if x.cls not in names:
            names.append(x.cls)
    for ref, names in groups.items():
        out += _ref(", ".join(names), ref)
    g = a.guard
    out += ["", "3. Guard events of the run:", f"  stores into the VMM area dropped: {g['dropped_stores']}"]
    for w in g["first_writers"]:
        out.append(
            f"    from EIP {w['eip']} {w['symbol']}: {w['size']} bytes at {w['address']} ({w['region']})"
        )
    out.append(f"  VMM area moves: {len(g['vmm_moves'])}")
    for m in g["vmm_moves"]:
        out.append(f"    {m['from']} -> {m['to']} at EIP {m['eip']}: {m['why']}")
    out.append(
        f"  virtual flags words repaired: {g['vflags_repairs']}"
        + (f" ({', '.join(g['vflags_bad'])})" if g["vflags_bad"] else "")
    )
    for key, what in (
        ("table_writes", "stores into the guest's own GDT/LDT pages, re-shadowed (SELM)"),
        ("user_patch_steps", "guest user instructions run at patched windows from the guest's bytes"),
        ("code_pages_seen", "code pages outside the kernel ELF first run, scanned"),
    ):
        if g[key] is not None:
            out.append(f"  {what}: {g[key]}")
    for name, ref in reference.GUARD.items():
        out += _ref(name, ref)
    out += ["", "4. Verdict:"] + [f"  - {line}" for line in a.verdict]
    return out


def render(a: Audit) -> str:
    """Plain text (not a terminal, and the golden files)."""
    lines: list[str] = []
    for block in _blocks(a):
        lines += _table(block.head, block.rows) if isinstance(block, _Table) else [block]
    return "\n".join(lines) + "\n"


def render_rich(a: Audit, console: Console) -> None:
    """The same on a terminal, tables as rich tables."""
    from rich.markup import escape
    from rich.table import Table

    for block in _blocks(a):
        if isinstance(block, _Table):
            table = Table(header_style="bold")
            for i, head in enumerate(block.head):
                # Addresses and counts never wrap; the long descriptive columns do.
                table.add_column(head, no_wrap=max(len(r[i]) for r in [block.head, *block.rows]) <= 12)
            for row in block.rows:
                table.add_row(
                    *(escape(c) for c in row), style="red" if any("LEAK" in c for c in row) else None
                )
            console.print(table)
        else:
            console.print(escape(block), highlight=False)
