/* Probes for the iopl group: ring 3 with the IOPL its kernel gave it in the IRET frame
 * (issue 11, item 5). */
#define PROBE(name) .globl name, name##_at; .type name, @function; name:
#define AT(name) name##_at:

    .data
    .globl ticks, tick_seen
ticks:      .long 0
tick_seen:  .fill 4, 4, 0       /* ticks before, after the CLI loop, after the STI loop */

    .text
PROBE(p_u_out)
    movb $0x42, %al
AT(p_u_out)
    outb %al, $0x80
    ret
PROBE(p_u_in)
AT(p_u_in)
    inb $0x80, %al
    movzbl %al, %eax
    ret
PROBE(p_u_cli)
AT(p_u_cli)
    cli
    sti
    ret
PROBE(p_u_pushf)
AT(p_u_pushf)
    pushfl
    popl %eax
    ret
PROBE(p_u_hlt)
AT(p_u_hlt)
    hlt
    ret

/* CLI, spin with no tick, STI, spin until a tick (or give up). */
PROBE(p_u_ticks)
    cli
    movl ticks, %eax
    movl %eax, tick_seen
    movl $2000000, %ecx
1:  decl %ecx
    jnz 1b
    movl ticks, %eax
    movl %eax, tick_seen + 4
    sti
    movl $20000000, %ecx
2:  movl ticks, %eax
    cmpl tick_seen + 4, %eax
    jne 3f
    decl %ecx
    jnz 2b
3:  movl %eax, tick_seen + 8
    xorl %eax, %eax                      /* how many ticks came is the host's business under QEMU */
    ret

    .section .note.GNU-stack, "", @progbits
