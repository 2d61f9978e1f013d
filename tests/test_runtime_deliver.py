"""Delivery through the guest's IDT: exceptions from ring 1 and ring 3, INT n from
user mode through the call-gate inward path, frames and stack switches as the
CPU would build them (Intel SDM vol. 3 §6.12); and guest paging (4 KiB, 4 MiB
pages, CR0.WP) with #PF error codes rebuilt by the VMM."""

from __future__ import annotations

import struct

from runtime_guest import (
    KCODE,
    KERNEL,
    KSTACK,
    PIC_PIT_SETUP,
    RESULTS,
    UCODE,
    UDATA,
    USER,
    USTACK,
    asm,
    kernel,
    run,
    to_user,
    words,
)

from bt import layout
from bt.errors import GuestStop
from runtime.cpu import CR3, CS, SS
from runtime.vm import RawImage, RunResult

# A handler that saves ESP and the top 6 words of its stack to RESULTS, then exits.
SAVE_FRAME = """
    mov [0x23000], esp
    mov eax, [esp]
    mov [0x23004], eax
    mov eax, [esp + 4]
    mov [0x23008], eax
    mov eax, [esp + 8]
    mov [0x2300c], eax
    mov eax, [esp + 12]
    mov [0x23010], eax
    mov eax, [esp + 16]
    mov [0x23014], eax
    mov eax, [esp + 20]
    mov [0x23018], eax
    mov eax, cr2
    mov [0x2301c], eax
    mov eax, [{vf}]
    mov [0x23020], eax
    mov al, 0
    out 0xf4, al
""".format(vf=layout.state("vflags"))


def _ok(vm_result: object) -> None:
    assert isinstance(vm_result, RunResult), f"guest stopped: {vm_result}"
    assert vm_result.exit_status == 1


def _frame(vm):  # type: ignore[no-untyped-def]
    esp, *stack = words(vm, RESULTS, 9)
    return esp, stack


def test_int80_from_ring3_switches_to_the_tss_stack_with_a_full_frame():
    user = "mov eax, 42\nint 0x80\nhlt\n"
    vm, result = run(kernel(to_user(), handlers={0x80: (SAVE_FRAME, 3, True)}, user=user))
    _ok(result)
    esp, (eip, cs, eflags, uesp, uss, _, _, vflags) = _frame(vm)
    assert esp == KSTACK - 20                  # TSS.esp0, five words pushed
    assert eip == USER + 7                     # after the 2-byte INT 0x80
    assert cs == UCODE and uss == UDATA and uesp == USTACK
    assert eflags & 0x200                      # user mode runs with IF = 1
    assert vflags & 0x200                      # a trap gate keeps the virtual IF set
    assert vm.cpu.read(CS) == KCODE | 1 and vm.cpu.read(SS) == 0x11
    assert vm.stats.vectors[0x80] == 1


def test_int_n_from_ring3_through_a_dpl0_gate_is_gp():
    user = "int 0x80\nhlt\n"
    vm, result = run(kernel(to_user(), handlers={0x80: ("hlt\n", 0, False), 13: (SAVE_FRAME, 0, False)},
                            user=user))
    _ok(result)
    _esp, (error, eip, cs, _eflags, _uesp, uss, _, _) = _frame(vm)
    assert error == 0x80 * 8 + 2               # SDM §6.12.1.1: IDT entry, not external
    assert eip == USER and cs == UCODE and uss == UDATA


def test_divide_error_in_the_kernel_frame_has_rpl0_cs_and_virtual_if():
    src = "sti\nxor ecx, ecx\nmov eax, 1\nfault:\ndiv ecx\nhlt\n"
    vm, result = run(kernel(src, handlers={0: (SAVE_FRAME, 0, False)}))
    _ok(result)
    esp, (eip, cs, eflags, *_rest) = _frame(vm)
    assert esp == KSTACK - 12                  # same level: no stack switch, no SS:ESP
    assert cs == KCODE                         # RPL 1 stripped (the guest thinks it is ring 0)
    assert eflags & 0x200                      # the virtual IF the guest had (STI)
    assert vm.stats.vectors[0] == 1
    assert vm.traps.latch.clears >= 1          # the fault's old_exception was cleared
    code = vm.cpu.phys_read(eip, 2)
    assert code == b"\xf7\xf1"                 # EIP is the faulting DIV


def test_invalid_opcode_in_the_kernel_is_delivered():
    vm, result = run(kernel("ud2\n", handlers={6: (SAVE_FRAME, 0, False)}))
    _ok(result)
    _esp, (eip, cs, *_rest) = _frame(vm)
    assert vm.cpu.phys_read(eip, 2) == b"\x0f\x0b" and cs == KCODE


