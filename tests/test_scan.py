"""bt.scan: recursive descent, unreached bytes, basic blocks and PATM's patch-window rules."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bt import elf, scan
from bt.scan import Patch
from tests.scan_helpers import build_elf

# Each case is laid out so one rule decides its site (addresses from -Ttext 0x100000).
PATCH_CASES = (Path(__file__).resolve().parent / "data" / "scan" / "patchcases.S").read_text()
# Far transfers and multiboot headers in .text (issue 17).
FAR_FLOW = (Path(__file__).resolve().parent / "data" / "scan" / "farflow.S").read_text()


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    path = build_elf(tmp_path_factory.mktemp("scan"), PATCH_CASES)
    return scan.scan(elf.load(path))


def _site(result, symbol):
    found = [s for s in result.sites if s.symbol == symbol]
    assert len(found) == 1, [(s.symbol, s.text) for s in result.sites]
    return found[0]


def test_jump_patch_when_the_window_is_clean(cases):
    s = _site(cases, "_start")
    assert (s.cls.name, s.patch, s.reason, s.reached) == ("cli", Patch.JUMP, "", True)


def test_block_end_inside_the_window_leaves_int3(cases):
    s = _site(cases, "fn_ret")
    assert s.patch is Patch.INT3 and "'ret' at +1 ends a basic block" in s.reason


def test_branch_target_inside_the_window_leaves_int3(cases):
    s = _site(cases, "fn_target")
    assert s.cls.name == "pushf" and s.patch is Patch.INT3
    assert "branch target" in s.reason and "(+1)" in s.reason


def test_page_crossing_window_leaves_int3(cases):
    s = _site(cases, "fn_page")
    assert s.address == 0x100FFE and s.patch is Patch.INT3 and "page boundary" in s.reason


def test_unreached_site_is_trap_only(cases):
    s = _site(cases, "fn_ret+0x2")
    assert s.cls.name == "in" and not s.reached and s.patch is Patch.TRAP_ONLY
    assert any(lo <= s.address < hi for lo, hi in cases.unreached)


def test_overlapping_instruction_is_trap_only(cases):
    s = _site(cases, "fn_overlap+0x3")
    assert s.cls.name == "cli" and s.reached and s.patch is Patch.TRAP_ONLY
    assert "inside the reached instruction" in s.reason
    assert cases.stats.overlapping_instructions >= 1


def test_site_covered_by_an_overlapping_instruction_is_trap_only(cases):
    s = _site(cases, "fn_cover+0x5")
    assert s.cls.name == "cli" and s.reached and s.patch is Patch.TRAP_ONLY
    assert "runs through its first byte" in s.reason


def test_blocks_and_targets(cases):
    assert cases.is_branch_target(0x100000)
    fn_target = next(s.address for s in cases.image.symbols if s.name == "fn_target")
    assert cases.is_branch_target(fn_target + 1)
    assert not cases.is_branch_target(fn_target + 2)
    starts = set(cases.block_starts.tolist())
    assert {0x100000, fn_target, fn_target + 1} <= starts
    assert (cases.block_ends > cases.block_starts).all()


def test_stats_add_up(cases):
    st = cases.stats
    assert st.reached_bytes + st.unreached_bytes >= st.code_bytes
    assert st.instructions > 0 and st.roots == 6 and st.invalid_bytes == 0


def test_select_by_class_category_rule_and_symbol(cases):
    assert {s.cls.name for s in scan.select(cases.sites, ["cli"])} == {"cli"}
    assert {s.cls.name for s in scan.select(cases.sites, ["irqflags"])} == {"cli", "sti", "pushf"}
    assert {s.cls.name for s in scan.select(cases.sites, ["privileged"])} == {"hlt"}
    assert [s.symbol for s in scan.select(cases.sites, symbol="fn_p*")] == ["fn_page"]


SIXTY_FOUR = """
.text
.globl _start
.type _start, @function
_start:
    swapgs
    mov %cr3, %rax
    mov %rax, %cr3
    wrmsr
    pushfq
    popfq
    call *%rax
    sysretq
