/* The probe framework's assembly: setjmp/longjmp out of exception handlers, and the
 * way into ring 3 and back (attacks.h). */
#define USER_CS 0x18
#define USER_DS 0x20
#define USER_EXIT_VECTOR 0x80

    .text
    .globl probe_setjmp, probe_longjmp, enter_user, user_entry, user_done

/* u32 probe_setjmp(u32 buf[6]): 0 now, the longjmp's value later. */
probe_setjmp:
    movl 4(%esp), %eax
    movl %ebx, 0(%eax)
    movl %esi, 4(%eax)
    movl %edi, 8(%eax)
    movl %ebp, 12(%eax)
    leal 4(%esp), %ecx
    movl %ecx, 16(%eax)
    movl (%esp), %ecx
    movl %ecx, 20(%eax)
    xorl %eax, %eax
    ret

/* void probe_longjmp(u32 buf[6], u32 value) */
probe_longjmp:
    movl 4(%esp), %edx
    movl 8(%esp), %eax
    movl 0(%edx), %ebx
    movl 4(%edx), %esi
    movl 8(%edx), %edi
    movl 12(%edx), %ebp
    movl 16(%edx), %esp
    jmp *20(%edx)

/* void enter_user(u32 eip, u32 esp, u32 eflags, u32 eax): IRET to ring 3. */
enter_user:
    movl 4(%esp), %ecx
    movl 8(%esp), %edx
    movl 12(%esp), %ebx
    movl 16(%esp), %eax
    pushl $(USER_DS | 3)
    pushl %edx
    pushl %ebx
    pushl $(USER_CS | 3)
    pushl %ecx
    movl $(USER_DS | 3), %edx
    movl %edx, %ds
    movl %edx, %es
    movl %edx, %fs
    movl %edx, %gs
    iret

/* Ring 3: call the probe (its address in user_fn), then leave through INT 0x80. */
user_entry:
    call *user_fn
user_done:
    int $USER_EXIT_VECTOR
1:  jmp 1b

    .section .note.GNU-stack, "", @progbits