def test_many_faults_in_a_row_never_escalate_to_double_fault():
    # #DE handler skips the 2-byte DIV; 3000 of them would be #DF then a triple
    # fault if Unicorn's old_exception were not cleared after each.
    handler = "add dword ptr [esp], 2\ninc dword ptr [0x23000]\niretd\n"
    src = "mov ebx, 3000\nxor ecx, ecx\nagain:\ndiv ecx\ndec ebx\njnz again\nmov al, 0\nout 0xf4, al\n"
    vm, result = run(kernel(src, handlers={0: (handler, 0, False)}))
    _ok(result)
    assert words(vm, RESULTS, 1)[0] == 3000
    assert vm.stats.vectors.get(8, 0) == 0


# -- paging -----------------------------------------------------------------------------------------

PD, PT = 0x30000, 0x31000


def _page_tables(extra_pdes: dict[int, int], extra_ptes: dict[int, int]) -> tuple[tuple[int, bytes], ...]:
    """Identity-map the first 4 MiB with 4 KiB pages (user, writable) plus extras."""
    pd = bytearray(4096)
    pt = bytearray(4096)
    for i in range(1024):
        struct.pack_into("<I", pt, i * 4, (i << 12) | 0x7)
    for i, v in extra_ptes.items():
        struct.pack_into("<I", pt, i * 4, v)
    struct.pack_into("<I", pd, 0, PT | 0x7)
    for i, v in extra_pdes.items():
        struct.pack_into("<I", pd, i * 4, v)
    return ((PD, bytes(pd)), (PT, bytes(pt)))


ENABLE_PAGING = f"""
    mov eax, cr4
    or eax, 0x10
    mov cr4, eax
    mov eax, {PD:#x}
    mov cr3, eax
    mov eax, cr0
    or eax, 0x80010000
    mov cr0, eax
"""


def test_paging_4k_and_4m_pages_and_the_vmm_pde():
    # 0x00400000: a 4 MiB page onto physical 0x00800000; 0x5000 (4 KiB) onto 0x7000.
    tables = _page_tables({1: 0x00800000 | 0x83}, {5: 0x7000 | 0x3})
    src = ENABLE_PAGING + """
        mov dword ptr [0x00400010], 0x4d4d4d4d
        mov dword ptr [0x5008], 0x4b4b4b4b
        mov al, 0
        out 0xf4, al
    """
    vm, result = run(kernel(src, chunks=tables))
    _ok(result)
    assert vm.cpu.phys_read(0x00800010, 4) == b"MMMM"
    assert vm.cpu.phys_read(0x7008, 4) == b"KKKK"
    # The guest's directory is the guest's: the VMM's slot is in the shadow the CPU walks.
    assert vm.cpu.phys_read(PD + 1023 * 4, 4) == bytes(4)
    shadow = struct.unpack("<I", vm.cpu.phys_read(layout.VMM_SHADOW_PD + 1023 * 4, 4))[0]
    assert shadow & ~0x60 == layout.VMM_PT | 0x7
    assert vm.cpu.read(CR3) == layout.VMM_SHADOW_PD
    assert vm.vcpu.cr(0) & 0x80000000 and vm.vcpu.cr(3) == PD
    assert vm.mmu.translate(0x00400123) == 0x00800123


def test_pf_from_a_kernel_write_to_a_read_only_page_with_wp():
    tables = _page_tables({}, {6: 0x6000 | 0x1})          # present, read-only, supervisor
    src = ENABLE_PAGING + "mov dword ptr [0x6004], 1\nhlt\n"
    vm, result = run(kernel(src, handlers={14: (SAVE_FRAME, 0, False)}, chunks=tables))
    _ok(result)
    _esp, (error, _eip, cs, *_rest, cr2, _vf) = _frame(vm)
    assert cr2 == 0x6004 and cs == KCODE
    assert error == 0x3                          # present | write, supervisor


def test_pf_from_user_mode_on_a_supervisor_page():
    tables = _page_tables({}, {0x8: 0x8000 | 0x3})           # supervisor-only page at 0x8000
    user = "mov eax, [0x8000]\nhlt\n"
    vm, result = run(kernel(ENABLE_PAGING + to_user(), handlers={14: (SAVE_FRAME, 0, False)},
                            user=user, chunks=tables))
    _ok(result)
    esp, (error, eip, cs, _eflags, uesp, uss, cr2, _vf) = _frame(vm)
    assert error == 0x5                          # present | user, read
    assert cr2 == 0x8000 and eip == USER and cs == UCODE
    assert uesp == USTACK and uss == UDATA
    assert esp == KSTACK - 24                    # error code + five words on the TSS stack


# -- IRQs ---------------------------------------------------------------------------------------------


