/* Interrupt entry stubs: every vector pushes an error code (a dummy 0 where the CPU
 * pushes none, SDM vol. 3 table 6-1) and its number, then isr_common saves the
 * registers, loads the kernel data segments and calls isr_dispatch(frame). */
#define KERNEL_DS 0x10

.macro STUB n
    .p2align 3
isr_\n:
    .if (\n == 8) || (\n >= 10 && \n <= 14) || (\n == 17)
    .else
    pushl $0
    .endif
    pushl $\n
    jmp isr_common
.endm

    .text
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    STUB \n
    .endr
    .irp n, 32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,47,128
    STUB \n
    .endr

    .globl isr_stub_0x80
    .set isr_stub_0x80, isr_128

isr_common:
    pushl %ds
    pushl %es
    pushal
    movl $KERNEL_DS, %eax
    movl %eax, %ds
    movl %eax, %es
    cld
    pushl %esp                          /* struct frame * */
    call isr_dispatch
    addl $4, %esp
    popal
    popl %es
    popl %ds
    addl $8, %esp                       /* vector, error code */
    iret

    .section .rodata
    .align 4
    .globl isr_stubs
isr_stubs:
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .long isr_\n
    .endr
    .irp n, 32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,47
    .long isr_\n
    .endr

    .section .note.GNU-stack, "", @progbits
