/* The ring-3 task. It lives in the page-aligned .user section (common/kernel.ld),
 * the only kernel-image pages mapped U/S = 1, so it is plain assembly that uses
 * nothing outside that section: no kernel .rodata, no helper calls. */
#include "usermode.h"

.macro SYSCALL nr, a, b
    movl $\nr, %eax
    movl \a, %ebx
    movl \b, %ecx
    int $SYSCALL_VECTOR
.endm

    .section .user_text, "ax"
    .globl user_main, user_fault_insn
user_main:
    SYSCALL SYS_WRITE, $hello, $hello_len
    cmpl $hello_len, %eax               /* the return value came back in EAX */
    jne fail

    movl %cs, %edx
    SYSCALL SYS_HEX, $cs_label, %edx
    movl %ss, %edx
    SYSCALL SYS_HEX, $ss_label, %edx

    /* Read the 4 MiB user page directly: a length word, then the text. */
    SYSCALL SYS_WRITE, $big_label, $big_label_len
    movl USER_BIG_PAGE, %edx
    SYSCALL SYS_WRITE, $(USER_BIG_PAGE + 4), %edx

    /* The kernel must refuse to print from a supervisor-only page for us. */
    SYSCALL SYS_WRITE, $SUPER_BIG_PAGE, $16
    cmpl $-1, %eax
    jne fail
    SYSCALL SYS_WRITE, $refused, $refused_len

    SYSCALL SYS_WRITE, $reading, $reading_len
user_fault_insn:
    movl SUPER_BIG_PAGE, %eax           /* #PF: U/S = 0, err = present | user */

    SYSCALL SYS_WRITE, $nofault, $nofault_len
fail:
    SYSCALL SYS_EXIT, $1, $0
1:  jmp 1b

    .section .user_rodata, "a"
hello:      .ascii "user: hello from ring 3\n"
            .set hello_len, . - hello
cs_label:   .asciz "user: cs="
ss_label:   .asciz "user: ss="
big_label:  .ascii "user: the 4 MiB user page says: "
            .set big_label_len, . - big_label
refused:    .ascii "user: kernel refused a supervisor-only buffer\n"
            .set refused_len, . - refused
reading:    .ascii "user: reading a supervisor-only page\n"
            .set reading_len, . - reading
nofault:    .ascii "user: the read did not fault\n"
            .set nofault_len, . - nofault

    .section .user_data, "aw"
    .align 16
    .globl user_stack_top
user_stack:
    .skip 4096
user_stack_top:

    .section .note.GNU-stack, "", @progbits
