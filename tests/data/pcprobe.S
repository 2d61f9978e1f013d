/* Prints the PC platform state a multiboot kernel finds at entry under QEMU's pc
 * machine (SeaBIOS), so that ring1's platform can be checked against it byte for
 * byte: the BIOS data area, the EBDA, the MP floating pointer and configuration
 * table, the local APIC and I/O APIC registers, the CRTC registers, the i8042
 * status and configuration byte, the IDE registers, the text screen, and the
 * multiboot module list. Output lines (all numbers hex):
 *   R addr len bytes        memory at addr
 *   L offset value          local APIC register (MMIO 0xFEE00000 + offset)
 *   I index value           I/O APIC register (IOREGSEL index, IOWIN value)
 *   P port value            an IN of one byte at port (C: CRTC register index value)
 * then exits through isa-debug-exit with 0. */
    .section .multiboot, "a"
    .align 4
    .long 0x1BADB002, 0x00000003, -(0x1BADB002 + 0x00000003)

    .text
    .globl _start
_start:
    mov $stack_top, %esp
    mov %ebx, mbi
    /* the BIOS data area and the EBDA (segment at 0x40E) */
    mov $0x400, %esi
    mov $0x100, %ecx
    call dump
    movzwl 0x40E, %esi
    shl $4, %esi
    mov $0x400, %ecx
    call dump
    /* the MP floating pointer: "_MP_" at a 16-byte boundary of the F segment */
    mov $0xF0000, %esi
1:  cmpl $0x5F504D5F, (%esi)
    je 2f
    add $16, %esi
    cmp $0x100000, %esi
    jb 1b
    jmp 3f
2:  mov %esi, %ebx
    mov $16, %ecx
    call dump
    mov 4(%ebx), %esi           /* the configuration table */
    test %esi, %esi
    jz 3f
    movzwl 4(%esi), %ecx
    movzwl 0x28(%esi), %eax
    add %eax, %ecx
    call dump
3:  /* local APIC registers */
    mov $lapic_regs, %ebx
4:  movzwl (%ebx), %ecx
    cmp $0xFFFF, %ecx
    je 5f
    mov $'L', %al
    call putc
    mov %ecx, %eax
    call hex32
    mov 0xFEE00000(%ecx), %eax
    call hex32
    call nl
    add $2, %ebx
    jmp 4b
5:  /* I/O APIC: ID, version, arbitration, the redirection table */
    xor %ecx, %ecx
6:  cmp $3, %ecx
    je 7f
    cmp $0x10, %ecx
    jb 8f
    cmp $0x40, %ecx
    je 9f
7:  cmp $0x10, %ecx
    jae 8f
    mov $0x10, %ecx
8:  mov $'I', %al
    call putc
    mov %ecx, %eax
    call hex32
    mov %ecx, 0xFEC00000
    mov 0xFEC00010, %eax
    call hex32
    call nl
    inc %ecx
    jmp 6b
9:  /* CRTC registers 0-0x18 through 0x3D4/0x3D5 */
    xor %ecx, %ecx
10: mov $'C', %al
    call putc
    mov %ecx, %eax
    call hex32
    mov $0x3D4, %dx
    mov %cl, %al
    out %al, %dx
    inc %dx
    in %dx, %al
    movzbl %al, %eax
    call hex32
    call nl
    inc %ecx
    cmp $0x19, %ecx
    jb 10b
    /* single ports: VGA misc/status/index, i8042 status, IDE task file */
    mov $ports, %ebx
11: movzwl (%ebx), %edx
    cmp $0xFFFF, %edx
    je 12f
    call port
    add $2, %ebx
    jmp 11b
12: /* the i8042 configuration byte: command 0x20, answer at 0x60 */
    mov $0x64, %dx
13: in %dx, %al
    test $2, %al
    jnz 13b
    mov $0x20, %al
    out %al, %dx
