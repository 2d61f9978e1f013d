/* higherhalf: multiboot header and the boot code that runs before paging.
 *
 * The ELF's entry point is _start's virtual address (0xC01000xx); its segments say
 * p_paddr = p_vaddr - 0xC0000000, so the loader (QEMU, ring1) starts _start at its
 * physical address with paging off. Until the jump to `high` this code runs at
 * physical addresses: it only uses V2P() of its symbols. Then paging is on with
 * 4 MiB pages (CR4.PSE): 0-4 MiB identity (the jump needs it), 0xC0000000 onto 0, and
 * 0xFE000000-4 GiB onto itself, a device window as xv6 maps for its APICs, which
 * covers the top 4 MiB slot ring1's VMM area starts in.
 */
#define KERNEL_BASE 0xC0000000
#define V2P(x) ((x) - KERNEL_BASE)
#define PDE_4M 0x83                     /* present, writable, 4 MiB page */

    .section .multiboot, "a"
    .align 4
    .long 0x1BADB002
    .long 0x00000003
    .long -(0x1BADB002 + 0x00000003)

    .section .data
    .align 4096
    .globl boot_pd
boot_pd:
    .long 0 + PDE_4M                    /* 0: identity, for the jump */
    .fill 767, 4, 0
    .long 0 + PDE_4M                    /* 768: 0xC0000000 -> 0 */
    .fill 247, 4, 0
    .long 0xFE000000 + PDE_4M           /* 1016-1023: the device window */
    .long 0xFE400000 + PDE_4M
    .long 0xFE800000 + PDE_4M
    .long 0xFEC00000 + PDE_4M
    .long 0xFF000000 + PDE_4M
    .long 0xFF400000 + PDE_4M
    .long 0xFF800000 + PDE_4M
    .long 0xFFC00000 + PDE_4M

    .section .bss
    .align 16
stack_bottom:
    .skip 16384
stack_top:

    .text
    .globl _start
    .type _start, @function
_start:
    movl %eax, %ebp                     /* magic in EBP, mbi stays in EBX, for kmain */
    movl %cr4, %eax
    orl $0x10, %eax                     /* PSE */
    movl %eax, %cr4
    movl $V2P(boot_pd), %eax
    movl %eax, %cr3
    movl %cr0, %eax
    orl $0x80010000, %eax               /* PG | WP */
    movl %eax, %cr0
    movl $high, %eax
    jmp *%eax
high:
    cld
    movl $__bss_start, %edi             /* zero .bss, the stack in it (nothing on it yet) */
    movl $__bss_end, %ecx
    subl %edi, %ecx
    xorl %eax, %eax
    rep stosb
    movl $stack_top, %esp
    pushl %ebx                          /* kmain(magic, mbi): mbi is a physical address */
    pushl %ebp
    call kmain
    pushl %eax
    call debug_exit
    .size _start, . - _start

    .section .note.GNU-stack, "", @progbits
