/* Kernel context switch and the first entry of a process into ring 3. */

/* void swtch(u32 *save_esp, u32 new_esp): push the callee-saved registers (the C
 * calling convention lets the caller assume nothing else survives), save ESP,
 * load the next context's ESP, pop its registers and return into it. */
    .text
    .globl swtch
swtch:
    movl 4(%esp), %eax
    movl 8(%esp), %edx
    pushl %ebp
    pushl %ebx
    pushl %esi
    pushl %edi
    movl %esp, (%eax)
    movl %edx, %esp
    popl %edi
    popl %esi
    popl %ebx
    popl %ebp
    ret

/* A new process's first return from swtch lands here, on a kernel stack that
 * holds a struct frame (common/desc.h) built by proc.c: the same exit path as
 * common/isr.S, so the IRET goes to ring 3 with the frame's CS, EFLAGS and SS. */
    .globl user_entry
user_entry:
    popal
    popl %es
    popl %ds
    addl $8, %esp                       /* vector, error code */
    iret

    .section .note.GNU-stack, "", @progbits