"""


def test_64_bit_kernel(tmp_path):
    result = scan.scan(elf.load(build_elf(tmp_path, SIXTY_FOUR, bits=64)))
    names = [s.cls.name for s in result.sites]
    assert names == ["swapgs", "mov_from_cr", "mov_to_cr", "wrmsr", "pushf", "popf", "sysret"]
    assert all(s.reached for s in result.sites)
    assert result.sites[-1].patch is Patch.INT3      # SYSRET ends its block


def test_stripped_kernel_starts_from_the_entry_only(tmp_path):
    path = build_elf(tmp_path, PATCH_CASES)
    subprocess.run(["strip", "-s", str(path)], check=True)
    result = scan.scan(elf.load(path))
    assert result.stats.roots == 1
    assert all(s.symbol is None for s in result.sites)
    assert {s.cls.name for s in result.sites if s.reached} >= {"cli", "sti", "pushf"}


SWITCH = """
.text
.globl _start
.type _start, @function
_start:
    cmpl $2, %eax
    ja   done
    jmp  *table(,%eax,4)
case0:
    cli
    jmp done
case1:
    sti
    jmp done
case2:
    hlt
done:
    ret
.section .rodata
table:
    .long case0, case1, case2
    .long 0x12345678            # not code: the table ends here
"""


def test_jump_table_entries_are_followed(tmp_path):
    result = scan.scan(elf.load(build_elf(tmp_path, SWITCH)))
    assert [(s.cls.name, s.reached) for s in result.sites] == [("cli", True), ("sti", True), ("hlt", True)]
    assert result.stats.jump_tables == 1
    assert all(result.is_branch_target(s.address) for s in result.sites)


@pytest.fixture(scope="module")
def farflow(tmp_path_factory):
    path = build_elf(tmp_path_factory.mktemp("scan"), FAR_FLOW)
    return scan.scan(elf.load(path))


def _by_text(result, text):
    found = [s for s in result.sites if s.text == text]
    assert found, [(s.text, s.reached) for s in result.sites]
    return found


def test_multiboot_header_in_text_is_not_decoded(farflow):
    """xv6's case: the header's checksum (.. E4) would swallow the first byte of the entry
    code; cut out of the sweep, the entry decodes in step and patches with a JMP."""
    entry = _site(farflow, "_start")
    assert (entry.text, entry.reached, entry.patch) == ("mov eax, cr4", True, Patch.JUMP)
    assert not entry.reason
    assert farflow.stats.data_bytes == 12 + 24          # the v1 header and the v2 header (with its end tag)
    assert not [s for s in farflow.sites if s.address < 0x10000C]    # no STI/IN read from the header
    assert farflow.is_instruction_start(0x10000C) and 0x10000C not in farflow.overlapping


def test_far_jump_after_lgdt_is_followed(farflow):
    assert all(s.reached for s in _by_text(farflow, "sgdt [0x101000]"))
    assert farflow.is_branch_target(0x100023)          # the ljmp's offset


def test_retf_and_iret_to_a_pushed_label_are_followed(farflow):
    assert _by_text(farflow, "sidt [0x101000]")[0].reached      # after push $sel; push $2f; lret
    assert _by_text(farflow, "sldt ax")[0].reached              # after push cs; push $3f; iret
    assert farflow.stats.pushed_returns == 2


def test_far_call_target_and_breakpoint_fall_through(farflow):
    smsw = _by_text(farflow, "smsw ax")
    # the lcall's target is reached; the smsw after `push eax; lret` (no pushed label) is not
    assert sorted((s.address, s.reached) for s in smsw) == [(0x100066, False), (0x10006B, True)]
    assert _by_text(farflow, "str ax")[0].reached               # after the lone int3


def test_code_after_a_multiboot2_header_is_not_reached_through_it(farflow):
    cli = [s for s in _by_text(farflow, "cli") if s.symbol == "mb2_end"]
    assert len(cli) == 1 and not cli[0].reached


# -- window boundaries: a 5-byte window may end exactly at a page, block or section end ----------

BOUNDARIES = """
.text
.globl _start
.type _start, @function
_start:
    call fn_block_ok
    call fn_block_in
    call fn_page_ok
    call fn_page_cross
    call fn_section_end
    ret