# IRQ0 handler: count, EOI, remember the CS it interrupted; exit after 5 ticks.
TICK = """
    push eax
    inc dword ptr [0x23000]
    mov eax, [esp + 8]
    mov [0x23004], eax
    mov al, 0x20
    out 0x20, al
    cmp dword ptr [0x23000], 5
    jne done
    mov al, 0
    out 0xf4, al
done:
    pop eax
    iretd
"""


def test_timer_irqs_reach_user_mode_through_the_call_gate():
    user = "spin:\ninc ebx\njmp spin\n"
    vm, result = run(kernel(PIC_PIT_SETUP + to_user(), handlers={0x20: (TICK, 0, False)}, user=user),
                     max_insns=20_000_000)
    _ok(result)
    ticks, cs = words(vm, RESULTS, 2)
    assert ticks == 5 and cs == UCODE          # every tick interrupted ring 3
    assert vm.stats.vectors[0x20] == 5


def test_hlt_idles_until_the_next_tick():
    src = PIC_PIT_SETUP + "sti\nidle:\nhlt\njmp idle\n"
    vm, result = run(kernel(src, handlers={0x20: (TICK, 0, False)}))
    _ok(result)
    assert words(vm, RESULTS, 1)[0] == 5
    assert vm.stats.idle_ns > 4 * 9_000_000   # ~10 ms per tick at 100 Hz, skipped in virtual time
    assert vm.stats.by_class["hlt"] == 5


def test_a_guest_that_maps_the_vmm_slot_moves_the_vmm_area():
    # The guest maps its own 4 MiB page at 0xFFC00000 (the VMM's home slot) onto physical
    # 0x00400000: the VMM moves to the highest free slot and the guest's store lands in
    # its own page.
    tables = _page_tables({1023: 0x00400000 | 0x83}, {})
    src = ENABLE_PAGING + "mov dword ptr [0xffc00010], 0x4a4a4a4a\nmov al, 0\nout 0xf4, al\n"
    vm, result = run(kernel(src, chunks=tables))
    _ok(result)
    assert vm.cpu.phys_read(0x00400010, 4) == b"JJJJ"
    assert [(m.old, m.new) for m in vm.stats.vmm_moves] == [(0xFFC00000, 0xFF800000)]
    assert "CR3 load" in vm.stats.vmm_moves[0].why or "paging" in vm.stats.vmm_moves[0].why
    assert vm.stats.vmm_writes == 0


def test_sysenter_and_sysexit_round_trip():
    entry = 0x118000
    handler = f"""
        mov [0x23000], esp
        mov eax, cs
        mov [0x23004], eax
        mov eax, [{layout.state("vflags"):#x}]
        mov [0x23008], eax
        sysexit
    """
    kernel_src = f"""
        mov ecx, 0x174
        mov eax, {KCODE}
        xor edx, edx
        wrmsr
        mov ecx, 0x175
        mov eax, {KSTACK - 0x1000:#x}
        wrmsr
        mov ecx, 0x176
        mov eax, {entry:#x}
        wrmsr
    """ + to_user()
    user = """
        mov ecx, esp
        call here
    here:
        pop edx                  # EDX: where SYSEXIT returns (after the SYSENTER)
        add edx, 6
        sysenter
        mov eax, cs
        mov [0x2300c], eax
        mov eax, ss
        mov [0x23010], eax
        mov [0x23014], esp
        mov al, 0
        out 0xf4, al
    """
    from runtime_guest import asm
    vm, result = run(kernel(kernel_src, user=user, chunks=((entry, asm(handler, entry)),)))
    _ok(result)
    kesp, kcs, vflags, ucs, uss, uesp = words(vm, RESULTS, 6)
    assert kesp == KSTACK - 0x1000 and kcs == KCODE | 1     # SYSENTER_ESP, SYSENTER_CS (RPL 1: ring 1)
    assert not vflags & 0x200                               # SYSENTER clears IF
    assert ucs == UCODE and uss == UDATA and uesp == USTACK   # SYSEXIT: CS/SS from SYSENTER_CS, ESP = ECX
    assert vm.stats.by_class["sysenter"] == 1 and vm.stats.by_class["sysexit"] == 1


def test_an_irq_waits_for_sti_and_arrives_after_the_next_instruction():
    # 1.4 M instructions = 14 ms of virtual time: past the first 10 ms tick, with IF = 0.
    handler = "mov eax, [esp]\nmov [0x23000], eax\nmov al, 0\nout 0xf4, al\n"
    src = PIC_PIT_SETUP + """
        mov ecx, 700000
    wait:
        dec ecx
        jnz wait
        sti
    after_sti:
        nop
        hlt
    """
    vm, result = run(kernel(src, handlers={0x20: (handler, 0, False)}), max_insns=5_000_000)
    _ok(result)
    (frame_eip,) = words(vm, RESULTS, 1)
    assert vm.vcpu.pending == 0
    assert vm.cpu.phys_read(frame_eip, 1) == b"\xf4"   # IRQ0 waited for IF, and for the NOP in STI's shadow


