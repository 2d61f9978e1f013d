"""The one place the report reads the VMM and the patch manager.

`run_once` runs a kernel in one mode (in a worker process) and turns what the run
measured into a `RunRecord`: the VMM's `RunStats.to_dict()`, the guest's serial
output and exit status, and the patch manager's patch table. When the runtime's
statistics change, this module changes, and the model and renderers do not.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from runtime.report.record import BASELINE, DYNAMIC, STATIC, Patch, RunRecord, Site, Timing

if TYPE_CHECKING:
    from patchmgr.manager import PatchManager
    from runtime.vm import Vm


def unavailable(static: bool) -> str | None:
    """Why a comparison cannot run here (None: it can). Asked before any run starts, so
    that `bt compare` says so in one line instead of reporting a comparison it did not make."""
    if importlib.util.find_spec("runtime.vm") is None:
        return "the VMM's run loop (runtime/vm.py) is not built yet"
    from runtime import patching
    from runtime.config import RunConfig

    # Without a patch manager in the run loop a "patched" run would be a second
    # unpatched run, and comparing the two would pretend.
    if "patch" not in RunConfig.__dataclass_fields__ or not hasattr(patching, "attach"):
        return "patching is unavailable: the run loop has no patch manager yet"
    if static and importlib.util.find_spec("patchmgr.static") is None:
        return "static patching is unavailable: `bt patch` is not built yet"
    return None


def instruction_texts(kernel: str, addresses: Iterable[int],
                      memory: Callable[[int], bytes | None] | None = None,
                      classes: Mapping[int, str] | None = None) -> dict[int, str]:
    """The instruction at each address: as guest memory held it when the run ended
    (`memory`, patches taken out), if it is still the class that exited there (Linux
    rewrites its code at boot: the file's NOP at delay_tsc+0x5c runs as RDTSC); else as the
    kernel file holds it ("" outside its segments: code the guest copied or generated)."""
    import capstone

    from bt import elf, isa

    image = elf.load(kernel)
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32 if image.bits == 32 else capstone.CS_MODE_64)
    md.detail = True
    out: dict[int, str] = {}
    for address in addresses:
        code = memory(address) if memory is not None else None
        insn = next(md.disasm(code, address, count=1), None) if code else None
        cls = isa.classify(insn) if insn is not None else None
        if insn is not None and classes is not None and cls is not None and cls.name == classes.get(address):
            out[address] = f"{insn.mnemonic} {insn.op_str}".strip()
            continue
        for seg in image.segments:
            if seg.vaddr <= address < seg.vaddr + seg.filesz:
                code = seg.data[address - seg.vaddr:address - seg.vaddr + 16]
                insn = next(md.disasm(code, address, count=1), None)
                if insn is not None:
                    out[address] = f"{insn.mnemonic} {insn.op_str}".strip()
                break
    return out


def _guest_bytes(vm: Vm, manager: PatchManager | None) -> Callable[[int], bytes | None]:
    """Guest code at a linear address at the end of the run, patches taken out; None where
    it is not mapped any more."""
    from runtime.cpu import UnmappedPhys
    from runtime.paging import PageFault

    def read(address: int) -> bytes | None:
        try:
            return manager.original(address, 16) if manager is not None else vm.mmu.read(address, 16)
        except (PageFault, UnmappedPhys):       # not mapped (any more): the file's bytes will do
            return None
    return read


def patch_table(manager: PatchManager) -> tuple[Patch, ...]:
    """The patch manager's patches and refusals at the end of a run, as report rows.

    Patches taken out again (the guest wrote into them) are gone from the manager by
    then; the manager's SMC counters say how many, and the run's exits show their cost."""
    rows = []
    unscanned = {u.site: u for u in manager.unscanned_sites()}
    for p in manager.patches.values():
        rule = manager.rules.rule_for(p.op)
        reason = manager.notes.get(p.site, "") if p.kind == "int3" else ""
        if p.site in unscanned:
            reason = "; ".join(r for r in (unscanned[p.site].reason, reason) if r)
        rows.append(Patch(address=p.site, rule=rule.name if rule else "-", kind=p.kind, size=p.end - p.start,
                          status="active", reason=reason, text=p.op.text, start=p.start))
    for r in manager.refusals.values():
        rule = manager.rules.rule_for(r.op) if r.op.cls else None
        rows.append(Patch(address=r.site, rule=rule.name if rule else "-", kind="-", size=0,
                          status="refused", reason=r.reason, text=r.op.text))
    # Sites the guest ran but the scan never reached, that no patch covers: say so, or the
    # report would be silent about why they kept trapping.
    for u in unscanned.values():
        if u.status == "unpatched":
            rows.append(Patch(address=u.site, rule="-", kind="-", size=0, status="unpatched",
                              reason=u.reason, text=u.text))
    return tuple(sorted(rows, key=lambda row: row.address))


def _site(s: Mapping[str, Any], text_at: Mapping[int, str]) -> Site:
    address = s["address"]
    text = text_at.get(address, "")
    if not s.get("class"):
        # The runtime counts an interrupt or exception it delivers at the guest EIP it
        # returns to: the instruction there did not cause the exit, so the row says so.
        return Site(address, "", f"(interrupt delivered) {text}".rstrip(), "interrupt", s["count"])
    return Site(address, s["class"], text, "", s["count"])


def record_from_stats(mode: str, stats: Mapping[str, Any], *, serial: bytes, exit_status: int | None,
                      stop_reason: str, patches: Iterable[Patch], options: Mapping[str, Any],
                      text_at: Mapping[int, str]) -> RunRecord:
    """A `RunRecord` from `RunStats.to_dict()` and what the run loop returned.

    `text_at` gives the disassembly of each site (the statistics only name its class)."""
    sites = tuple(_site(s, text_at) for s in stats["by_site"])
    # The runtime counts instructions per completed time slice; a run that ends inside its
    # first slice reports 0, which is not a measurement of how much the guest ran.
    insns = stats.get("guest_insns") or None
    wall_ns = stats["wall_ns"]
    vmm_ns = stats.get("vmm_ns")
    return RunRecord(
        mode=mode,
        exit_status=exit_status,
        stop_reason=stop_reason,
        serial=serial,
        exits_by_kind={k: n for k, n in stats["exits"].items() if n},
        exits_by_class=dict(stats["by_class"]),
        sites=sites,
        patches=tuple(patches),
        guest_instructions=insns,
        # Guest time is the run's wall time outside the VMM's exit handlers.
        timing=Timing(wall=wall_ns / 1e9,
                      guest=(wall_ns - vmm_ns) / 1e9 if vmm_ns is not None else None,
                      vmm=vmm_ns / 1e9 if vmm_ns is not None else None),
        options=dict(options),
    )


def platform_fields(options: Mapping[str, Any]) -> dict[str, Any]:
    """RunConfig fields of the PC platform options (`--ram`, `--module`, `--disk`, `--keys`,
    `--key-delay`, as `bt compare` forwards them; already checked by bt/cli/devices.py)."""
    from pathlib import Path

    from runtime.boot import BootModule

    fields: dict[str, Any] = {}
    if options.get("ram"):
        fields["ram_size"] = int(options["ram"]) << 20
    if options.get("module"):
        fields["modules"] = tuple(BootModule.parse(m) for m in options["module"])
    if options.get("disk"):
        fields["disks"] = tuple(Path(d) for d in options["disk"])
    if options.get("keys"):
        fields["keys"] = Path(options["keys"]).read_text(encoding="utf-8")
    if options.get("key_delay") is not None:
        fields["key_delay_ns"] = int(float(options["key_delay"]) * 1_000_000)
    if options.get("initrd"):
        fields["initrd"] = Path(options["initrd"])
    return fields


def run_once(kernel: str, mode: str, options: Mapping[str, Any], kind: str | None = None) -> RunRecord:
    """Run `kernel` in `mode` with the run `options` (`cmdline`, `max_insns`, `timeout`, `hot`,
    `eager`, `disable_rule`, `disable_class`, `image_name`: the kernel's name on its command
    line, default `kernel`, and the platform's: `platform_fields`), in this process. A guest
    that stops abnormally is a result (its reason is compared like an exit status), not an
    error.
    `kind` says how a run named otherwise (a `--variant`) patches: one of the three modes.

    unpatched: trap-and-emulate only, no patch manager at all; with `baseline` "leaks"
               (`bt compare --baseline leaks`), the never-faulting leaks patched and every
               instruction that faults trapping (`bt run --leaks-only`);
    dynamic:   the patch manager patches sites as they trap (`bt run --hot N`);
    static:    the kernel patched by `bt patch` first, run with dynamic patching off,
               so every patch in it was made ahead of time."""
    import io
    import tempfile
    from pathlib import Path

    from bt.errors import GuestStop, UsageError
    from runtime.config import RunConfig
    from runtime.vm import Vm

    kind = kind or mode
    if kind not in (BASELINE, DYNAMIC, STATIC):
        raise ValueError(f"unknown mode {mode!r}")
    reason = unavailable(static=kind == STATIC)
    if reason:
        raise UsageError(f"cannot compare: {reason}")
    from patchmgr.manager import PatchConfig

    with tempfile.TemporaryDirectory(prefix="ring1-compare-") as tmp:
        path = Path(kernel)
        patch: PatchConfig | None = None
        rules = tuple(options.get("disable_rule") or ()), tuple(options.get("disable_class") or ())
        if kind == DYNAMIC:
            patch = PatchConfig(hot=options.get("hot") or 1, eager=bool(options.get("eager")),
                                disabled_rules=rules[0], disabled_classes=rules[1])
        elif kind == BASELINE and options.get("baseline") == "leaks":
            from bt import isa

            patch = PatchConfig(disabled_rules=rules[0],
                                disabled_classes=tuple(dict.fromkeys([*rules[1], *isa.EXITING])))
        elif kind == STATIC:
            from patchmgr import registry
            from runtime.staticpatch import patch_file

            path = Path(tmp) / path.name
            patch_file(kernel, path, registry.load(rules[0], disabled_classes=rules[1]))
            patch = PatchConfig(enabled=False)
        serial = io.BytesIO()
        # The guest sees its image name on its command line: the static run's copy keeps the
        # name the other runs show, so every run parses the same command line.
        config = RunConfig(kernel=path, cmdline=options.get("cmdline") or "",
                           max_insns=options.get("max_insns"), timeout=options.get("timeout"),
                           serial=serial, patch=patch, image_name=options.get("image_name") or kernel,
                           **platform_fields(options))
        vm = Vm(config)
        stop_reason = ""
        exit_status: int | None = None
        try:
            exit_status = vm.run().exit_status
        except GuestStop as stop:
            stop_reason = str(stop)
    manager = getattr(vm, "patches", None)
    if kind != BASELINE and manager is None:
        from bt.errors import InternalError

        raise InternalError(f"the {mode} run of {kernel} ran without a patch manager")
    stats = vm.stats.to_dict()
    texts = instruction_texts(kernel, (s["address"] for s in stats["by_site"]), _guest_bytes(vm, manager),
                              {s["address"]: s["class"] for s in stats["by_site"]})
    return record_from_stats(mode, stats, serial=serial.getvalue(), exit_status=exit_status,
                             stop_reason=stop_reason, patches=patch_table(manager) if manager else (),
                             options=options, text_at=texts)
