"""The one table of x86 instructions that matter for virtualization.

Every row says what an instruction class does when a guest kernel runs it at
CPL 1 with IOPL 0 on real hardware (Intel SDM vol. 2 and vol. 3 ch. 5-6; Robin &
Irvine, "Analysis of the Intel Pentium's ability to support a secure virtual
machine monitor", USENIX Security 2000), what Unicorn 2.1.4 does instead (measured
by ../shared/tools/ring1_probe.py, summarised in shared/notes/unicorn-ring1.md), and
how ring1 handles it (trap-and-emulate, or which patch-rule family, after
VirtualBox's PATM). The scanner, the runtime's trap handler, the patch manager and
the reports all read this table; none keeps a list of its own.

`classify(insn)` maps a Capstone instruction (decoded with `detail = True`) to its
row by instruction id, with a small operand check for the few ids that are only
sensitive with some operands (MOV with a control/debug/segment register, PUSH/POP
of CS/SS, the far forms of indirect JMP/CALL). It is O(1): one dict look-up and at
most a look at two operands, because it sits on the runtime's trap path.

Rows are never removed: an instruction ring1 does not handle is still listed with
`Handling.NONE` and the reason, so the table doubles as a coverage map (as
angr/cle's relocation tables do).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType
from typing import TYPE_CHECKING

from capstone import x86_const as _x

from bt.errors import UsageError
from bt.operation import Operation, from_capstone

if TYPE_CHECKING:
    from capstone import CsInsn


class Category(str, Enum):
    """Why an instruction matters to a VMM (Popek & Goldberg / Robin & Irvine)."""

    PRIVILEGED = "privileged"          # #GP (or #UD) whenever CPL > 0
    IOPL_SENSITIVE = "iopl-sensitive"  # #GP when CPL > IOPL (CLI STI IN OUT INS OUTS)
    SENSITIVE = "sensitive"            # no fault, but reads or changes state the VMM owns
    OTHER = "other"                    # control transfers the VMM must see (INT n, SYSENTER...)


class AtCpl1(str, Enum):
    """What real hardware does when the guest kernel runs it at CPL 1, IOPL 0."""

    FAULTS = "faults #GP"
    FAULTS_UD = "faults #UD"
    LEAKS = "leaks host state"
    DIFFERS = "silently differs"
    DEPENDS = "faults or not depending on operands"
    SOFT_INT = "software interrupt through the IDT"
    NORMAL = "runs normally"


class Unicorn(str, Enum):
    """What Unicorn 2.1.4's CPU model does at CPL 1, IOPL 0 (ring1_probe.py verdicts)."""

    GP = "#GP"                          # vector 13 at the instruction, like hardware
    SILENT = "silent"                   # runs without an exception
    IO_HOOK = "I/O hook"                # never faults; calls the UC_HOOK_INSN IN/OUT hooks
    SOFT_INT = "software interrupt"     # UC_HOOK_INTR gets the vector
    INVALID = "invalid"                 # UC_ERR_INSN_INVALID: emulation stops
    DEPENDS = "depends"                 # #GP or not depending on the selector or frame


class Handling(str, Enum):
    """How ring1 deals with a site of this class."""

    TRAP = "trap"            # the CPU faults (or Unicorn's hook fires) and the runtime emulates
    INLINE = "inline"        # a patch rule rewrites it into code on virtual state, no exit
    HYPERCALL = "hypercall"  # a patch stub exits cheaply with a pre-decoded Operation
    INT3 = "int3"            # one-byte INT3 replacement, emulated on the int3 exit (PATM)
    NONE = "none"            # runs natively; `note` says why that is acceptable


