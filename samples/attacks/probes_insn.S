/* Probes for the instructions group: instructions that must fault, and SYSENTER/SYSEXIT
 * (issue 11, item 8). */
#define PROBE(name) .globl name, name##_at; .type name, @function; name:
#define AT(name) name##_at:

    .data
    .globl sysenter_seen
sysenter_seen: .fill 4, 4, 0     /* landed, esp, eflags, 0 */
sysenter_back: .long 0
sysenter_esp:  .long 0
    .globl sysenter_user
sysenter_user: .long 0            /* 1: the target returns to ring 3 with SYSEXIT */

    .text
PROBE(p_syscall)
AT(p_syscall)
    syscall
    ret
PROBE(p_stac)
AT(p_stac)
    stac
    ret
PROBE(p_clac)
AT(p_clac)
    clac
    ret
PROBE(p_monitor)
    movl $sysenter_seen, %eax
    xorl %ecx, %ecx
    xorl %edx, %edx
AT(p_monitor)
    monitor
    ret
PROBE(p_mwait)
    xorl %eax, %eax
    xorl %ecx, %ecx
AT(p_mwait)
    mwait
    ret
PROBE(p_rdpmc)
    xorl %ecx, %ecx
AT(p_rdpmc)
    rdpmc
    ret
PROBE(p_invpcid)
    movl $sysenter_seen, %eax
    movl $2, %ecx
AT(p_invpcid)
    invpcid (%eax), %ecx
    ret
PROBE(p_xsetbv)
    xorl %ecx, %ecx
    movl $1, %eax
    xorl %edx, %edx
AT(p_xsetbv)
    xsetbv
    ret
PROBE(p_xgetbv)
    xorl %ecx, %ecx
AT(p_xgetbv)
    xgetbv
    ret
PROBE(p_rdtscp)
AT(p_rdtscp)
    rdtscp
    ret
PROBE(p_sysexit_k)
AT(p_sysexit_k)
    sysexit
    ret

/* SYSENTER at CPL 0: the MSRs say 0x08:sysenter_target on sysenter_stack. */
PROBE(p_sysenter)
    movl $1f, sysenter_back
    movl %esp, sysenter_esp
AT(p_sysenter)
    sysenter
1:  ret
    .globl sysenter_target
sysenter_target:
    movl $1, sysenter_seen
    movl %esp, sysenter_seen + 4
    pushfl
    popl sysenter_seen + 8
    cmpl $0, sysenter_user
    jne 2f
    movl sysenter_esp, %esp
    jmp *sysenter_back
2:  movl $user_done, %edx            /* ECX: the user's ESP, as the user passed it */
    sysexit

/* SYSEXIT from CPL 0 to ring 3 at user_done (EDX), user stack in ECX. */
PROBE(p_sysexit)
    movl $user_done, %edx
    movl %esp, %ecx
    subl $256, %ecx
    movl $0x5a5a, %eax
AT(p_sysexit)
    sysexit
    ret

/* Ring 3: SYSENTER with the kernel's MSRs. */
PROBE(p_user_sysenter)
    movl %esp, %ecx
AT(p_user_sysenter)
    sysenter
    ret

    .section .note.GNU-stack, "", @progbits
