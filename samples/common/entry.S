/* Multiboot (v1) header and the entry point shared by every sample.
 *
 * The loader (QEMU -kernel, GRUB, ring1) enters _start in 32-bit protected mode,
 * flat segments, paging off, IF = 0, with EAX = 0x2BADB002 and EBX = the multiboot
 * information structure. The samples do not reload segment registers until they
 * load a GDT of their own (the loader's GDTR is not guaranteed valid).
 */
#define MB_MAGIC 0x1BADB002
#define MB_FLAGS 0x00000003             /* page-align modules, provide mem_* */

    .section .multiboot, "a"
    .align 4
    .long MB_MAGIC
    .long MB_FLAGS
    .long -(MB_MAGIC + MB_FLAGS)

    .section .bss
    .align 16
stack_bottom:
    .skip 16384
    .globl stack_top
stack_top:

    .text
    .globl _start
    .type _start, @function
_start:
    movl %eax, %esi                     /* keep magic and mbi across the bss clear */
    movl %ebx, %ebp
    cld
    movl $__bss_start, %edi             /* zero .bss even if the loader did not */
    movl $__bss_end, %ecx
    subl %edi, %ecx
    xorl %eax, %eax
    rep stosb
    movl $stack_top, %esp
    pushl %ebp                          /* kmain(magic, mbi) */
    pushl %esi
    call kmain
    pushl %eax
    call debug_exit                     /* never returns */
    .size _start, . - _start

    .section .note.GNU-stack, "", @progbits
