"""The campaign report as JSON, schema `ring1.campaign/1` (documented in docs/campaign-json.md).

As `ring1.compare/1`: the version changes when a field is removed, renamed or changes
meaning; counts are integers, times seconds, a figure not measured is null.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from runtime.campaign.model import CampaignReport, Entry, Spread

SCHEMA = "ring1.campaign/1"


def to_json(r: CampaignReport) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "name": r.name,
        "description": r.description,
        "ok": r.ok,
        "manifest": {"path": r.manifest, "sha256": r.manifest_sha256},
        "results": r.results,
        "repeats": r.repeats,
        "cells": vars(r.cells),
        "executor": r.executor or None,
        "build": dict(r.build),
        "configs": [{
            "id": c.id,
            "label": c.label,
            "baseline": c.is_baseline,
            "measured_against": None if c.is_baseline else next(
                b.id for b in r.configs if b.config == c.config.baseline()),
            "settings": c.config.to_json(),
            "run_mode": c.config.run()[0],
        } for c in r.configs],
        "kernels": [{
            "name": k.name,
            "path": k.path,
            "sha256": k.sha256,
            "expect": k.expect,
            "results": [_entry(e) for e in k.entries],
        } for k in r.kernels],
        "totals": [{
            "config": t.config_id,
            "kernels": list(t.kernels),
            "left_out": list(t.left_out),
            "exits_baseline": t.exits_before,
            "exits": t.exits_after,
            "reduction": t.reduction,
            "speedup_geomean": t.speedup_geomean,
        } for t in r.totals],
        "failures": [{"kernel": e.kernel, "config": e.config_id, "cell": f.key, "error": f.error,
                      "exit_code": f.exit_code, "worker": f.worker, "attempts": f.attempts}
                     for e, f in r.failures],
        "reproducibility": r.repro.to_json(),
    }


def dumps(r: CampaignReport) -> str:
    return json.dumps(to_json(r), indent=2, ensure_ascii=False) + "\n"


def _spread(s: Spread | None) -> dict[str, Any] | None:
    if s is None:
        return None
    return {"median": s.median, "min": s.low, "max": s.high, "runs": list(s.values)}


def _entry(e: Entry) -> dict[str, Any]:
    rep = e.representative
    rng = e.speedup_range
    return {
        "config": e.config_id,
        "ok": e.clean,
        "flags": [{"what": f.what, "against": f.against, "detail": f.detail} for f in e.flags],
        "cells": list(e.keys),
        "runs": len(e.runs),
        "failed": len(e.failures),
        "exit_status": rep.exit_status if rep else None,
        "stop_reason": rep.stop_reason if rep else None,
        "output_bytes": len(rep.serial) if rep else None,
        "output_sha256": hashlib.sha256(rep.serial).hexdigest() if rep else None,
        "exits": e.exits,
        "exits_by_kind": dict(rep.exits_by_kind) if rep else None,
        "exits_removed": e.exits_removed,
        "reduction": e.reduction,
        "guest_instructions": rep.guest_instructions if rep else None,
        "wall_s": _spread(e.wall),
        "speedup": e.speedup,
        "speedup_range": list(rng) if rng else None,
    }