14: in %dx, %al
    test $1, %al
    jz 14b
    mov $0x60, %edx
    call port
    mov $0x64, %edx
    call port
    /* the text screen */
    mov $0xB8000, %esi
    mov $4000, %ecx
    call dump
    /* multiboot modules: the list, each command line, each module's first 32 bytes */
    mov mbi, %ebp
    mov 20(%ebp), %ecx          /* mods_count */
    mov 24(%ebp), %esi          /* mods_addr */
    shl $4, %ecx
    push %esi
    push %ecx
    call dump
    pop %ecx
    pop %ebx
    shr $4, %ecx
15: test %ecx, %ecx
    jz 16f
    push %ecx
    mov 8(%ebx), %esi
    call dumpstr
    mov (%ebx), %esi
    mov 4(%ebx), %ecx
    sub %esi, %ecx
    cmp $32, %ecx
    jbe 17f
    mov $32, %ecx
17: call dump
    pop %ecx
    add $16, %ebx
    dec %ecx
    jmp 15b
16: mov $0xF4, %dx
    xor %eax, %eax
    out %eax, %dx
18: hlt
    jmp 18b

port:                           /* edx: port -> "P port value\n" */
    mov $'P', %al
    call putc
    mov %edx, %eax
    call hex32
    in %dx, %al
    movzbl %al, %eax
    call hex32
    jmp nl

dumpstr:                        /* esi: string; dumps strlen + 1 bytes */
    xor %ecx, %ecx
20: cmpb $0, (%esi,%ecx)
    je 21f
    inc %ecx
    jmp 20b
21: inc %ecx
dump:                           /* esi: address, ecx: length -> "R addr len bytes\n" */
    mov $'R', %al
    call putc
    mov %esi, %eax
    call hex32
    mov %ecx, %eax
    call hex32
    mov $' ', %al
    call putc
22: test %ecx, %ecx
    jz nl
    lodsb
    call hex8
    dec %ecx
    jmp 22b
nl: mov $'\n', %al
putc:
    push %edx
    push %eax
    mov $0x3FD, %dx
23: in %dx, %al
    test $0x20, %al
    jz 23b
    pop %eax
    mov $0x3F8, %dx
    out %al, %dx
    pop %edx
    ret
hex32:                          /* " %08x" */
    push %eax
    mov $' ', %al
    call putc
    pop %eax
    rol $8, %eax
    call hex8
    rol $8, %eax
    call hex8
    rol $8, %eax
    call hex8
    rol $8, %eax
hex8:
    push %eax
    push %eax
    shr $4, %al
    call hex4
    pop %eax
    call hex4
    pop %eax
    ret
hex4:
    push %eax
    and $0xF, %al
    add $'0', %al
    cmp $'9', %al
    jbe 24f
    add $('a' - '9' - 1), %al
24: call putc
    pop %eax
    ret

    .data
    .align 2
lapic_regs:
    .word 0x20, 0x30, 0x80, 0x90, 0xA0, 0xD0, 0xE0, 0xF0
    .word 0x100, 0x110, 0x120, 0x130, 0x140, 0x150, 0x160, 0x170
    .word 0x180, 0x190, 0x1A0, 0x1B0, 0x1C0, 0x1D0, 0x1E0, 0x1F0
    .word 0x200, 0x210, 0x220, 0x230, 0x240, 0x250, 0x260, 0x270
    .word 0x280, 0x300, 0x310, 0x320, 0x330, 0x340, 0x350, 0x360, 0x370
    .word 0x380, 0x390, 0x3E0, 0xFFFF
ports:
    .word 0x3CC, 0x3CA, 0x3C2, 0x3DA, 0x3D4, 0x3C4, 0x3CE
    .word 0x64, 0x1F1, 0x1F2, 0x1F3, 0x1F4, 0x1F5, 0x1F6, 0x1F7, 0x3F6, 0x170, 0x177
    .word 0x92, 0xFFFF
mbi:
    .long 0
    .bss
    .align 16
    .skip 4096
stack_top:
    .section .note.GNU-stack, "", @progbits
