"""From a manifest to cells: every (kernel, configuration, repeat) and the run it needs.

Planning reads every kernel and input file once, on the machine that runs `bt
campaign`: a corrupt ELF or a missing file stops the campaign before any cell runs
(exit 2). Each slot of the report (kernel x configuration x repeat) names a cell key;
slots that make the same run (the same kernel content twice in a manifest) share it,
and it runs once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from runtime.campaign import identity
from runtime.campaign.cell import CellSpec, InputRef
from runtime.campaign.identity import Blob
from runtime.campaign.manifest import FILE_INPUTS, KernelSpec, Manifest
from runtime.campaign.matrix import Config
from runtime.report.kernel import KernelInfo, load_kernel


@dataclass(frozen=True)
class PlannedKernel:
    spec: KernelSpec
    info: KernelInfo
    blob: Blob
    inputs: tuple[Blob, ...]
    expect: tuple[str, bytes] | None  # (path, bytes) of its known-good output

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass(frozen=True)
class Slot:
    kernel: str
    config: Config
    repeat: int
    key: str


@dataclass(frozen=True)
class Plan:
    manifest: Manifest
    build: Mapping[str, str]
    kernels: tuple[PlannedKernel, ...]
    configs: tuple[Config, ...]
    slots: tuple[Slot, ...]  # in the order cells are run: repeat, then kernel, then configuration
    cells: Mapping[str, CellSpec]  # by key, each once

    def kernel(self, name: str) -> PlannedKernel:
        return next(k for k in self.kernels if k.name == name)

    @cached_property
    def _first_slot(self) -> Mapping[str, Slot]:
        first: dict[str, Slot] = {}
        for s in self.slots:
            first.setdefault(s.key, s)
        return first

    def owner(self, key: str) -> PlannedKernel:
        """A kernel whose bytes (and inputs) the cell `key` runs."""
        return self.kernel(self._first_slot[key].kernel)

    def describe(self, key: str) -> str:
        """"hello dynamic hot=4 #2": the cell as the progress display names it."""
        s = self._first_slot[key]
        more = f" #{s.repeat + 1}" if self.manifest.matrix.repeats > 1 else ""
        return f"{s.kernel} {self.label(s.config)}{more}"

    def config_id(self, config: Config) -> str:
        return f"c{self.configs.index(config) + 1}"

    def label(self, config: Config) -> str:
        return config.label(self.manifest.matrix.varying)


def _planned(spec: KernelSpec) -> PlannedKernel:
    info = load_kernel(spec.path)  # ElfError (exit 2) for a file that is no kernel
    expect = (str(spec.expect), Blob.read(spec.expect).data) if spec.expect else None
    inputs = tuple(Blob.read(path) for _, path in spec.inputs)
    return PlannedKernel(spec, info, Blob.read(Path(spec.path)), inputs, expect)


def make_plan(manifest: Manifest) -> Plan:
    build = identity.build()
    kernels = tuple(_planned(k) for k in manifest.kernels)
    configs = manifest.matrix.configs()
    slots: list[Slot] = []
    cells: dict[str, CellSpec] = {}
    for repeat in range(manifest.matrix.repeats):
        for k in kernels:
            refs = tuple(InputRef(option, blob.name, blob.sha256, FILE_INPUTS[option].many)
                         for (option, _), blob in zip(k.spec.inputs, k.inputs, strict=True))
            for config in configs:
                mode, options = config.run()
                # The guest sees the kernel's file name, wherever the worker keeps the file.
                options = {**options, **k.spec.run, "image_name": k.blob.name}
                key = identity.cell_key(kernel_sha256=k.blob.sha256, mode=mode, options=options,
                                        repeat=repeat, build=build,
                                        inputs={f"{r.option}[{i}]": r.sha256 for i, r in enumerate(refs)})
                slots.append(Slot(k.name, config, repeat, key))
                cells.setdefault(key, CellSpec(key, k.blob.name, k.blob.sha256, mode, options, repeat,
                                               build, refs))
    return Plan(manifest, build, kernels, configs, tuple(slots), cells)
