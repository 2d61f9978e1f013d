"""`bt audit` (runtime/audit): each fact checked against an independent observation.

* Host values: zoo prints what SGDT, SIDT, SLDT, STR, SMSW, MOV r,CS and PUSH CS give it.
  Run unpatched, it prints the leaked values; the audit's "ring 1 unpatched" column must
  say the same. Run patched, it prints what QEMU prints (samples/zoo/expected.serial); the
  audit's "ring 1 patched" and "guest set" columns must say that.
* Reachability: every mapping the audit found by walking the tables is checked with the
  runtime's own page walker (runtime/paging.py `Mmu.translate`, written apart from it).
* Guard events: a guest that stores into three VMM pages: the audit reports the three.
* Side effects: the probes run in a scratch engine; the run's memory and registers are
  unchanged after `take`.
* Ring 3 (`--guest-ring 3`): zoo run at CPL 3 prints what the audit's "ring 3 kernel" column
  says; on usermode, every mapping's protection in each view is what the CPU did at CPL 3, and
  guest user code reads guest kernel pages under flat only.
* The attack guests (samples/attacks): the stores the guest says did not stick are the
  audit's dropped stores; its descriptor table writes are counted.
* Golden text for hello, usermode, higherhalf (the VMM area moves), two attack guests and
  hello under ring 3; RING1_UPDATE_GOLDEN=1 rewrites them. The RDTSC/RDTSCP rows read the
  host's TSC and are masked.
"""

from __future__ import annotations

import io
import json
import os
import re
import struct
from pathlib import Path

import pytest
import runtime_guest as guest
from test_runtime_stops import tiny_elf
from test_vmm_guard import CODE_TARGET, PT_TARGET, STATE_TARGET, STORES
from unicorn import x86_const as ux

from bt import isa, layout
from bt.cli import main
from patchmgr.manager import PatchConfig
from runtime.audit import NOT_MEASURED, RING1_ELSEWHERE, cpu_disagrees, reference, take
from runtime.audit.probe import NOT_PROBED, PROBES
from runtime.audit.reach import VIA_GUEST, VIA_NO_PAGING, VIA_SLOT
from runtime.bench import LOAD, assemble
from runtime.config import RunConfig
from runtime.paging import PageFault
from runtime.vm import RawImage, Vm

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden" / "audit"
UPDATE = os.environ.get("RING1_UPDATE_GOLDEN") == "1"
ZOO = ROOT / "samples" / "zoo" / "zoo.elf"


def _audit(tmp_path: Path, kernel: Path, *extra: str) -> tuple[dict, str]:
    serial, report = tmp_path / "serial.out", tmp_path / "audit.json"
    assert main(["audit", str(kernel), "--serial", str(serial), "--json", str(report), *extra]) == 0
    return json.loads(report.read_text()), serial.read_text()


def _printed(serial: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in serial.splitlines() if ": " in line)


def _probe(doc: dict, label: str, column: str) -> str:
    row = next(r for r in doc["leaks"] if r["probe"] == label)
    return row[column]["value"] if column.startswith("ring") else row[column]


def _expected_values(p: dict[str, str]) -> dict[str, str]:
    """What zoo printed, in the audit's words."""
    return {
        "SGDT: GDTR": f"base {p['sgdt.base']} limit {int(p['sgdt.limit'], 16):#x}",
        "SIDT: IDTR": f"base {p['sidt.base']} limit {int(p['sidt.limit'], 16):#x}",
        "SLDT: LDTR": p["sldt"],
        "STR: TR": p["str"],
        "SMSW: CR0 bits 0-15": p["smsw"],
    }


def test_unpatched_values_are_what_the_guest_reads(tmp_path):
    doc, serial = _audit(tmp_path, ZOO, "--no-patch")
    printed = _printed(serial)
    assert printed["sgdt matches lgdt"] == "no", "zoo unpatched must see the leak"
    for label, value in _expected_values(printed).items():
        assert _probe(doc, label, "ring1_unpatched") == value, label
    assert int(_probe(doc, "MOV r,CS: selector", "ring1_unpatched"), 16) & 3 == int(printed["cs.rpl"])
    assert int(_probe(doc, "PUSH CS: selector", "ring1_unpatched"), 16) & 3 == int(printed["push cs rpl"])
    assert int(_probe(doc, "PUSH SS: selector", "ring1_unpatched"), 16) & 3 == int(printed["push ss rpl"])


