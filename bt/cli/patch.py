"""`bt patch`: write a statically patched ELF (PATM ahead of time), list the patch rules."""

from __future__ import annotations

import argparse
from collections import Counter
from typing import Any

from bt.cli import ruleopts
from bt.errors import UsageError
from bt.outfile import Outputs


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "patch", help="write a statically patched ELF (PATM)",
        description="Patch every reached sensitive site of a 32-bit kernel ELF ahead of time: a 5-byte "
                    "JMP into a patch block, or a one-byte INT3 where 5 bytes are not safe, or a "
                    "recorded refusal. The patch code goes in a PT_LOAD segment at the VMM's patch "
                    "memory, with a record `bt run` reads back.")
    p.add_argument("kernel", metavar="IN", nargs="?", help="the kernel ELF file")
    p.add_argument("-o", "--output", metavar="OUT",
                   help="the patched ELF to write (a new name or a regular file other than IN)")
    p.add_argument("--list-rules", action="store_true",
                   help="list the patch rules (built-in and plugins) and the classes each gets")
    ruleopts.add(p)
    p.add_argument("-v", "--verbose", action="store_true", help="list every patch and refusal")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    rules = ruleopts.load(args)
    ruleopts.warn("patch", rules)
    if args.list_rules:
        print("\n".join(ruleopts.describe(rules)))
        if args.kernel is None:
            return 0
    if args.kernel is None or args.output is None:
        raise UsageError("bt patch IN.elf -o OUT.elf (or --list-rules)")
    from runtime.staticpatch import patch_kernel

    with Outputs(inputs=[args.kernel]) as outputs:
        out = outputs.document(args.output, "-o")
        output = patch_kernel(args.kernel, rules, args.output)
        out.write_bytes(output.data)
        outputs.commit()
    result = output.result
    kinds = Counter(p.kind for p in result.patches)
    print(f"{args.output}: {result.sites} sites, {kinds['jmp']} patched with a JMP, "
          f"{kinds['int3']} with an INT3, {len(result.refusals)} refused; "
          f"{result.patch_bytes} bytes of patch memory (lookup tables and interior bitmap included)")
    if result.elsewhere:
        print(f"{result.elsewhere} more sites left to run-time patching: not the file's bytes where bt "
              "run loads the kernel (code outside every segment, or not what the scan decoded)")
    if args.verbose:
        for p in result.patches:
            note = f"  ({result.notes[p.site]})" if p.site in result.notes else ""
            print(f"  {p.site:#010x} {p.kind:4s} [{p.start:#x},{p.end:#x}) {p.op.text}{note}")
        for r in result.refusals:
            print(f"  {r.site:#010x} refused {r.op.text}: {r.reason}")
    return 0
