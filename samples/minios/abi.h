/* The interface between the minios kernel and its user programs: the system calls
 * (INT 0x80: EAX = number, EBX/ECX/EDX = arguments, result in EAX, -1 on error),
 * the user address space and the program image header. Included by C and by
 * assembly, so only #defines and a guarded struct. */
#ifndef MINIOS_ABI_H
#define MINIOS_ABI_H

#define SYSCALL_VECTOR 0x80

#define SYS_EXIT      1   /* ebx = status; never returns */
#define SYS_WRITE     2   /* ebx = buffer, ecx = length: to the console; returns length */
#define SYS_READ      3   /* ebx = buffer, ecx = size: one typed line, echoed, without '\n'; returns length */
#define SYS_GETPID    4
#define SYS_YIELD     5
#define SYS_SLEEP     6   /* ebx = timer ticks to sleep at least */
#define SYS_TICKS     7   /* timer ticks since boot */
#define SYS_SPAWN     8   /* ebx = program name, ecx = argument string: runs a program from the disk; returns its pid */
#define SYS_WAIT      9   /* ebx = pid of a child: waits for its end; returns its exit status */
#define SYS_LIST     10   /* ebx = index, ecx = 32-byte name buffer: returns the file's size, -1 past the last */
#define SYS_READFILE 11   /* ebx = name, ecx = buffer, edx = size: returns the bytes read */
#define SYS_SHARED   12   /* maps the one page all processes share at USER_SHARED; returns its address */
#define SYS_PREEMPTS 13   /* how often the timer took the CPU from this process in ring 3 */

/* Every process sees the same layout in its own page directory (one 4 MiB page
 * table per process at USER_BASE); the kernel is identity-mapped, supervisor-only. */
#define USER_BASE      0x40000000   /* the program image, its header first */
#define USER_IMAGE_MAX 0x00100000   /* 1 MiB at most */
#define USER_SHARED    0x40200000   /* the shared page (SYS_SHARED) */
#define USER_STACK_TOP 0x40400000   /* the stack grows down from here */
#define USER_STACK_PAGES 2
#define USER_ARGS_MAX  64           /* the argument string, copied to the top of the stack */

/* A program file: a flat image linked at USER_BASE that starts with this header. */
#define PROGRAM_MAGIC 0x50534F4D    /* "MOSP" */
#ifndef __ASSEMBLER__
struct program_header {
    unsigned int magic;
    unsigned int entry;             /* where ring 3 starts, in [USER_BASE, USER_BASE + file size) */
    unsigned int file_size;         /* bytes of the image in the file, header included */
    unsigned int mem_size;          /* bytes in memory: file_size plus zeroed .bss */
};
#endif

#endif