def test_patched_values_are_what_qemu_prints(tmp_path):
    doc, serial = _audit(tmp_path, ZOO)
    assert serial == (ROOT / "samples" / "zoo" / "expected.serial").read_text()
    printed = _printed(serial)
    for label, value in _expected_values(printed).items():
        assert _probe(doc, label, "ring1_patched") == value, label
        assert _probe(doc, label, "guest_set") == value, label
    assert int(_probe(doc, "MOV r,CS: selector", "ring1_patched"), 16) & 3 == int(printed["cs.rpl"]) == 0
    rows = {r["probe"]: r for r in doc["leaks"]}
    assert rows["SGDT: GDTR"]["leaks_unpatched"] and not rows["SGDT: GDTR"]["leaks_patched"]
    assert all(r["ring3_kernel"] == NOT_MEASURED for r in doc["leaks"])
    assert doc["point"]["guest_ring"] == 1 and doc["point"]["ring3_view"] is None


def test_ring3_values_are_what_zoo_prints_at_cpl_3(tmp_path):
    # Under --guest-ring 3 zoo runs at real CPL 3 and prints what the CPU gives it there; the
    # audit's probes, run at CPL 3 from the end of that run, must say the same.
    doc, serial = _audit(tmp_path, ZOO, "--guest-ring", "3")
    printed = _printed(serial)
    assert doc["point"]["guest_ring"] == 3 and doc["point"]["guest_cpl"] == 0 and doc["point"]["cpl"] == 3
    assert printed["sgdt matches lgdt"] == "no"
    for label, value in _expected_values(printed).items():
        assert _probe(doc, label, "ring3_kernel") == value, label
    assert int(_probe(doc, "MOV r,CS: selector", "ring3_kernel"), 16) & 3 == int(printed["cs.rpl"]) == 3
    assert int(_probe(doc, "PUSH CS: selector", "ring3_kernel"), 16) & 3 == int(printed["push cs rpl"])
    assert int(_probe(doc, "PUSH SS: selector", "ring3_kernel"), 16) & 3 == int(printed["push ss rpl"])
    rows = {r["probe"]: r for r in doc["leaks"]}
    assert rows["SGDT: GDTR"]["leaks_unpatched"] and rows["SGDT: GDTR"]["leaks_patched"] is None
    assert all(r["ring1_unpatched"] == r["ring1_patched"] == RING1_ELSEWHERE for r in doc["leaks"])
    assert doc["vmm_area"]["ring1"] == RING1_ELSEWHERE


@pytest.mark.parametrize("view", ["split", "flat"])
def test_ring3_reach_of_the_guest_kernel_and_guest_user_code(tmp_path, view):
    # usermode under --guest-ring 3: the guest kernel at CPL 3 reaches the VMM's user page only,
    # and writes none; guest user code reads guest kernel pages under flat only. Each mapping's
    # protection is what a load and a store by the CPU at CPL 3 did, in each view.
    doc, _ = _audit(
        tmp_path, ROOT / "samples" / "usermode" / "usermode.elf", "--guest-ring", "3", "--ring3", view
    )
    assert doc["point"]["ring3_view"] == view
    maps = doc["vmm_area"]["mappings"]
    assert maps and all("ring1" not in m for m in maps)
    assert {m["region"] for m in maps if m["ring3_kernel"]["read"]} == {"user page"}
    assert {m["region"] for m in maps if m["ring3_user"]["read"]} == {"user page"}
    assert not any(m["ring3_kernel"]["write"] != "no" or m["ring3_user"]["write"] != "no" for m in maps)
    for m in maps:
        loads = ("ok" if m["ring3_kernel"]["read"] else "#PF", "ok" if m["ring3_user"]["read"] else "#PF")
        assert (m["cpu"]["ring1_load"], m["cpu"]["ring3_user_load"]) == loads, m["region"]
        assert m["cpu"]["ring1_store"] == m["cpu"]["ring3_user_store"] == "#PF", m["region"]
    exposed = doc["vmm_area"]["user_reads_kernel_pages"]
    assert exposed == 0 if view == "split" else exposed > 0
    assert any("the CPU agrees" in line for line in doc["verdict"])


