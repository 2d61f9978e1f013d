/* Prints what the loader handed over: EAX, EBX and the bytes of the multiboot
 * information, its memory map, command line and loader name, then exits through
 * isa-debug-exit with 0. */
    .section .multiboot, "a"
    .align 4
    .long 0x1BADB002, 0x00000003, -(0x1BADB002 + 0x00000003)

    .text
    .globl _start
_start:
    mov $stack_top, %esp
    mov %eax, %edi
    mov %ebx, %ebp
    mov $'A', %al
    call putc
    mov %edi, %eax
    call hex32
    call nl
    mov $'B', %al
    call putc
    mov %ebp, %eax
    call hex32
    call nl
    mov %ebp, %esi              /* the info structure: 88 bytes */
    mov $88, %ecx
    call dump
    mov 48(%ebp), %esi          /* the memory map */
    mov 44(%ebp), %ecx
    call dump
    mov 16(%ebp), %esi          /* the command line, with its NUL */
    call dumpstr
    mov 64(%ebp), %esi          /* the boot loader name */
    call dumpstr
    mov $0xF4, %dx
    xor %eax, %eax
    out %eax, %dx
1:  hlt
    jmp 1b

dumpstr:                        /* esi: string; dumps strlen + 1 bytes */
    xor %ecx, %ecx
2:  cmpb $0, (%esi,%ecx)
    je 3f
    inc %ecx
    jmp 2b
3:  inc %ecx
dump:                           /* esi: address, ecx: length -> "R addr len bytes\n" */
    mov $'R', %al
    call putc
    mov %esi, %eax
    call hex32
    mov %ecx, %eax
    call hex32
4:  test %ecx, %ecx
    jz nl
    lodsb
    call hex8
    dec %ecx
    jmp 4b
nl: mov $'\n', %al
putc:
    push %edx
    push %eax
    mov $0x3FD, %dx
5:  in %dx, %al
    test $0x20, %al
    jz 5b
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
    jbe 6f
    add $('a' - '9' - 1), %al
6:  call putc
    pop %eax
    ret

    .data
    .long 0x12345678            /* a data segment after a gap, so the kernel end is not code's */
    .bss
    .align 16
    .skip 4096
stack_top:
    .skip 1000                  /* a bss end that is not page aligned */
    .section .note.GNU-stack, "", @progbits