class UnknownClassError(UsageError):
    """A class name that is not a row of the table (exit code 2, like any usage error)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"unknown instruction class {name!r} (known: {', '.join(NAMES)})")
        self.name = name


@dataclass(frozen=True)
class InsnClass:
    """One row of the table.

    `name` is a stable snake_case id (other modules and the JSON report use it);
    `mnemonics` are the Intel-syntax spellings Capstone and objdump print for it
    (a cheap pre-filter for the scanner and the key of the objdump reference test;
    classification itself goes by Capstone id and operands); `ids` the Capstone
    instruction ids; `rule` the patch-rule family that handles it (None: no patch).
    """

    name: str
    category: Category
    at_cpl1: AtCpl1
    unicorn: Unicorn
    handling: Handling
    rule: str | None
    modes: frozenset[int]
    why: str
    note: str = ""
    ids: tuple[int, ...] = ()
    mnemonics: frozenset[str] = frozenset()

    @property
    def faults_in_unicorn(self) -> bool:
        return self.unicorn is Unicorn.GP

    @property
    def exits_unpatched(self) -> bool:
        """Whether running it unpatched costs an exit in ring1 (a fault, an I/O hook, a
        software interrupt, an invalid-opcode stop; DEPENDS counts, as it may fault)."""
        return self.unicorn is not Unicorn.SILENT

    @property
    def exit_adds_fidelity(self) -> bool:
        """Whether an exit may be added to a class that runs silently unpatched: only where the
        table says the native result is wrong at CPL 1 and asks for a translation (INLINE,
        whose INT3 fallback exits when no window fits; INT3, which only the runtime can
        answer). A class left native (NONE) must never gain an exit from a patch."""
        return self.exits_unpatched or self.handling in (Handling.INLINE, Handling.INT3)


_BOTH = frozenset({32, 64})
_ONLY64 = frozenset({64})
_P, _IO, _S, _O = Category.PRIVILEGED, Category.IOPL_SENSITIVE, Category.SENSITIVE, Category.OTHER
_H = Handling


def _row(name: str, category: Category, at: AtCpl1, uc: Unicorn, handling: Handling, rule: str | None,
         ids: tuple[int, ...], mnemonics: str, why: str, note: str = "",
         modes: frozenset[int] = _BOTH) -> InsnClass:
    return InsnClass(name=name, category=category, at_cpl1=at, unicorn=uc, handling=handling, rule=rule,
                     modes=modes, why=why, note=note, ids=ids, mnemonics=frozenset(mnemonics.split()))


_F, _UD, _LK, _DF, _DP, _SI, _N = (AtCpl1.FAULTS, AtCpl1.FAULTS_UD, AtCpl1.LEAKS, AtCpl1.DIFFERS,
                                   AtCpl1.DEPENDS, AtCpl1.SOFT_INT, AtCpl1.NORMAL)
_GP, _SIL, _IOH, _INT, _INV, _DEP = (Unicorn.GP, Unicorn.SILENT, Unicorn.IO_HOOK, Unicorn.SOFT_INT,
                                      Unicorn.INVALID, Unicorn.DEPENDS)

CLASSES: tuple[InsnClass, ...] = (
    # --- interrupt flag: the hottest sites in any kernel (paravirt_ops patches exactly these) ---
    _row("cli", _IO, _F, _GP, _H.INLINE, "irqflags", (_x.X86_INS_CLI,), "cli",
         "SDM CLI: #GP if CPL > IOPL; PATM clears the virtual IF in its state page instead"),
    _row("sti", _IO, _F, _GP, _H.INLINE, "irqflags", (_x.X86_INS_STI,), "sti",
         "SDM STI: #GP if CPL > IOPL; PATM sets the virtual IF and exits only if an IRQ is pending"),
    _row("pushf", _S, _LK, _SIL, _H.INLINE, "irqflags",
         (_x.X86_INS_PUSHF, _x.X86_INS_PUSHFD, _x.X86_INS_PUSHFQ), "pushf pushfw pushfd pushfq",
         "Robin & Irvine: PUSHF shows the real IF=1/IOPL=0, not the guest's virtual flags"),
    _row("popf", _S, _DF, _SIL, _H.INLINE, "irqflags",
         (_x.X86_INS_POPF, _x.X86_INS_POPFD, _x.X86_INS_POPFQ), "popf popfw popfd popfq",
         "Robin & Irvine: POPF at CPL > IOPL silently keeps IF and IOPL (SDM POPF operation)"),
    # --- privileged: #GP at any CPL > 0 (SDM vol. 3 §5.9) ---
    _row("hlt", _P, _F, _GP, _H.HYPERCALL, "misc", (_x.X86_INS_HLT,), "hlt",
         "SDM §5.9: HLT is privileged; the VMM idles the vCPU until the next virtual IRQ"),
    _row("mov_from_cr", _P, _F, _GP, _H.INLINE, "crs", (), "mov",
         "SDM §5.9: MOV from CRn is privileged; PATM reads the guest's virtual CR copy"),
    _row("mov_to_cr", _P, _F, _GP, _H.HYPERCALL, "crs", (), "mov",
         "SDM §5.9: MOV to CRn is privileged; CR0/CR3/CR4 writes change the shadow MMU, so they exit"),
    _row("mov_from_dr", _P, _F, _GP, _H.HYPERCALL, "crs", (), "mov",
         "SDM §5.9: MOV from DRn is privileged; the VMM returns the virtual debug registers"),
    _row("mov_to_dr", _P, _F, _GP, _H.HYPERCALL, "crs", (), "mov",
         "SDM §5.9: MOV to DRn is privileged; the VMM keeps virtual debug registers"),
    _row("lgdt", _P, _F, _GP, _H.HYPERCALL, "descriptor_tables", (_x.X86_INS_LGDT,), "lgdt lgdtw lgdtd lgdtq",
         "SDM §5.9: LGDT is privileged; the VMM shadows the guest GDT with DPL 0 -> 1 (SELM)"),
    _row("lidt", _P, _F, _GP, _H.HYPERCALL, "descriptor_tables", (_x.X86_INS_LIDT,), "lidt lidtw lidtd lidtq",
         "SDM §5.9: LIDT is privileged; the VMM records the guest IDT and delivers through it (TRPM)"),
    _row("lldt", _P, _F, _GP, _H.HYPERCALL, "descriptor_tables", (_x.X86_INS_LLDT,), "lldt",
         "SDM §5.9: LLDT is privileged; the VMM shadows the guest LDT"),
    _row("ltr", _P, _F, _GP, _H.HYPERCALL, "descriptor_tables", (_x.X86_INS_LTR,), "ltr",
         "SDM §5.9: LTR is privileged; the VMM's own TSS stays loaded, the guest's is virtual"),
    _row("lmsw", _P, _F, _GP, _H.HYPERCALL, "crs", (_x.X86_INS_LMSW,), "lmsw",
         "SDM §5.9: LMSW is privileged; it writes CR0 bits of the virtual CR0"),
    _row("clts", _P, _F, _GP, _H.HYPERCALL, "crs", (_x.X86_INS_CLTS,), "clts",
         "SDM §5.9: CLTS is privileged; it clears CR0.TS of the virtual CR0"),
    _row("invd", _P, _F, _GP, _H.HYPERCALL, "misc", (_x.X86_INS_INVD,), "invd",
         "SDM §5.9: INVD is privileged; a no-op for an emulated cache"),
    _row("wbinvd", _P, _F, _GP, _H.HYPERCALL, "misc", (_x.X86_INS_WBINVD,), "wbinvd",
         "SDM §5.9: WBINVD is privileged; a no-op for an emulated cache"),
    _row("invlpg", _P, _F, _GP, _H.HYPERCALL, "misc", (_x.X86_INS_INVLPG,), "invlpg",
         "SDM §5.9: INVLPG is privileged; the VMM flushes its TLB/translation cache for the page"),
    _row("rdmsr", _P, _F, _GP, _H.HYPERCALL, "msr", (_x.X86_INS_RDMSR,), "rdmsr",
         "SDM §5.9: RDMSR is privileged; the VMM answers from virtual MSRs"),
    _row("wrmsr", _P, _F, _GP, _H.HYPERCALL, "msr", (_x.X86_INS_WRMSR,), "wrmsr",
         "SDM §5.9: WRMSR is privileged; the VMM keeps virtual MSRs"),
    _row("rdpmc", _P, _F, _INV, _H.TRAP, None, (_x.X86_INS_RDPMC,), "rdpmc",
         "SDM RDPMC: #GP at CPL > 0 unless CR4.PCE; Unicorn stops with UC_ERR_INSN_INVALID",
         note="rare; the runtime catches Unicorn's invalid-instruction stop and emulates it"),
    _row("sysexit", _P, _F, _GP, _H.TRAP, None, (_x.X86_INS_SYSEXIT, _x.X86_INS_SYSEXITQ),
         "sysexit sysexitl sysexitq",
         "SDM SYSEXIT: #GP if CPL != 0; the VMM emulates the return to guest user mode"),
    _row("sysret", _P, _F, _INV, _H.TRAP, None, (_x.X86_INS_SYSRET, _x.X86_INS_SYSRETQ),
         "sysret sysretd sysretl sysretq",
         "SDM SYSRET: #GP if CPL != 0 (#UD outside 64-bit mode); Unicorn 32-bit: invalid",
         modes=_ONLY64),
    _row("swapgs", _P, _F, _INV, _H.TRAP, None, (_x.X86_INS_SWAPGS,), "swapgs",
         "SDM SWAPGS: 64-bit only, #GP if CPL != 0 (#UD elsewhere); Unicorn 32-bit: invalid",
         modes=_ONLY64),
    _row("xsetbv", _P, _F, _GP, _H.TRAP, None, (_x.X86_INS_XSETBV,), "xsetbv",
         "SDM XSETBV: #GP if CPL != 0; the VMM keeps a virtual XCR0"),
    _row("invpcid", _P, _F, _INV, _H.TRAP, None, (_x.X86_INS_INVPCID,), "invpcid",
         "SDM INVPCID: #GP if CPL != 0; Unicorn does not decode it"),
    _row("monitor_mwait", _P, _UD, _INV, _H.TRAP, None, (_x.X86_INS_MONITOR, _x.X86_INS_MWAIT),
         "monitor mwait", "SDM MONITOR/MWAIT: #UD if CPL != 0; the VMM treats MWAIT like HLT"),
    _row("stac_clac", _P, _UD, _INV, _H.TRAP, None, (_x.X86_INS_STAC, _x.X86_INS_CLAC), "stac clac",
         "SDM STAC/CLAC: #UD if CPL > 0; the VMM keeps a virtual EFLAGS.AC"),
    _row("xsaves_xrstors", _P, _F, _INV, _H.NONE, None,
         (_x.X86_INS_XSAVES, _x.X86_INS_XRSTORS, _x.X86_INS_XSAVES64, _x.X86_INS_XRSTORS64),
         "xsaves xrstors xsaves64 xrstors64",
         "SDM XSAVES/XRSTORS: #GP if CPL != 0", note="64-bit kernels only; ring1 runs 32-bit guests",
         modes=_ONLY64),
    _row("wbnoinvd", _P, _F, _GP, _H.HYPERCALL, "misc", (_x.X86_INS_WBNOINVD,), "wbnoinvd",
         "SDM WBNOINVD: #GP if CPL != 0; a no-op for an emulated cache"),
    # --- sensitive but unprivileged: the Robin & Irvine set ---
    _row("sgdt", _S, _LK, _SIL, _H.INLINE, "descriptor_tables", (_x.X86_INS_SGDT,), "sgdt sgdtw sgdtd sgdtq",
         "Robin & Irvine: SGDT runs at any CPL and reveals the VMM's GDT base and limit"),
    _row("sidt", _S, _LK, _SIL, _H.INLINE, "descriptor_tables", (_x.X86_INS_SIDT,), "sidt sidtw sidtd sidtq",
         "Robin & Irvine: SIDT runs at any CPL and reveals the VMM's IDT base and limit"),
    _row("sldt", _S, _LK, _SIL, _H.INLINE, "descriptor_tables", (_x.X86_INS_SLDT,), "sldt",
         "Robin & Irvine: SLDT runs at any CPL and reveals the VMM's LDT selector"),
    _row("str", _S, _LK, _SIL, _H.INLINE, "descriptor_tables", (_x.X86_INS_STR,), "str",
         "Robin & Irvine: STR runs at any CPL and reveals the VMM's TSS selector"),
    _row("smsw", _S, _LK, _SIL, _H.INLINE, "crs", (_x.X86_INS_SMSW,), "smsw",
         "Robin & Irvine: SMSW runs at any CPL and reveals the real CR0 low bits"),
    _row("lar", _S, _DF, _SIL, _H.INT3, "segments", (_x.X86_INS_LAR,), "lar",
         "Robin & Irvine: LAR judges visibility by CPL 1 and shows shadowed DPLs (PATM: int3)"),
    _row("lsl", _S, _DF, _SIL, _H.INT3, "segments", (_x.X86_INS_LSL,), "lsl",
         "Robin & Irvine: LSL judges visibility by CPL 1 and shows shadowed limits (PATM: int3)"),
    _row("verr", _S, _DF, _SIL, _H.INT3, "segments", (_x.X86_INS_VERR,), "verr",
         "Robin & Irvine: VERR checks readability at CPL 1, not the guest's CPL 0 (PATM: int3)"),
    _row("verw", _S, _DF, _SIL, _H.INT3, "segments", (_x.X86_INS_VERW,), "verw",
         "Robin & Irvine: VERW checks writability at CPL 1, not the guest's CPL 0 (PATM: int3)"),
    _row("push_sreg", _S, _DF, _SIL, _H.INLINE, "segments", (), "push",
         "Robin & Irvine: PUSH CS/SS pushes a selector whose RPL shows CPL 1 (PATM strips it)"),
    _row("pop_sreg", _S, _F, _GP, _H.TRAP, None, (), "pop",
         "SDM POP SS: #GP when RPL != CPL; the guest's RPL-0 kernel SS faults at CPL 1",
         note="the trap handler loads the RPL-1 shadow selector (POP SS also blocks IRQs for one insn)"),
    _row("mov_from_sreg", _S, _DF, _SIL, _H.INLINE, "segments", (), "mov",
         "Robin & Irvine: MOV r,CS/SS reads a selector whose RPL shows CPL 1 (PATM strips it)"),
    _row("mov_to_sreg", _S, _F, _GP, _H.TRAP, None, (), "mov",
         "SDM MOV SS: #GP when RPL != CPL; the guest's RPL-0 kernel SS faults at CPL 1",
         note="the trap handler loads the RPL-1 shadow selector; other segment loads pass (SELM shadows)"),
    _row("lss", _S, _F, _GP, _H.TRAP, None, (_x.X86_INS_LSS,), "lss",
         "SDM LSS: loads SS like MOV SS, so an RPL-0 kernel selector faults at CPL 1"),
    _row("far_call", _S, _DP, _DEP, _H.NONE, None, (_x.X86_INS_LCALL,), "lcall call",
         "Robin & Irvine: far CALL checks selectors against CPL 1",
         note="SELM's DPL-1 shadow descriptors accept the guest's RPL-0 code selectors; a fault traps"),
    _row("far_jmp", _S, _DP, _DEP, _H.NONE, None, (_x.X86_INS_LJMP,), "ljmp jmp",
         "Robin & Irvine: far JMP checks selectors against CPL 1",
         note="SELM's DPL-1 shadow descriptors accept the guest's RPL-0 code selectors; a fault traps"),
    _row("far_ret", _S, _DP, _DEP, _H.TRAP, None, (_x.X86_INS_RETF, _x.X86_INS_RETFQ),
         "retf retfq retfw lret lretq",
         "SDM RET far: #GP returning to an RPL-0 CS from CPL 1 (a 'more privileged' level)",
         note="frames the guest built with RPL-0 CS fault; the trap handler fixes the RPL"),
    _row("iret", _S, _DP, _DEP, _H.INLINE, "iret", (_x.X86_INS_IRET, _x.X86_INS_IRETD, _x.X86_INS_IRETQ),
         "iret iretw iretd iretq",
         "Robin & Irvine: IRET at CPL > IOPL silently keeps IF/IOPL; RPL-0 frames fault (PATM: iret patch)"),
    # --- I/O: IOPL-sensitive; Unicorn never checks IOPL for them (notes/unicorn-ring1.md #1) ---
    _row("in", _IO, _F, _IOH, _H.HYPERCALL, "io", (_x.X86_INS_IN,), "in",
         "SDM IN: #GP if CPL > IOPL and the TSS I/O bitmap denies the port; Unicorn never faults it",
         note="the runtime counts each as the #GP exit it would be on hardware"),
    _row("out", _IO, _F, _IOH, _H.HYPERCALL, "io", (_x.X86_INS_OUT,), "out",
         "SDM OUT: #GP if CPL > IOPL and the TSS I/O bitmap denies the port; Unicorn never faults it",
         note="the runtime counts each as the #GP exit it would be on hardware"),
    _row("ins", _IO, _F, _IOH, _H.HYPERCALL, "io", (_x.X86_INS_INSB, _x.X86_INS_INSW, _x.X86_INS_INSD),
         "ins insb insw insd",
         "SDM INS: #GP if CPL > IOPL (bitmap permitting); Unicorn calls the IN hook instead",
         note="unpatched, each element is an I/O hook call counted as a #GP exit; "
              "patched, one exit moves the whole REP string"),
    _row("outs", _IO, _F, _IOH, _H.HYPERCALL, "io", (_x.X86_INS_OUTSB, _x.X86_INS_OUTSW, _x.X86_INS_OUTSD),
         "outs outsb outsw outsd",
         "SDM OUTS: #GP if CPL > IOPL (bitmap permitting); Unicorn calls the OUT hook instead",
         note="unpatched, each element is an I/O hook call counted as a #GP exit; "
              "patched, one exit moves the whole REP string"),
    # --- unprivileged but leaking or state-dependent ---
    _row("rdtsc", _S, _LK, _GP, _H.TRAP, None, (_x.X86_INS_RDTSC,), "rdtsc",
         "SDM RDTSC: unprivileged while CR4.TSD = 0, and then it reads the host's time stamp counter",
         note="ring1 keeps the real CR4.TSD set (runtime/machine.py), so RDTSC faults at CPL 1 and 3 and "
              "reads the virtual TSC, which counts virtual time, as VirtualBox's raw mode did when it "
              "could not offset the TSC; no rule: a patch could not read virtual time without an exit"),
    _row("rdtscp", _S, _LK, _INV, _H.NONE, None, (_x.X86_INS_RDTSCP,), "rdtscp",
         "SDM RDTSCP: unprivileged while CR4.TSD = 0; leaks the host TSC and TSC_AUX",
         note="ring1's CPU (QEMU's qemu32) has no RDTSCP (CPUID 0x80000001 EDX bit 27 clear): #UD"),
    _row("cpuid", _S, _LK, _SIL, _H.NONE, None, (_x.X86_INS_CPUID,), "cpuid",
         "VirtualBox raw-mode docs: CPUID runs at any CPL and reports the host CPU (PATM: int3)",
         note="ring1's virtual CPU is Unicorn's CPU model, so CPUID run natively at CPL 1 answers what "
              "the runtime's emulator would, every leaf and sub-leaf (tests/test_runtime_cpuid.py); "
              "a patch could only add exits"),
    _row("int_n", _O, _SI, _INT, _H.TRAP, None, (_x.X86_INS_INT,), "int",
         "SDM INT n: delivered through the IDT with a DPL check; the VMM delivers via the guest IDT",
         note="Unicorn's UC_HOOK_INTR gets the vector; no #GP, so old_exception stays clean"),
    _row("int3", _O, _SI, _INT, _H.TRAP, None, (_x.X86_INS_INT3,), "int3",
         "SDM INT3: #BP through the IDT; the VMM tells its own int3 patches from the guest's"),
    _row("into", _O, _DP, _SIL, _H.TRAP, None, (_x.X86_INS_INTO,), "into",
         "SDM INTO: #OF through the IDT when OF = 1 (silent otherwise; #UD in 64-bit mode)",
         modes=frozenset({32})),
    _row("int1", _O, _SI, _INV, _H.TRAP, None, (_x.X86_INS_INT1,), "int1 icebp",
         "SDM INT1 (ICEBP): #DB through the IDT; Unicorn stops with UC_ERR_INSN_INVALID"),
    _row("sysenter", _O, _DP, _SIL, _H.TRAP, None, (_x.X86_INS_SYSENTER,), "sysenter",
         "SDM SYSENTER: jumps to ring 0 through the host's SYSENTER MSRs (#GP if SYSENTER_CS = 0)",
         note="guest user code only; Unicorn runs it silently, the runtime must catch it"),
    _row("syscall", _O, _DP, _SIL, _H.TRAP, None, (_x.X86_INS_SYSCALL,), "syscall",
         "SDM SYSCALL: jumps to ring 0 through the host's STAR/LSTAR MSRs (#UD in 32-bit on Intel)",
         note="guest user code only; the runtime must catch it"),
)

NAMES: tuple[str, ...] = tuple(c.name for c in CLASSES)
#: The classes that cost an exit unpatched (they fault, or Unicorn's hook fires): what
#: `bt run --leaks-only` leaves trapping, patching only the silent leaks.
EXITING: tuple[str, ...] = tuple(c.name for c in CLASSES if c.exits_unpatched)
_BY_NAME: dict[str, InsnClass] = {c.name: c for c in CLASSES}

# Every mnemonic spelling any row may print as: a cheap pre-filter (the scanner's
# first pass runs without Capstone detail and only decodes these in full).
CANDIDATE_MNEMONICS: frozenset[str] = frozenset().union(*(c.mnemonics for c in CLASSES))
#: The spellings of the rows that run without an exception at CPL 1 (`Unicorn.SILENT`).
SILENT_MNEMONICS: frozenset[str] = frozenset().union(*(c.mnemonics for c in CLASSES
                                                       if c.unicorn is Unicorn.SILENT))
_SEGMENT_NAMES = ("cs", "ds", "es", "fs", "gs", "ss")


def maybe_silent(mnemonic: str, op_str: str) -> bool:
    """False only for an instruction that is certainly no silent row's, from Capstone's text
    alone (no detail): the pre-filter of patchmgr/rescan.py. MOV and PUSH are silent only
    with a segment register (MOV r/m,Sreg; PUSH Sreg), which their text then names."""
    if mnemonic not in SILENT_MNEMONICS:
        return False
    if mnemonic in ("mov", "push"):
        return any(seg in op_str for seg in _SEGMENT_NAMES)
    return True


def by_name(name: str) -> InsnClass:
    """The row called `name`; raises `UnknownClassError` (a UsageError, exit 2) otherwise."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise UnknownClassError(name) from None


