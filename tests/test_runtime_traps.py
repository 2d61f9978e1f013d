"""Trap-and-emulate at CPL 1, one privileged class at a time, on tiny guests
(tests/runtime_guest.py), and the shadow GDT's ring compression."""

from __future__ import annotations

import pytest
from runtime_guest import (
    GDT,
    IDT,
    KCODE,
    KDATA,
    RESULTS,
    TSS_SEL,
    kernel,
    run,
    words,
)

from bt import layout
from bt.errors import GuestStop
from runtime.boot import LOADER_CS, LOADER_DS, LOADER_GDT
from runtime.cpu import CR0, CR3, CR4, CS, SS
from runtime.segments import Descriptor
from runtime.vm import RunResult


def _ok(result: object) -> RunResult:
    assert isinstance(result, RunResult), f"guest stopped: {result}"
    assert result.exit_status == 1, f"guest exit status {result.exit_status}"
    return result


def test_boot_enters_ring1_with_vmm_selectors_and_real_if():
    vm, result = run(kernel("mov eax, cs\nmov [0x23000], eax\npushfd\npop eax\nmov [0x23004], eax\n"
                            "mov al, 0\nout 0xf4, al\n"))
    _ok(result)
    cs, eflags = words(vm, RESULTS, 2)
    assert cs & 0xFFFF == KCODE | 1        # after the prologue's LJMP: the guest's selector, RPL 1
    assert eflags & 0x200                   # real IF is 1 (PUSHFD shows it: the leak)
    assert (eflags >> 12) & 3 == 0          # real IOPL 0
    assert vm.cpu.read(CS) & 3 == 1


def test_shadow_gdt_compresses_dpl0_and_drops_the_tss():
    vm, result = run(kernel("mov al, 0\nout 0xf4, al\n"))
    _ok(result)
    real = [Descriptor.from_bytes(vm.cpu.phys_read(layout.VMM_GDT + i * 8, 8)) for i in range(6)]
    guest = [Descriptor.from_bytes(vm.cpu.phys_read(GDT + i * 8, 8)) for i in range(6)]
    assert [d.dpl for d in guest[1:5]] == [0, 0, 3, 3]
    assert [d.dpl for d in real[1:5]] == [1, 1, 3, 3]
    assert real[1].base == guest[1].base and real[1].limit == guest[1].limit
    assert not real[5].present                      # the guest's TSS is virtual
    assert guest[5].type == 0xB                      # LTR marked it busy in the guest's GDT
    assert vm.cpu.read(SS) == KDATA | 1              # MOV SS, 0x10 was emulated as 0x11
    assert vm.vcpu.tr == TSS_SEL
    assert vm.vcpu.table("gdtr") == (GDT, 6 * 8 - 1)
    assert vm.vcpu.table("idtr")[0] == IDT


def test_cli_sti_move_only_the_virtual_if():
    src = ("sti\nmov eax, [{vf}]\nmov [0x23000], eax\ncli\nmov eax, [{vf}]\nmov [0x23004], eax\n"
           "pushfd\npop eax\nmov [0x23008], eax\nmov al, 0\nout 0xf4, al\n").format(
               vf=layout.state("vflags"))
    vm, result = run(kernel(src))
    _ok(result)
    after_sti, after_cli, real = words(vm, RESULTS, 3)
    assert after_sti & 0x200 and not after_cli & 0x200
    assert real & 0x200                      # the real IF never moved
    assert vm.stats.by_class["cli"] == 1 and vm.stats.by_class["sti"] == 1


def test_a_rewritten_trapping_instruction_is_decoded_again():
    """The decode cache (runtime/traps.py) re-checks the bytes at EIP on every exit: a site
    that trapped as CLI and was then rewritten by the guest into STI is emulated as STI."""
    src = ("sti\ncall site\nmov eax, [{vf}]\nmov [0x23000], eax\nmov byte ptr [site], 0xfb\n"
           "cli\ncall site\nmov eax, [{vf}]\nmov [0x23004], eax\nmov al, 0\nout 0xf4, al\n"
           "site:\ncli\nret\n").format(vf=layout.state("vflags"))
    vm, result = run(kernel(src))
    _ok(result)
    after_cli, after_sti = words(vm, RESULTS, 2)
    assert not after_cli & 0x200 and after_sti & 0x200
    assert vm.stats.by_class["cli"] == 2 and vm.stats.by_class["sti"] == 2


