/* Probes for the smc group (issue 11, item 9): a fault inside patched code must leave the
 * guest's registers as they were at its instruction, and VMM-made stores into patched code
 * (an emulated REP INSB) must reach the self-modifying-code watch like the guest's own. */
#define PROBE(name) .globl name, name##_at; .type name, @function; name:
#define AT(name) name##_at:

    .data
    .globl regs_seen, pf_target, desc_buf
regs_seen:  .fill 8, 4, 0       /* eax ecx edx ebx esi edi ebp esp-delta */
pf_target:  .long 0
esp_before: .long 0
desc_buf:   .fill 8, 1, 0

    .text
#define SET_REGS \
    movl %esp, esp_before; \
    movl $0xA1A1A1A1, %eax; \
    movl $0xC1C1C1C1, %ecx; \
    movl $0xD1D1D1D1, %edx; \
    movl pf_target, %ebx; \
    movl $0x51515151, %esi; \
    movl $0xD2D2D2D2, %edi
#define SAVE_REGS \
    movl %eax, regs_seen; \
    movl %ecx, regs_seen + 4; \
    movl %edx, regs_seen + 8; \
    movl %ebx, regs_seen + 12; \
    movl %esi, regs_seen + 16; \
    movl %edi, regs_seen + 20; \
    movl %esp, regs_seen + 28; \
    movl esp_before, %eax; \
    subl %eax, regs_seen + 28

PROBE(p_sgdt_pf)
    pushl %ebx
    pushl %esi
    pushl %edi
    SET_REGS
AT(p_sgdt_pf)
    sgdt (%ebx)
    SAVE_REGS
    popl %edi
    popl %esi
    popl %ebx
    ret

PROBE(p_sidt_pf)
    pushl %ebx
    pushl %esi
    pushl %edi
    SET_REGS
AT(p_sidt_pf)
    sidt (%ebx)
    SAVE_REGS
    popl %edi
    popl %esi
    popl %ebx
    ret

PROBE(p_str_pf)
    pushl %ebx
    pushl %esi
    pushl %edi
    SET_REGS
AT(p_str_pf)
    str (%ebx)
    SAVE_REGS
    popl %edi
    popl %esi
    popl %ebx
    ret

/* Patched code the guest then rewrites: CLI traps, gets a window with the MOV after it. */
    .globl k_smc
    .p2align 4
k_smc:
    cli
    movl $0x11111111, %eax
    ret
    nop
    nop

/* REP INSB from port DX, ECX bytes to EDI (the site gets patched on its first run). */
    .globl rep_insb
rep_insb:
    pushl %edi
    movl 8(%esp), %edi
    movl 12(%esp), %ecx
    movl 16(%esp), %edx
    cld
    rep insb
    popl %edi
    ret

    .section .note.GNU-stack, "", @progbits