def test_every_leaking_row_of_the_table_is_probed_or_explained():
    wanted = {
        c.name
        for c in isa.CLASSES
        if c.category is isa.Category.SENSITIVE and c.at_cpl1 in (isa.AtCpl1.LEAKS, isa.AtCpl1.DIFFERS)
    }
    probed = {p.cls for p in PROBES}
    assert wanted <= probed | set(NOT_PROBED)
    assert probed | set(NOT_PROBED) <= set(isa.NAMES)
    assert probed <= set(reference.LEAKS)


def _run(kernel: Path) -> Vm:
    vm = Vm(RunConfig(kernel=kernel, serial=io.BytesIO(), patch=PatchConfig()))
    vm.run()
    return vm


def test_reach_agrees_with_the_page_walker():
    vm = _run(ROOT / "samples" / "higherhalf" / "higherhalf.elf")
    audit = take(vm, "end")
    assert audit.vmm_base != 0xFFC00000, "higherhalf maps the top slot: the VMM area moved"
    assert {m.via for m in audit.mappings} == {VIA_SLOT, "guest mapping, not yet used"}
    for m in audit.mappings:
        for linear in (m.linear, m.linear + m.size - 4096):
            assert vm.mmu.translate(linear) == m.physical + (linear - m.linear)
            if m.ring3.read:
                vm.mmu.translate(linear, user=True)
            else:
                with pytest.raises(PageFault):
                    vm.mmu.translate(linear, user=True)
    slot = [m for m in audit.mappings if m.via == VIA_SLOT]
    assert sum(m.size for m in slot) == 4 << 20 and slot[0].linear == audit.vmm_base
    writable = {m.region for m in audit.mappings if m.ring1.write == "yes"}
    assert writable == {"patch state"}
    assert {m.region for m in audit.mappings if m.ring3.read} == {"user page"}


def test_guard_events_of_the_run():
    vm = Vm(
        RunConfig(kernel=Path("<guard>"), serial=io.BytesIO()),
        image=RawImage(((LOAD, assemble(STORES)),), LOAD),
    )
    vm.run()
    audit = take(vm, "end")
    g = audit.to_dict()["guard"]
    assert g["dropped_stores"] == 3
    assert [int(w["address"], 16) for w in g["first_writers"]] == [STATE_TARGET, CODE_TARGET, PT_TARGET]
    # Guest paging is off; the CPU's may be on (an identity shadow) or off: what it walks counts.
    assert audit.guest_paging is False
    assert {m.via for m in audit.mappings} == ({VIA_SLOT} if audit.paging else {VIA_NO_PAGING})
    assert "3 in this run" in " ".join(audit.verdict)


_REGS = [
    getattr(ux, f"UC_X86_REG_{n}")
    for n in "EAX EBX ECX EDX ESI EDI ESP EBP EIP EFLAGS CS SS DS ES FS GS CR0 CR3 CR4 GDTR IDTR TR".split()
]


def test_a_guest_pte_naming_a_vmm_page_is_found_and_its_store_counted():
    # The guest's own page table maps linear 0x400000 onto the state block's protected page
    # (as in test_vmm_guard) and stores there: the audit finds the alias by walking the tables
    # the CPU walks, readable and executable from ring 1 with writes dropped, user-readable
    # because the guest's entries say U, and the guard's count has the store.
    pd, pt, pt2 = 0x30000, 0x31000, 0x32000
    table = bytearray(4096)
    for i in range(1024):
        struct.pack_into("<I", table, i * 4, (i << 12) | 0x3)
    chunks = (
        (pd, struct.pack("<II", pt | 0x3, pt2 | 0x7)),
        (pt, bytes(table)),
        (pt2, struct.pack("<I", layout.STATE_BASE | 0x7)),
    )
    src = (
        f"mov eax, {pd:#x}\nmov cr3, eax\nmov eax, cr0\nor eax, 0x80000000\nmov cr0, eax\n"
        "mov dword ptr [0x400000], 0x45454545\n" + guest.exit_with(0)
    )
    vm, result = guest.run(guest.kernel(src, chunks=chunks))
    assert not isinstance(result, Exception)
    audit = take(vm, "end")
    alias = [m for m in audit.mappings if m.via == VIA_GUEST]
    assert [(m.region, m.linear, m.physical, m.size) for m in alias] == [
        ("state", 0x400000, layout.STATE_BASE, 4096)
    ]
    assert alias[0].ring1.text() == "r-x, writes dropped"
    assert alias[0].ring3.text() == "r-x, writes dropped"
    assert audit.guard["dropped_stores"] == 1
    assert audit.guard["first_writers"][0]["address"] == f"{layout.STATE_BASE:#010x}"