# ---- classification by Capstone id and operands -------------------------------------------------

_CR = frozenset(getattr(_x, f"X86_REG_CR{n}") for n in range(16))
_DR = frozenset(getattr(_x, f"X86_REG_DR{n}") for n in range(16))
_CS_SS = frozenset({_x.X86_REG_CS, _x.X86_REG_SS})
_REG = _x.X86_OP_REG


def _mov(insn: CsInsn) -> InsnClass | None:
    ops = insn.operands
    if len(ops) != 2:
        return None
    dst, src = ops
    if dst.type == _REG:
        if dst.reg in _CR:
            return _BY_NAME["mov_to_cr"]
        if dst.reg in _DR:
            return _BY_NAME["mov_to_dr"]
        if dst.reg == _x.X86_REG_SS:
            return _BY_NAME["mov_to_sreg"]
    if src.type == _REG:
        if src.reg in _CR:
            return _BY_NAME["mov_from_cr"]
        if src.reg in _DR:
            return _BY_NAME["mov_from_dr"]
        if src.reg in _CS_SS:
            return _BY_NAME["mov_from_sreg"]
    return None


def _push(insn: CsInsn) -> InsnClass | None:
    ops = insn.operands
    if len(ops) == 1 and ops[0].type == _REG and ops[0].reg in _CS_SS:
        return _BY_NAME["push_sreg"]
    return None


