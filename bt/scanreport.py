"""Rendering a scan: plain text for people, JSON (`ring1.scan/1`) for programs.

Kept apart from `bt.scan` the way pyelftools keeps its `describe_*` helpers apart
from parsing. The JSON schema is documented in docs/scan-json.md; any change to a
field's meaning bumps the version in `SCHEMA`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bt import isa
from bt.scan import Patch, ScanResult, Site, virtual_entry

SCHEMA = "ring1.scan/1"


@dataclass(frozen=True)
class ClassSummary:
    cls: isa.InsnClass
    sites: int
    reached: int
    jump: int
    int3: int
    trap_only: int


def summarize(sites: Sequence[Site]) -> list[ClassSummary]:
    """Per class (in table order) with at least one site."""
    out = []
    for cls in isa.CLASSES:
        mine = [s for s in sites if s.cls is cls]
        if not mine:
            continue
        out.append(ClassSummary(
            cls=cls, sites=len(mine), reached=sum(s.reached for s in mine),
            jump=sum(s.patch is Patch.JUMP for s in mine), int3=sum(s.patch is Patch.INT3 for s in mine),
            trap_only=sum(s.patch is Patch.TRAP_ONLY for s in mine)))
    return out


def _hex(value: int) -> str:
    return f"{value:#x}"


def to_json(result: ScanResult, sites: Sequence[Site], *, classes: Sequence[str] = (),
            symbol: str | None = None, limit: int | None = None) -> dict[str, Any]:
    """The `ring1.scan/1` document for `sites` (already filtered from `result.sites`)."""
    img, st = result.image, result.stats
    entry = virtual_entry(img)
    shown = list(sites if limit is None else sites[:limit])
    return {
        "schema": SCHEMA,
        "kernel": {
            "path": img.path,
            "sha256": img.sha256,
            "bits": img.bits,
            "machine": img.machine,
            "entry": _hex(entry),
            "entry_symbol": img.symbolize(entry) if img.symbol_at(entry) else None,
        },
        "code": {
            "sections": list(st.sections),
            "bytes": st.code_bytes,
            "instructions": st.instructions,
            "reached_instructions": st.reached_instructions,
            "reached_bytes": st.reached_bytes,
            "unreached_bytes": st.unreached_bytes,
            "padding_bytes": st.padding_bytes,
            "invalid_bytes": st.invalid_bytes,
            "roots": st.roots,
            "blocks": st.blocks,
            "branch_targets": st.branch_targets,
            "targets_outside_code": st.targets_outside_code,
            "overlapping_instructions": st.overlapping_instructions,
            "jump_tables": st.jump_tables,
            "pushed_returns": st.pushed_returns,
            "data_bytes": st.data_bytes,
        },
        "filter": {"classes": list(classes), "symbol": symbol, "limit": limit},
        "summary": [{
            "class": c.cls.name,
            "category": c.cls.category.value,
            "handling": c.cls.handling.value,
            "rule": c.cls.rule,
            "sites": c.sites,
            "reached": c.reached,
            "unreached": c.sites - c.reached,
            "jump": c.jump,
            "int3": c.int3,
            "trap_only": c.trap_only,
        } for c in summarize(sites)],
        "site_count": len(sites),
        "sites": [{
            "address": _hex(s.address),
            "size": s.size,
            "bytes": s.code.hex(),
            "text": s.text,
            "class": s.cls.name,
            "category": s.cls.category.value,
            "symbol": s.symbol,
            "reached": s.reached,
            "patch": s.patch.value,
            "reason": s.reason,
        } for s in shown],
        "unreached": [{"start": _hex(a), "end": _hex(b),
                       "symbol": img.symbolize(a) if img.symbol_at(a) else None}
                      for a, b in result.unreached],
    }


def describe(result: ScanResult, sites: Sequence[Site], *, limit: int | None = None) -> str:
    """The text report: header, per-class summary, then the site list."""
    img, st = result.image, result.stats
    entry = virtual_entry(img)
    entry_sym = f" ({img.symbolize(entry)})" if img.symbol_at(entry) else ""
    lines = [
        f"{img.path}: ELF{img.bits} {img.machine}, entry {entry:#x}{entry_sym}, sha256 {img.sha256[:16]}",
        f"code: {st.code_bytes:,} bytes in {', '.join(st.sections)}; {st.instructions:,} instructions, "
        f"{st.reached_instructions:,} reached from {st.roots:,} roots "
        f"({st.blocks:,} blocks, {st.branch_targets:,} branch targets)"
        + (f"; {st.data_bytes:,} bytes of multiboot headers not decoded" if st.data_bytes else ""),
        f"unreached: {st.unreached_bytes:,} bytes ({st.padding_bytes:,} padding, "
        f"{st.invalid_bytes:,} undecodable, {len(result.unreached):,} runs of code); "
        f"{st.jump_tables:,} jump tables followed"
        + (f", {st.pushed_returns:,} IRET/RETF to a pushed label" if st.pushed_returns else ""),
        "",
    ]
    summary = summarize(sites)
    head = ("class", "category", "handling", "rule", "sites", "reached", "jump", "int3", "trap-only")
    rows = [(c.cls.name, c.cls.category.value, c.cls.handling.value, c.cls.rule or "-", str(c.sites),
             str(c.reached), str(c.jump), str(c.int3), str(c.trap_only)) for c in summary]
    rows.append(("total", "", "", "", str(len(sites)), str(sum(c.reached for c in summary)),
                 str(sum(c.jump for c in summary)), str(sum(c.int3 for c in summary)),
                 str(sum(c.trap_only for c in summary))))
    lines += _table(head, rows, right=frozenset(range(4, 9)))
    shown = list(sites if limit is None else sites[:limit])
    lines += ["", f"sites: {len(sites)}" + (f", first {len(shown)} shown (--all-sites for every one)"
                                             if len(shown) < len(sites) else "")]
    if shown:
        width = 18 if img.bits == 64 else 10
        site_rows = [(f"{s.address:#0{width}x}", s.code.hex(), s.text, s.cls.name, s.symbol or "-",
                 s.patch.value + ("" if s.reached else " (unreached)"), s.reason) for s in shown]
        lines += _table(("address", "bytes", "instruction", "class", "symbol", "patch", "reason"), site_rows)
    return "\n".join(lines) + "\n"


def _table(head: Sequence[str], rows: Sequence[Sequence[str]],
           right: frozenset[int] = frozenset()) -> list[str]:
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]

    def fmt(row: Sequence[str]) -> str:
        cells = [c.rjust(w) if i in right else c.ljust(w)
                 for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        return "  ".join(cells).rstrip()

    return [fmt(head), *(fmt(r) for r in rows)]
