"""What the tests need from outside Python, in one place, and what a missing piece does.

A developer's machine may lack a tool: the tests that need it skip, saying which and how
to install it. CI must not: with `CI` set (`.ci/run` exports `CI=true`) a missing tool
fails the test instead, and so does any other skip (tests/conftest.py turns every skip
into a failure under CI), so a green CI run has run every test.

README.md ("Tests") lists the same table for people.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from typing import NoReturn

import pytest

#: The environment variable CI sets (GitHub, GitLab and `.ci/run` all set CI=true).
CI_ENV = "CI"


def in_ci() -> bool:
    return os.environ.get(CI_ENV, "").strip().lower() not in ("", "0", "false", "no")


@dataclass(frozen=True)
class Tool:
    #: Executables that must all be on PATH (the first is returned by `require_tool`).
    commands: tuple[str, ...]
    #: How to get it, for the skip or failure message.
    install: str
    #: What needs it.
    used_by: str


TOOLS: dict[str, Tool] = {
    "qemu": Tool(("qemu-system-i386",), "Debian: apt-get install qemu-system-x86",
                 "the QEMU reference tests (samples, user I/O, faults, boot information)"),
    "binutils": Tool(("as", "ld", "objdump", "strip"), "Debian: apt-get install binutils",
                     "scanner tests that build ELFs, the objdump reference, the loader's bad kernels"),
    "ruff": Tool(("ruff",), "pip install -e '.[test]'", "tests/test_lint.py"),
    "mypy": Tool(("mypy",), "pip install -e '.[test]'", "tests/test_lint.py"),
    "chromium": Tool(("chromium", "chromium-browser", "google-chrome"),
                     "Debian: apt-get install chromium", "tests/test_report_browser.py"),
    "gcc": Tool(("gcc",), "Debian: apt-get install gcc",
                "bt patch on a `gcc -m32 -static` ELF (tests/test_patch_robust.py)"),
    "dpkg-deb": Tool(("apt-get", "dpkg-deb"), "a Debian machine (apt, dpkg)",
                     "fetching a Linux kernel for the real-kernel scanner check"),
}


def unavailable(reason: str) -> NoReturn:
    """Skip (locally) or fail (under CI) because something the test needs is missing."""
    if in_ci():
        pytest.fail(f"{reason}, and CI ({CI_ENV}={os.environ.get(CI_ENV)}) must run this test",
                    pytrace=False)
    pytest.skip(reason)


def require_tool(name: str) -> str:
    """The path of tool `name`'s first command; skips or fails (`unavailable`) without it."""
    tool = TOOLS[name]
    if name == "chromium":      # any one of the browser names will do
        found = next((p for p in map(shutil.which, tool.commands) if p), None)
        if found is None:
            unavailable(f"chromium not installed ({tool.install})")
        return found
    paths = [shutil.which(c) for c in tool.commands]
    missing = [c for c, p in zip(tool.commands, paths, strict=True) if p is None]
    if missing:
        unavailable(f"{', '.join(missing)} not installed ({tool.install})")
    assert paths[0] is not None
    return paths[0]