@pytest.mark.parametrize("name", ["usermode", "higherhalf"])
def test_the_cpu_does_what_the_tables_say_from_ring_1_and_ring_3(name):
    # A load and a store at CPL 1 and (usermode has ring-3 segments) at CPL 3, each run by the
    # CPU in the scratch engine, against the protection read from the tables.
    audit = take(_run(ROOT / "samples" / name / f"{name}.elf"), "end")
    assert audit.cpu and cpu_disagrees(audit) == []
    ran = {m.linear: not audit.cpu[m.linear]["ring3_user_load"].startswith("not run") for m in audit.mappings}
    assert all(ran.values()) if name == "usermode" else not any(ran.values())
    # ... and the check catches a disagreement.
    audit.cpu[audit.mappings[0].linear]["ring1_store"] = "made"
    assert cpu_disagrees(audit) == [f"gdt at {audit.mappings[0].linear:#010x} from ring1: ok/made"]


def test_probes_leave_the_run_untouched():
    vm = _run(ROOT / "samples" / "usermode" / "usermode.elf")
    ram, vmm = bytes(vm.machine.ram), bytes(vm.machine.vmm_memory)
    regs = [vm.machine.uc.reg_read(r) for r in _REGS]
    take(vm, "end")
    assert bytes(vm.machine.ram) == ram and bytes(vm.machine.vmm_memory) == vmm
    assert [vm.machine.uc.reg_read(r) for r in _REGS] == regs