@pytest.mark.parametrize("cr, value", [(0, 0x80000011 & ~0x80000000 | 0x10000), (3, 0x5000), (4, 0x10)])
def test_mov_cr_both_ways(cr: int, value: int):
    src = (f"mov eax, {value:#x}\nmov cr{cr}, eax\nxor eax, eax\nmov eax, cr{cr}\nmov [0x23000], eax\n"
           "mov al, 0\nout 0xf4, al\n")
    vm, result = run(kernel(src))
    _ok(result)
    (seen,) = words(vm, RESULTS, 1)
    assert seen == value | (0x10 if cr == 0 else 0)    # CR0.ET reads as 1
    assert vm.vcpu.cr(cr) == seen
    if cr == 3:
        # Paging is off: the real CR3 only ever points at the shadow page directory
        # (runtime/shadowpd.py), which nothing walks yet.
        assert vm.cpu.read(CR3) != value
    else:
        assert vm.cpu.read({0: CR0, 4: CR4}[cr]) & value == value
    assert vm.stats.by_class["mov_to_cr"] == 1 and vm.stats.by_class["mov_from_cr"] == 1


def test_debug_registers_msrs_and_the_rest_of_the_privileged_set():
    src = """
        mov eax, 0x300
        mov dr7, eax
        mov eax, dr7
        mov [0x23000], eax
        mov ecx, 0x174
        mov eax, 0x8
        xor edx, edx
        wrmsr
        xor eax, eax
        rdmsr
        mov [0x23004], eax
        mov ecx, 0x1b
        rdmsr
        mov [0x23008], eax
        mov ax, 0x8
        lmsw ax
        smsw eax
        mov [0x2300c], eax
        clts
        mov eax, cr0
        mov [0x23010], eax
        invd
        wbinvd
        invlpg [0x5000]
        mov al, 0x5a
        out 0x80, al
        in al, 0x80
        mov al, 0
        out 0xf4, al
    """
    vm, result = run(kernel(src))
    _ok(result)
    dr7, sysenter_cs, apic_base, smsw, cr0 = words(vm, RESULTS, 5)
    assert dr7 == 0x700                       # bit 10 reads as 1 (SDM §17.2.4)
    assert sysenter_cs == 8
    assert apic_base == 0xFEE00900
    assert smsw & 0x8                         # LMSW set TS in the virtual CR0; SMSW (not trapped) sees it
    assert not cr0 & 0x8                      # CLTS cleared it
    for cls in ("mov_to_dr", "mov_from_dr", "wrmsr", "rdmsr", "lmsw", "clts", "invd", "wbinvd",
                "invlpg", "out", "in"):
        assert vm.stats.by_class[cls] >= 1, cls


def test_unknown_msr_is_the_guests_gp():
    handler = ("mov eax, [esp]\nmov [0x23000], eax\nmov eax, [esp + 4]\nmov [0x23004], eax\n"
               "mov al, 0\nout 0xf4, al\n")
    vm, result = run(kernel("mov ecx, 0xdead\nrdmsr\n", handlers={13: (handler, 0, False)}))
    _ok(result)
    error, eip = words(vm, RESULTS, 2)
    assert error == 0
    assert vm.stats.vectors[13] == 1
    assert eip == next(a for (k, c, a) in vm.stats.hits if c == "rdmsr")


def test_iret_to_kernel_restores_the_virtual_if_and_strips_rpl():
    # INT 0x81 pushes a frame (CS RPL 0 as the guest expects); the handler's IRET faults
    # (return to RPL 0 from CPL 1) and is emulated, restoring IF from the frame.
    handler = ("mov eax, [esp + 4]\nmov [0x23000], eax\nmov eax, [{vf}]\nmov [0x23004], eax\niretd\n"
               ).format(vf=layout.state("vflags"))
    src = ("sti\nint 0x81\nmov eax, [{vf}]\nmov [0x23008], eax\nmov al, 0\nout 0xf4, al\n"
           ).format(vf=layout.state("vflags"))
    vm, result = run(kernel(src, handlers={0x81: (handler, 0, False)}))
    _ok(result)
    frame_cs, vflags_in_handler, vflags_after = words(vm, RESULTS, 3)
    assert frame_cs == KCODE                     # RPL 1 stripped
    assert not vflags_in_handler & 0x200         # interrupt gate cleared the virtual IF
    assert vflags_after & 0x200                  # emulated IRET restored it
    assert vm.stats.by_class["iret"] == 1
    assert vm.cpu.read(CS) == KCODE | 1


