/* Probes for the selectors, gates and exceptions groups: each is a function that
 * returns if nothing faults; the label after `_at` marks the instruction expected to
 * fault (attacks.h, probe.c). Arguments come in globals (sel_arg, ...). */
#define KERNEL_CS 0x08
#define KERNEL_DS 0x10
#define SEL_XONLY 0x50
#define SEL_CONFORMING 0x58
#define SEL_GATE_K 0x60
#define SEL_GATE_U 0x68
#define SEL_GATE_K_JMP 0xB0
#define SEL_SMALL_SS3 0xA0

    .data
    .globl sel_arg, far_ptr, gate_seen, jump_back, tls_seen
sel_arg:    .long 0
far_ptr:    .long 0
            .word 0
            .p2align 2
gate_seen:  .fill 8, 4, 0       /* esp, eip, cs, p0, p1, user esp, user ss, flag */
jump_back:  .long 0
tls_seen:   .fill 3, 4, 0

    .text
#define PROBE(name) .globl name, name##_at; .type name, @function; name:
#define AT(name) name##_at:

/* Segment loads of the selector in sel_arg. */
PROBE(p_load_ds)
    movl sel_arg, %eax
AT(p_load_ds)
    movw %ax, %ds
    movl $KERNEL_DS, %eax
    movw %ax, %ds
    ret

PROBE(p_load_ss)
    movl sel_arg, %eax
    movw %ss, %cx
AT(p_load_ss)
    movw %ax, %ss
    movw %cx, %ss
    ret

PROBE(p_ljmp)
    movl sel_arg, %eax
    movw %ax, far_ptr + 4
    movl $1f, far_ptr
AT(p_ljmp)
    ljmp *far_ptr
1:  ret

PROBE(p_lcall)
    movl sel_arg, %eax
    movw %ax, far_ptr + 4
    movl $0, far_ptr
AT(p_lcall)
    lcall *far_ptr
    ret

PROBE(p_ltr)
    movl sel_arg, %eax
AT(p_ltr)
    ltr %ax
    ret

PROBE(p_lldt)
    movl sel_arg, %eax
AT(p_lldt)
    lldt %ax
    ret

/* An execute-only kernel code segment: run a trapping and an IRQ-flag instruction in it,
 * come back by IRET-free far jumps. */
PROBE(p_xonly)
    ljmp $SEL_XONLY, $1f
1:  movl %cr0, %eax
    cli
    ljmp $KERNEL_CS, $2f
2:  ret

/* IRET into the execute-only segment (the frame's CS is RPL 0). */
PROBE(p_xonly_iret)
    pushfl
    pushl $SEL_XONLY
    pushl $1f
AT(p_xonly_iret)
    iret
1:  ljmp $KERNEL_CS, $2f
2:  ret

/* Read through CS while it is execute-only: #GP(0). */
PROBE(p_xonly_read)
    ljmp $SEL_XONLY, $1f
1:
AT(p_xonly_read)
    movl %cs:p_xonly_read, %eax
    ljmp $KERNEL_CS, $2f
2:  ret

/* Ring 3: far CALL to the conforming DPL-0 segment; it runs at CPL 3 and returns CS. */
PROBE(p_conforming)
    lcall $SEL_CONFORMING, $conforming_target
    ret
conforming_target:
    movl %cs, %eax
    lret

PROBE(p_conforming_cli)
    lcall $SEL_CONFORMING, $1f
    ret
1:
AT(p_conforming_cli)
    cli
    lret

/* A descriptor rewritten after it was loaded (Linux's TLS slots): GS cached, then reloaded. */
PROBE(p_tls)
    movl sel_arg, %eax
    movw %ax, %gs
    movl %gs:0, %ecx
    movl %ecx, tls_seen
    call tls_rewrite
    movl %gs:0, %ecx
    movl %ecx, tls_seen + 4
    movl sel_arg, %eax
    movw %ax, %gs
    movl %gs:0, %ecx
    movl %ecx, tls_seen + 8
    xorl %eax, %eax
    movw %ax, %gs
    ret

/* --- call gates ---------------------------------------------------------------------------- */
PROBE(p_gate_kernel)
AT(p_gate_kernel)
    lcall $SEL_GATE_K, $0
    ret
    .globl gate_kernel_target, gate_user_target, gate_user_target0, gate_jump_target