def test_at_insns_and_bad_input(tmp_path, capsys):
    doc, _ = _audit(tmp_path, ROOT / "samples" / "hello" / "hello.elf", "--at-insns", "50")
    assert doc["point"]["ended"] == "after --at-insns 50" and doc["point"]["guest_insns"] == 50
    assert doc["schema"] == "ring1.audit/1"
    assert main(["audit", str(ZOO), "--at-insns", "0"]) == 2
    assert main(["audit", str(tmp_path / "missing.elf")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_an_audit_point_in_guest_user_mode_says_the_probes_were_not_run(tmp_path):
    # minios runs its shell in ring 3; after 1,000,000 instructions the CPU is at CPL 3 (its
    # shell at 0x4000055d; the whole run is 1,215,635 instructions since the clock counts a
    # slice's instructions so far, issue 15).
    minios = ROOT / "samples" / "minios"
    doc, _ = _audit(
        tmp_path,
        minios / "minios.elf",
        "--disk",
        str(minios / "disk.img"),
        "--keys",
        str(minios / "keys.txt"),
        "--module",
        f"{minios / 'sh.bin'},motd=motd",
        "--at-insns",
        "1000000",
    )
    assert doc["point"]["cpl"] == 3
    assert all(r["ring1_unpatched"] is None and r["ring1_patched"] is None for r in doc["leaks"])
    assert "CPL 3" in doc["leaks"][0]["not_measured_because"]
    assert any("learn: not measured" in line for line in doc["verdict"])
    assert doc["vmm_area"]["paging"] and doc["vmm_area"]["mappings"]


def test_a_guest_that_stops_is_audited_where_it_stopped(tmp_path, capsys):
    # CLI; HLT with interrupts off: a stop (exit 4) with its one-line diagnosis, then the audit
    # of that point on stdout and in the JSON.
    elf = tiny_elf(assemble("cli\nhlt\n"), tmp_path / "halt.elf")
    report = tmp_path / "audit.json"
    assert main(["audit", str(elf), "--json", str(report)]) == 4
    captured = capsys.readouterr()
    assert "guest halted with interrupts disabled" in captured.err
    assert "4. Verdict:" in captured.out
    doc = json.loads(report.read_text())
    assert doc["point"]["ended"].startswith("the guest stopped: ")
    assert doc["leaks"][0]["ring1_unpatched"]["value"] == "IF 1 IOPL 0"  # PUSHF: the real IF
    assert doc["leaks"][0]["guest_set"] == "IF 0 IOPL 0"


ATTACKS = ROOT / "samples" / "attacks" / "attacks.elf"


def test_the_attack_guests_stores_into_vmm_pages_are_the_dropped_ones(tmp_path):
    # samples/attacks test=pde writes a word into eight VMM physical pages through its own page
    # table and reads each back: the ones it says did not stick are the audit's dropped stores,
    # the one that stuck is the page the audit says ring 1 writes.
    doc, serial = _audit(tmp_path, ATTACKS, "--cmdline", "test=pde")
    said = re.findall(r"physical (0x[0-9a-f]+): the write (did not stick|stuck)", serial)
    assert len(said) == 8
    dropped = {int(a, 16) for a, how in said if how == "did not stick"}
    stuck = {int(a, 16) for a, how in said if how == "stuck"}
    g = doc["guard"]
    assert g["dropped_stores"] == len(dropped) == 7
    assert {int(w["address"], 16) for w in g["first_writers"]} == dropped
    assert [layout.region_at(a) for a in stuck] == ["patch state"]
    writable = {m["region"] for m in doc["vmm_area"]["mappings"] if m["ring1"]["write"] == "yes"}
    assert writable == {"patch state"}
    assert len(g["vmm_moves"]) == 3


def test_the_attack_guests_descriptor_table_writes_are_counted(tmp_path):
    doc, serial = _audit(tmp_path, ATTACKS, "--cmdline", "test=selectors")
    assert doc["guard"]["table_writes"] > 0 and "rewritten" in serial


def _keys(value: object, out: set[str]) -> set[str]:
    if isinstance(value, dict):
        for k, v in value.items():
            out.add(k)
            _keys(v, out)
    elif isinstance(value, list):
        for v in value:
            _keys(v, out)
    return out


@pytest.mark.parametrize("ring", ["1", "3"])
def test_the_json_document_is_documented(tmp_path, ring):
    doc, _ = _audit(tmp_path, ROOT / "samples" / "higherhalf" / "higherhalf.elf", "--guest-ring", ring)
    text = (ROOT / "docs" / "audit-json.md").read_text()
    # Every key of the document is named in the schema doc (reference keys are prose there).
    missing = {k for k in _keys(doc, set()) if f"`{k}`" not in text and f'"{k}"' not in text}
    assert not missing, f"docs/audit-json.md does not describe {sorted(missing)}"


def test_rich_rendering_on_a_terminal():
    from rich.console import Console

    from runtime.audit.text import render_rich

    console = Console(file=io.StringIO(), width=200, color_system=None)
    render_rich(take(_run(ROOT / "samples" / "usermode" / "usermode.elf"), "end"), console)
    out = console.file.getvalue()
    assert "base 0xffc00000 limit 0x37 LEAK" in out and "4. Verdict:" in out


_TSC = re.compile(r"^  RDTSCP?: .*$", re.M)


GOLDENS = {
    "hello": ["samples/hello/hello.elf"],
    "usermode": ["samples/usermode/usermode.elf"],
    "higherhalf": ["samples/higherhalf/higherhalf.elf"],
    "attacks-pde": ["samples/attacks/attacks.elf", "--cmdline", "test=pde"],
    "attacks-user_patch_paged": ["samples/attacks/attacks.elf", "--cmdline", "test=user_patch_paged"],
    "hello-ring3": ["samples/hello/hello.elf", "--guest-ring", "3"],
}


@pytest.mark.parametrize("name", sorted(GOLDENS))
def test_golden(monkeypatch, capsys, name):
    monkeypatch.chdir(ROOT)  # paths in the output stay relative
    assert main(["audit", *GOLDENS[name]]) == 0
    out = _TSC.sub("  RDTSC: (host TSC, masked)", capsys.readouterr().out)
    golden = GOLDEN / f"{name}.txt"
    if UPDATE:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(out)
        return
    assert out == golden.read_text(), f"bt audit differs from {golden} (RING1_UPDATE_GOLDEN=1)"