def test_far_ret_to_rpl0_is_emulated():
    # call/pop finds EIP; +6 skips pop, add, push, retf to land on the exit.
    src = f"push {KCODE}\ncall next\nnext:\npop eax\nadd eax, 6\npush eax\nretf\nmov al, 0\nout 0xf4, al\n"
    vm, result = run(kernel(src))
    _ok(result)
    assert vm.stats.by_class["far_ret"] == 1
    assert vm.cpu.read(CS) == KCODE | 1


def test_hlt_with_interrupts_disabled_is_a_clean_stop():
    _vm, result = run(kernel("cli\nhlt\n"))
    assert isinstance(result, GuestStop)
    assert "halted with interrupts disabled" in result.reason
    assert result.eip is not None


def test_a_guest_without_gdt_runs_on_the_loaders_selectors():
    # QEMU's multiboot loader leaves CS 0x08 and DS 0x10 of its own GDT (runtime/boot.py);
    # unpatched, MOV r,CS shows the RPL 1 of ring compression (the leak patching fixes).
    code = b"\x8c\xc8\xa3\x00\x30\x02\x00" + b"\x8c\xd8\xa3\x04\x30\x02\x00" + b"\xb0\x00\xe6\xf4"
    from runtime.vm import RawImage
    vm, result = run(RawImage(((0x100000, code),), 0x100000))
    _ok(result)
    cs, ds = (w & 0xFFFF for w in words(vm, RESULTS, 2))
    assert (cs, ds) == (LOADER_CS | 1, LOADER_DS)
    assert vm.gdt.guest_base == layout.LOADER_GDT_BASE and vm.machine.guest_gdt_limit == len(LOADER_GDT) - 1


def test_a_bad_segment_load_is_the_guests_gp_with_the_selector():
    handler = "mov eax, [esp]\nmov [0x23000], eax\nmov al, 0\nout 0xf4, al\n"
    vm, result = run(kernel("mov ax, 0x38\nmov ds, ax\nhlt\n", handlers={13: (handler, 0, False)}))
    _ok(result)
    assert words(vm, RESULTS, 1)[0] == 0x38          # beyond the GDT limit: #GP(selector)


@pytest.mark.parametrize("insn, cls", [("rdpmc", "rdpmc"), ("stac", "stac_clac"), ("clac", "stac_clac"),
                                       ("monitor", "monitor_mwait"), ("mwait", "monitor_mwait"),
                                       ("invpcid eax, [ecx]", "invpcid"), ("xsetbv", "xsetbv")])
def test_privileged_instructions_ring1s_cpuid_lacks_are_ud_at_cpl1(insn: str, cls: str):
    # Unicorn stops on these (UC_ERR_INSN_INVALID) or runs them; the CPU ring1's CPUID
    # describes has no SMAP, MONITOR, INVPCID nor performance counters, and CR4.OSXSAVE is 0:
    # #UD, as QEMU raises (samples/attacks, group instructions).
    handler = f"mov dword ptr [{RESULTS:#x}], 6\nmov al, 0\nout 0xf4, al\n"
    vm, result = run(kernel(f"mov ecx, {RESULTS:#x}\n{insn}\nmov al, 1\nout 0xf4, al\n",
                            handlers={6: (handler, 0, False)}))
    _ok(result)
    assert words(vm, RESULTS, 1) == (6,)
    assert vm.stats.vectors[6] == 1


def test_every_privileged_class_has_an_emulator():
    from bt import isa
    from runtime.emulate import EMULATORS

    missing = [c.name for c in isa.CLASSES
               if 32 in c.modes and c.category is isa.Category.PRIVILEGED and c.name not in EMULATORS]
    assert missing == []


@pytest.mark.parametrize("wp", [False, True])
def test_one_entry_mirrored_without_numpy_is_the_directory_mirror(wp: bool) -> None:
    # INVLPG mirrors one entry in plain Python (runtime/shadowpd.py `_mirror_one`); a CR3
    # load mirrors the whole directory with NumPy (`_mirror`). Both must agree on every
    # combination of the bits the mirror looks at.
    import numpy as np

    from runtime import shadowpd

    class Half:
        _mirror = shadowpd.ShadowPd._mirror
        _mirror_one = shadowpd.ShadowPd._mirror_one

        def _wp(self) -> bool:
            return wp

    bits = (shadowpd.PTE_P, shadowpd.PTE_A, shadowpd.PTE_PS, shadowpd.PTE_W, shadowpd.PTE_D)
    half = Half()
    for mask in range(1 << len(bits)):
        for frame in (0, 0x12345000, 0xFFC00000):
            entry = frame | 0x4 | sum(b for i, b in enumerate(bits) if mask >> i & 1)
            assert half._mirror_one(entry) == int(half._mirror(np.array([entry], dtype=np.uint32))[0])
