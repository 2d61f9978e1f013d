/* The system-call interface between usermode.c (kernel) and user.S (ring 3). */
#ifndef RING1_SAMPLES_USERMODE_H
#define RING1_SAMPLES_USERMODE_H

#define SYSCALL_VECTOR 0x80
#define SYS_WRITE 1     /* ebx = buffer, ecx = length; returns length, or -1 for a bad pointer */
#define SYS_HEX   2     /* ebx = NUL-terminated label, ecx = value: prints "<label>0x<value>" */
#define SYS_EXIT  3     /* ebx = status: ends the run */

/* Paging layout: identity-mapped, 4 KiB pages below 4 MiB (the kernel, U/S = 1 only
 * for the .user section), one 4 MiB user page, one 4 MiB supervisor-only page. */
#define USER_BIG_PAGE  0x00400000   /* 4 MiB, U/S = 1: the kernel leaves a message here */
#define SUPER_BIG_PAGE 0x00800000   /* 4 MiB, U/S = 0: ring 3 reading it faults */

#endif
