/*
 * A Linux init with no libc: the user space of ring1's Linux milestone 2 (issue 15).
 *
 * Linux runs it as /init from the initramfs (bt/initramfs.py packs it), at CPL 3 in ring1.
 * Raw i386 system calls through int $0x80 (arch/x86/entry/syscalls/syscall_32.tbl): it
 * prints a line, mounts /proc, prints the kernel command line from /proc/cmdline, and
 * powers the machine off. With no ACPI (ring1 has none; QEMU is run with acpi=off to be the
 * same machine), reboot(LINUX_REBOOT_CMD_POWER_OFF) finds nothing to switch off: the
 * kernel prints "reboot: Power down", returns, and init's exit panics. So init first asks
 * the kernel for the isa-debug-exit port (ioperm, so the port's bit in its TSS I/O bitmap
 * lets a CPL-3 OUT through) and writes 0 to it: ring1 and QEMU (-device isa-debug-exit)
 * both end there, with exit code 1. reboot(POWER_OFF) stays as the fallback.
 */
#define SYS_exit     1
#define SYS_read     3
#define SYS_write    4
#define SYS_open     5
#define SYS_mount   21
#define SYS_reboot  88
#define SYS_ioperm 101
#define DEBUG_EXIT 0xf4

.macro syscall3 nr, a, b, c
    movl $\nr, %eax
    movl \a, %ebx
    movl \b, %ecx
    movl \c, %edx
    int $0x80
.endm

.text
.globl _start
_start:
    syscall3 SYS_write, $1, $hello, $hello_len

    movl $SYS_mount, %eax
    movl $proc, %ebx            /* source "proc" */
    movl $procdir, %ecx         /* target "/proc" */
    movl $proc, %edx            /* type "proc" */
    xorl %esi, %esi             /* flags */
    xorl %edi, %edi             /* data */
    int $0x80
    testl %eax, %eax
    jnz fail

    syscall3 SYS_open, $cmdline, $0, $0
    testl %eax, %eax
    js fail
    movl %eax, %esi
    syscall3 SYS_read, %esi, $buf, $buf_len
    testl %eax, %eax
    js fail
    movl %eax, %edi
    syscall3 SYS_write, $1, $said, $said_len
    syscall3 SYS_write, $1, $buf, %edi

    syscall3 SYS_write, $1, $bye, $bye_len
    syscall3 SYS_ioperm, $DEBUG_EXIT, $1, $1
    testl %eax, %eax
    jnz power_off
    xorl %eax, %eax
    outb %al, $DEBUG_EXIT

power_off:
    movl $SYS_reboot, %eax
    movl $0xfee1dead, %ebx      /* LINUX_REBOOT_MAGIC1 */
    movl $672274793, %ecx       /* LINUX_REBOOT_MAGIC2 */
    movl $0x4321fedc, %edx      /* LINUX_REBOOT_CMD_POWER_OFF */
    xorl %esi, %esi
    int $0x80

fail:
    syscall3 SYS_write, $1, $failed, $failed_len
    syscall3 SYS_exit, $1, $0, $0

.data
hello:      .ascii "ring1-init: hello from user space\n"
hello_len = . - hello
said:       .ascii "ring1-init: /proc/cmdline: "
said_len = . - said
bye:        .ascii "ring1-init: powering off\n"
bye_len = . - bye
failed:     .ascii "ring1-init: a system call failed\n"
failed_len = . - failed
proc:       .asciz "proc"
procdir:    .asciz "/proc"
cmdline:    .asciz "/proc/cmdline"

.bss
buf:        .space 1024
buf_len = . - buf
.section .note.GNU-stack, "", @progbits
