/* Kernel functions that hold one sensitive instruction each, with room for ring1's 5-byte
 * patch window after it. The kernel calls each first (under ring1 that patches it), then
 * ring 3 calls it (attacks.h `try_user`): what ring 3 gets must be what the guest's own
 * instruction does at CPL 3, never the patch's work (issue 11, item 2). EAX: the result. */
#define KFN(name) .globl name; .type name, @function; .p2align 4; name:
#define FILL movl $0x12345678, %ecx

    .data
    .globl sgdt_buf
sgdt_buf: .fill 8, 1, 0

    .text
KFN(k_cli)
    cli
    FILL
    movl $1, %eax
    ret
KFN(k_sti)
    sti
    FILL
    movl $1, %eax
    ret
KFN(k_pushf)
    pushfl
    popl %eax
    FILL
    ret
KFN(k_popf)
    pushl $0x202
    popfl
    FILL
    movl $1, %eax
    ret
KFN(k_wrmsr)
    movl $0x174, %ecx
    xorl %edx, %edx
    movl $0x08, %eax
    wrmsr
    FILL
    movl $1, %eax
    ret
KFN(k_rdmsr)
    movl $0x174, %ecx
    rdmsr
    FILL
    ret
KFN(k_cr0)
    movl %cr0, %eax
    FILL
    ret
KFN(k_cr3)
    movl %cr3, %eax
    movl %eax, %cr3
    FILL
    movl $1, %eax
    ret
KFN(k_out80)
    movb $0x42, %al
    outb %al, $0x80
    FILL
    movl $1, %eax
    ret
KFN(k_lsl)
    movl $0x08, %edx
    xorl %eax, %eax
    lsl %edx, %ecx
    setz %al
    ret
KFN(k_pushcs)
    pushl %cs
    popl %eax
    FILL
    ret
KFN(k_movss)
    movl %ss, %eax
    FILL
    ret
KFN(k_sgdt)
    sgdt sgdt_buf
    FILL
    movl sgdt_buf + 2, %eax
    ret
KFN(k_invlpg)
    invlpg sgdt_buf
    FILL
    movl $1, %eax
    ret

    .section .note.GNU-stack, "", @progbits
