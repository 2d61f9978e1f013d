/* The program header and the entry point of every minios program. The kernel
 * starts ring 3 at _start with ESP pointing at the address of the argument
 * string, which is where a called function finds its first argument: main(args). */
#include "../abi.h"

    .section .header, "a"
    .long PROGRAM_MAGIC
    .long _start
    .long __file_end - USER_BASE
    .long __mem_end - USER_BASE

    .text
    .globl _start
_start:
    call main
    movl %eax, %ebx                     /* exit(main(args)) */
    movl $SYS_EXIT, %eax
    int $SYSCALL_VECTOR
1:  jmp 1b

    .section .note.GNU-stack, "", @progbits
