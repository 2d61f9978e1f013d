"""The docs name only what exists: every relative link and every repository file path
in README.md, docs/*.md, samples/README.md and runtime/README.md is checked (issue 17:
a README pointed at a file outside the repository by an absolute path)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted([ROOT / "README.md", ROOT / "samples" / "README.md", ROOT / "runtime" / "README.md",
               *(ROOT / "docs").glob("*.md")])
TOP = ("bt", "patchmgr", "runtime", "samples", "tests", "docs", ".ci")
#: `[text](target)`, the target without a title.
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)[^)]*\)")
#: A path from the repository's root, in prose or in backticks.
ROOTED = re.compile(r"(?<![\w/.~-])((?:" + "|".join(re.escape(t) for t in TOP) + r")/[\w./<>*{}-]*)")
#: In backticks: a file name or a relative path ending in a source extension (module tables).
TICKED = re.compile(r"`([\w./-]+\.(?:py|S|c|h|ld|md|j2|toml))`")
#: Placeholders in example paths: `samples/<name>/expected.serial`, `samples/NAME/NAME.c`.
PLACEHOLDER = re.compile(r"[<>*{}]|NAME|\.\.\.")


def _clean(path: str) -> str:
    return path.rstrip(".,;:)").split("#")[0]


def _exists(doc: Path, path: str) -> bool:
    if (doc.parent / path).exists() or (ROOT / path).exists():
        return True
    # A bare file name in a table of one folder's files (samples/README.md's `common/`
    # table, runtime/README.md's modules): somewhere below the doc's folder.
    return "/" not in path and any(doc.parent.rglob(path))


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_and_paths_exist(doc: Path) -> None:
    text = doc.read_text()
    missing = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue                                    # a URL or an anchor in the page
        if not (doc.parent / _clean(target)).exists():
            missing.append(f"link {target}")
    for path in ROOTED.findall(text) + TICKED.findall(text):
        path = _clean(path)
        if PLACEHOLDER.search(path):
            continue
        if not _exists(doc, path):
            missing.append(f"path {path}")
    assert not missing, f"{doc.relative_to(ROOT)} names what does not exist: {sorted(set(missing))}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_absolute_paths_outside_the_repository(doc: Path) -> None:
    found = re.findall(r"(?<![\w.~-])/(?:work|home|root|tmp)/[\w./-]+", doc.read_text())
    assert not found, f"{doc.relative_to(ROOT)}: {found}"