.type fn_block_ok, @function
fn_block_ok:
    cli                         # window cli + 4 nops: the RET that ends the block starts at +5
    nop
    nop
    nop
    nop
    ret
.type fn_block_in, @function
fn_block_in:
    sti                         # the RET at +4 is inside the window
    nop
    nop
    nop
    ret

.org 0xffb, 0x90
.type fn_page_ok, @function
fn_page_ok:
    cli                         # 0x100ffb: the window [0x100ffb, 0x101000) ends at the page end
    .byte 0x8d, 0x74, 0x26, 0x00    # lea esi, [esi + 0]: 4 bytes, up to the page end
    ret
.org 0x1ffc, 0x90
.type fn_page_cross, @function
fn_page_cross:
    cli                         # 0x101ffc: [0x101ffc, 0x102001) crosses into the next page
    .byte 0x8d, 0x74, 0x26, 0x00
    ret

.org 0x27f0, 0x90
.type fn_section_end, @function
fn_section_end:
    jmp 1f
.org 0x27fb, 0x90
1:  cli                         # 0x1027fb: the window ends exactly at the end of .text ...
    nop
    nop
    nop
    nop
.section .boundary, "ax"        # ... where this section follows (ld puts it right after .text)
    ret
"""


@pytest.fixture(scope="module")
def boundaries(tmp_path_factory):
    result = scan.scan(elf.load(build_elf(tmp_path_factory.mktemp("bounds"), BOUNDARIES)))
    return {s.symbol: s for s in result.sites}


@pytest.mark.parametrize("symbol, address, patch, reason", [
    ("fn_page_ok", 0x100FFB, Patch.JUMP, ""),
    ("fn_page_cross", 0x101FFC, Patch.INT3, "5-byte window crosses the page boundary at 0x102000"),
    ("fn_block_ok", None, Patch.JUMP, ""),
    ("fn_block_in", None, Patch.INT3, "'ret' at +4 ends a basic block inside the 5-byte window"),
    # A section's last instruction ends its basic block (the descent does not fall into another
    # section), so a window that reaches it holds a block end: INT3, never a JMP over the seam.
    ("fn_section_end+0xb", 0x1027FB, Patch.INT3, "'nop' at +4 ends a basic block inside the 5-byte window"),
])
def test_window_boundaries(boundaries, symbol, address, patch, reason):
    s = boundaries[symbol]
    assert (s.patch, s.reason) == (patch, reason)
    if address is not None:
        assert s.address == address


def test_patch_manager_window_may_end_at_a_page_end():
    """The runtime's patch manager (patchmgr/window.py) draws the same line as the scanner."""
    from capstone import CS_ARCH_X86, CS_MODE_32, Cs

    from patchmgr.block import plan
    from patchmgr.registry import load
    from patchmgr.rule import EmitContext
    from patchmgr.window import NoWindow, choose

    class OneBlock:
        def block_of(self, address: int) -> tuple[int, int] | None:
            return None

        def is_branch_target(self, address: int) -> bool:
            return False

    rules, ctx = load(), EmitContext()
    md = Cs(CS_ARCH_X86, CS_MODE_32)
    md.detail = True
    code = b"\xfa\x8d\x74\x26\x00\xc3"          # cli; lea esi, [esi + 0]; ret
    for start, fits in ((0x100FFB, True), (0x100FFC, False)):
        insns = list(md.disasm(code, start))

        def pick(insns=insns, start=start):  # type: ignore[no-untyped-def]
            return choose(start, insns, OneBlock(), lambda i: plan(i, rules, ctx, lambda c: True),
                          lambda a, b: True)

        if fits:
            window = pick()
            assert (window.start, window.end) == (0x100FFB, 0x101000)
        else:
            with pytest.raises(NoWindow, match="cross a page"):
                pick()