gate_kernel_target:
    movl %esp, gate_seen
    movl (%esp), %eax
    movl %eax, gate_seen + 4
    movl 4(%esp), %eax
    movl %eax, gate_seen + 8
    lret

/* A direct far CALL to the kernel's own code segment (no gate): the CS it pushes. */
PROBE(p_far_call)
AT(p_far_call)
    lcall $0x08, $gate_kernel_target
    ret

PROBE(p_gate_jump)
    movl $1f, jump_back
AT(p_gate_jump)
    ljmp $SEL_GATE_K_JMP, $0
1:  ret
gate_jump_target:
    movl $1, gate_seen + 28
    jmp *jump_back

/* Ring 3: two parameters through the DPL-3 gate to ring 0, back with LRET $8. */
PROBE(p_gate_user)
    pushl $0x22222222
    pushl $0x11111111
    movl %esp, gate_seen + 20
AT(p_gate_user)
    lcall $(SEL_GATE_U | 3), $0
    movl %cs, %eax                       /* LRET $8 released the parameters on this stack too */
    ret
gate_user_target:
    movl %esp, gate_seen
    movl (%esp), %eax
    movl %eax, gate_seen + 4
    movl 4(%esp), %eax
    movl %eax, gate_seen + 8
    movl 8(%esp), %eax
    movl %eax, gate_seen + 12
    movl 12(%esp), %eax
    movl %eax, gate_seen + 16
    movl 20(%esp), %eax
    movl %eax, gate_seen + 24
    movl 16(%esp), %eax
    subl gate_seen + 20, %eax
    movl %eax, gate_seen + 20            /* 0 if the pushed ESP is the user's */
    lret $8
gate_user_target0:
    movl 4(%esp), %eax
    movl %eax, gate_seen + 8
    movl $2, gate_seen + 28
    lret

/* Ring 3: lcall through the selector in EAX (try_user's argument). */
PROBE(p_user_lcall)
    movw %ax, far_ptr + 4
    movl $0, far_ptr
AT(p_user_lcall)
    lcall *far_ptr
    ret

/* Ring 3: load DS with the selector in EAX. */
PROBE(p_user_ds)
AT(p_user_ds)
    movw %ax, %ds
    movl $0x23, %eax
    movw %ax, %ds
    ret

/* Ring 3: a stack segment 4 KiB long; a PUSH below its base faults #SS(0). */
PROBE(p_user_small_ss)
    movl %esp, %edi
    movw %ss, %si
    movl $(SEL_SMALL_SS3 | 3), %eax
    movw %ax, %ss
    movl $0x1000, %esp
    pushl $1
    pushl $2
    movl $0x2000, %esp
AT(p_user_small_ss)
    pushl $3
    movw %si, %ss
    movl %edi, %esp
    ret

/* --- exceptions ----------------------------------------------------------------------------- */
/* Software INT 13 / 14 at CPL 0: no error code, CR2 untouched. */
PROBE(p_int13)
    int $13
AT(p_int13)
    ret
PROBE(p_int14)
    int $14
AT(p_int14)
    ret
PROBE(p_int8)
    int $8
AT(p_int8)
    ret

PROBE(p_ud2)
AT(p_ud2)
    ud2
    ret
    .globl p_ud2_probe
p_ud2_probe:
    ud2
    ret
PROBE(p_int3)
    int3
AT(p_int3)
    ret

/* Read-modify-write and plain accesses of the address in sel_arg (#PF error codes). */
PROBE(p_rmw)
    movl sel_arg, %eax
AT(p_rmw)
    incl (%eax)
    ret
PROBE(p_read)
    movl sel_arg, %eax
AT(p_read)
    movl (%eax), %ecx
    ret
PROBE(p_write)
    movl sel_arg, %eax
AT(p_write)
    movl %ecx, (%eax)
    ret
PROBE(p_user_read)
AT(p_user_read)
    movl (%eax), %ecx
    ret
    .globl p_user_read_probe, p_user_write_probe
p_user_read_probe:
    movl (%eax), %eax
    ret
p_user_write_probe:
    movl $0x5a5a5a5a, (%eax)
    ret
PROBE(p_user_jump)
AT(p_user_jump)
    jmp *%eax

    .section .note.GNU-stack, "", @progbits
