/* Prints the machine state a multiboot loader hands over: registers, control registers,
 * descriptor-table registers, and the PIC and PIT as the firmware left them, one
 * "name value" line each, then exits through isa-debug-exit with 0. Nothing is changed
 * before it is read, except ESP (the stack) after its value is printed. */
    .section .multiboot, "a"
    .align 4
    .long 0x1BADB002, 0x00000003, -(0x1BADB002 + 0x00000003)

.macro show name, reg
    push \reg
    mov $name_\@, %esi
    call label
    pop %eax
    call hex32
    call nl
    .section .rodata
name_\@: .asciz "\name"
    .text
.endm

    .text
    .globl _start
    .type _start, @function
_start:
    mov %esp, saved_esp
    mov $stack_top, %esp
    push %eax
    pushf
    pop %eax
    mov %eax, saved_eflags
    pop %eax
    show eax, %eax
    show ebx, %ebx
    show esp, saved_esp
    show eflags, saved_eflags
    xor %eax, %eax
    mov %cs, %ax
    show cs, %eax
    mov %ds, %ax
    show ds, %eax
    mov %es, %ax
    show es, %eax
    mov %fs, %ax
    show fs, %eax
    mov %gs, %ax
    show gs, %eax
    mov %ss, %ax
    show ss, %eax
    mov %cr0, %eax
    show cr0, %eax
    mov %cr2, %eax
    show cr2, %eax
    mov %cr3, %eax
    show cr3, %eax
    mov %cr4, %eax
    show cr4, %eax
    sgdt gdtr
    movzwl gdtr, %eax
    show gdtr.limit, %eax
    show gdtr.base, gdtr+2
    sidt idtr
    movzwl idtr, %eax
    show idtr.limit, %eax
    show idtr.base, idtr+2
    xor %eax, %eax
    sldt %ax
    show ldtr, %eax
    str %ax
    show tr, %eax
    xor %eax, %eax
    in $0x21, %al
    show pic.master.imr, %eax
    in $0xa1, %al
    show pic.slave.imr, %eax
    mov $0x0a, %al              /* OCW3: read IRR */
    out %al, $0x20
    in $0x20, %al
    show pic.master.irr, %eax
    mov $0x0b, %al              /* OCW3: read ISR */
    out %al, $0x20
    in $0x20, %al
    show pic.master.isr, %eax
    mov $0xe2, %al              /* read-back: status of channel 0 */
    out %al, $0x43
    in $0x40, %al
    and $0x7f, %al              /* OUT (bit 7) depends on when it is read */
    show pit.ch0.status, %eax
    mov $0xF4, %dx
    xor %eax, %eax
    out %eax, %dx
1:  cli
    hlt
    jmp 1b

label:                          /* esi: name; prints "name " */
    lodsb
    test %al, %al
    jz 2f
    call putc
    jmp label
2:  ret
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
saved_esp: .long 0
saved_eflags: .long 0
gdtr: .skip 6
idtr: .skip 6
    .bss
    .align 16
    .skip 4096
stack_top:
    .section .note.GNU-stack, "", @progbits