def _pop(insn: CsInsn) -> InsnClass | None:
    ops = insn.operands
    if len(ops) == 1 and ops[0].type == _REG and ops[0].reg == _x.X86_REG_SS:
        return _BY_NAME["pop_sreg"]
    return None


def _far_indirect(insn: CsInsn) -> InsnClass | None:
    # FF /3 is CALL m16:xx and FF /5 is JMP m16:xx (SDM vol. 2, opcode map). Capstone
    # reports both as plain JMP/CALL ("jmp ptr [eax]"), so look at the ModRM reg field.
    if insn.opcode[0] != 0xFF:
        return None
    reg = (insn.modrm >> 3) & 7
    if reg == 3:
        return _BY_NAME["far_call"]
    if reg == 5:
        return _BY_NAME["far_jmp"]
    return None


# Ids whose class depends on operands. Keys listed here never appear in `_BY_ID`.
_BY_OPERANDS: dict[int, Callable[[CsInsn], InsnClass | None]] = {
    _x.X86_INS_MOV: _mov,
    _x.X86_INS_PUSH: _push,
    _x.X86_INS_POP: _pop,
    _x.X86_INS_JMP: _far_indirect,
    _x.X86_INS_CALL: _far_indirect,
}
_BY_ID: dict[int, InsnClass] = {i: c for c in CLASSES for i in c.ids}
assert not set(_BY_ID) & set(_BY_OPERANDS), "an id is classified two ways"

# Ids whose row follows from the id alone (no detail needed), and ids that need an operand
# check; together every id that may be sensitive. The scanner decodes without detail and
# asks for detail only for the second kind.
ID_CLASSES: Mapping[int, InsnClass] = MappingProxyType(_BY_ID)
OPERAND_DEPENDENT_IDS: frozenset[int] = frozenset(_BY_OPERANDS)
SENSITIVE_IDS: frozenset[int] = frozenset(_BY_ID) | OPERAND_DEPENDENT_IDS


def classify(insn: CsInsn) -> InsnClass | None:
    """The row of a Capstone instruction decoded with `detail = True` (32- or 64-bit), or None."""
    cls = _BY_ID.get(insn.id)
    if cls is not None:
        return cls
    check = _BY_OPERANDS.get(insn.id)
    return check(insn) if check is not None else None


def decode(insn: CsInsn) -> Operation:
    """`classify` and `bt.operation.from_capstone` in one: the Operation the runtime emulates."""
    cls = classify(insn)
    return from_capstone(insn, cls.name if cls is not None else None)