def test_icebp_is_a_debug_trap():
    vm, result = run(kernel(".byte 0xf1\nhlt\n", handlers={1: (SAVE_FRAME, 0, False)}))
    _ok(result)
    _esp, (eip, cs, *_rest) = _frame(vm)
    assert vm.cpu.phys_read(eip, 1) == b"\xf4" and cs == KCODE   # after the ICEBP: a trap


# IRQ0 is raised at the first 10 ms tick while masked at the PIC (IF = 1); the OUT that
# unmasks it must let it in at once, as on hardware, not at the end of a time slice. The
# handler keeps the EIP it interrupted and ends the run.
SAVE_EIP_AND_EXIT = "mov eax, [esp]\nmov [0x23000], eax\nmov al, 0\nout 0xf4, al\n"
UNMASK_LATE = PIC_PIT_SETUP.replace("mov al, 0xfe\n    out 0x21, al", "mov al, 0xff\n    out 0x21, al") + """
        sti
        mov ecx, 700000
    wait:
        dec ecx
        jnz wait
        mov al, 0xfe
        out 0x21, al
        nop
        nop
        mov ecx, 200000
    spin:
        dec ecx
        jnz spin
        hlt
"""


def test_an_irq_unmasked_at_the_pic_arrives_right_after_the_out():
    vm, result = run(kernel(UNMASK_LATE, handlers={0x20: (SAVE_EIP_AND_EXIT, 0, False)}), max_insns=5_000_000)
    _ok(result)
    (frame_eip,) = words(vm, RESULTS, 1)
    assert vm.cpu.phys_read(frame_eip, 3) == b"\x90\x90\xb9"   # the first NOP after the OUT


def test_the_exceptions_that_make_a_double_fault_are_the_sdms():
    # SDM vol. 3 table 6-4/6-5: #DE and #TS #NP #SS #GP are contributory, #PF its own class;
    # every other vector is benign and never combines into #DF. Contributory then
    # contributory, or #PF then #PF or contributory, is #DF; contributory then #PF is serial.
    from runtime.deliver import Injector

    contributory = [0, 10, 11, 12, 13]
    pairs = [(a, b) for a in range(32) for b in range(32) if Injector._double(a, b)]
    assert pairs == sorted([(a, b) for a in contributory for b in contributory]
                           + [(14, b) for b in [*contributory, 14]])


def test_an_interrupt_gate_from_ring3_clears_the_virtual_if_a_trap_gate_does_not():
    for trap, want in ((True, 0x200), (False, 0)):
        vm, result = run(kernel(to_user(), handlers={0x80: (SAVE_FRAME, 3, trap)}, user="int 0x80\nhlt\n"))
        _ok(result)
        _esp, (*_words, vflags) = _frame(vm)
        assert vflags & 0x200 == want, f"trap gate {trap}"


def test_an_interrupt_from_user_mode_without_a_tss_is_a_clean_stop():
    # Without LTR the CPU has no stack to switch to (on hardware #TS, then a triple fault):
    # ring1 stops and says why, at the user instruction after the INT.
    image = kernel(to_user(), handlers={0x80: ("hlt\n", 3, False)}, user="int 0x80\nhlt\n")
    ltr = asm("mov ax, 0x28\nltr ax\n", 0)
    chunks = tuple((a, d.replace(ltr, b"\x90" * len(ltr)) if a == KERNEL else d) for a, d in image.chunks)
    _vm, result = run(RawImage(chunks, image.entry))
    assert isinstance(result, GuestStop)
    assert result.reason == "interrupt from user mode but the guest loaded no TSS"
    assert result.eip == USER + 2


def test_a_user_far_call_to_the_vmms_call_gate_is_the_guests_gp():
    # The VMM's DPL-3 call gate (ring 3 -> 1 deliveries) is no door for a hostile guest: a far
    # CALL to its selector from user mode, with no delivery in flight, faults (#GP at the
    # CALL), and the guest's own handler gets it.
    from runtime.segments import VMM_GATE

    user = f".byte 0x9a\n.long 0\n.word {VMM_GATE:#x}\nhlt\n"       # lcall VMM_GATE:0
    vm, result = run(kernel(to_user(), handlers={13: (SAVE_FRAME, 0, False)}, user=user))
    _ok(result)
    _esp, (_error, eip, cs, *_rest) = _frame(vm)
    assert (eip, cs) == (USER, UCODE)
