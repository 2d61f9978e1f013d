"""The machine-readable report, schema `ring1.compare/1` (documented in docs/compare-json.md).

The version in `SCHEMA` changes when a field is removed, renamed or changes
meaning; adding a field keeps it. Counts are integers, times are seconds (floats),
addresses are integers; a figure a run did not measure is null.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from runtime.report.model import Comparison, Counts, KernelComparison
from runtime.report.record import BASELINE

SCHEMA = "ring1.compare/1"


def to_json(comparison: Comparison) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "ok": comparison.ok,
        "kernels": [_kernel(k) for k in comparison.kernels],
        "reproducibility": comparison.repro.to_json(),
    }


def dumps(comparison: Comparison) -> str:
    return json.dumps(to_json(comparison), indent=2, ensure_ascii=False) + "\n"


def _counts(row: Counts, modes: tuple[str, ...]) -> dict[str, Any]:
    patched = [m for m in modes if m != BASELINE]
    return {"counts": dict(row.counts), "reduction": {m: row.reduction(m) for m in patched},
            "added": {m: row.added(m) for m in patched}}


def _kernel(k: KernelComparison) -> dict[str, Any]:
    timing = {t.mode: t for t in k.timings}
    return {
        "name": k.name,
        "path": k.kernel.path,
        "sha256": k.kernel.sha256,
        "modes": list(k.modes),
        "ok": k.ok,
        "agree": k.agree,
        "linux_log": k.linux_log,
        "mismatches": [{"mode": m.mode, "what": m.what, "expected": m.expected, "got": m.got}
                       for m in k.mismatches],
        "reference": None if k.reference is None else {
            "path": k.reference.path, "sha256": k.reference.sha256, "output_bytes": k.reference.size,
            "matches": dict(k.reference.matches)},
        "runs": {
            m: {
                "exit_status": r.exit_status,
                "stop_reason": r.stop_reason,
                "output_bytes": len(r.serial),
                "output_sha256": hashlib.sha256(r.serial).hexdigest(),
                "exits": r.total_exits,
                "guest_instructions": r.guest_instructions,
                "wall_s": r.timing.wall,
                "guest_s": r.timing.guest,
                "vmm_s": r.timing.vmm,
                "us_per_exit": timing[m].us_per_exit,
                "speedup": k.speedup(m),
            }
            for m, r in ((m, k.runs[m]) for m in k.modes)
        },
        "exits": {
            "total": _counts(k.total, k.modes),
            "by_kind": [{"kind": row.key, **_counts(row, k.modes)} for row in k.by_kind],
            "by_class": [{"class": row.key, **_counts(row, k.modes)} for row in k.by_class],
        },
        "sites": {
            "total": k.site_count,
            "top": [{"address": s.address, "symbol": s.symbol, "class": s.cls, "instruction": s.text,
                     "counts": dict(s.counts), "patch": dict(s.patch)} for s in k.sites],
        },
        "functions": [{"name": f.name, "start": f.start, "size": f.size, "counts": dict(f.counts)}
                      for f in k.functions],
        "patches": {
            m: [{"address": p.address, "symbol": k.kernel.describe(p.address), "instruction": p.text,
                 "rule": p.rule, "kind": p.kind, "start": p.window.start, "size": p.size, "status": p.status,
                 "reason": p.reason}
                for p in patches]
            for m, patches in k.patches.items()
        },
    }
