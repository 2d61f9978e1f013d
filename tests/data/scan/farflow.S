# Scanner fixture: control flow the descent must follow past far transfers, and multiboot
# headers in .text that it must not decode (bt scan tests and golden files).
# Built as patchcases.elf is, and committed:
#   as --32 farflow.S -o farflow.o
#   ld -m elf_i386 -Ttext 0x100000 -e _start farflow.o -o farflow.elf
# Numeric labels leave no symbol: code after them is reached only by following the
# transfer that leads there.
.text
    .align 4
mb1:                            # multiboot v1 header in .text, as xv6 has it
    .long 0x1BADB002
    .long 0x00000003            # page-align, memory info
    .long -(0x1BADB002 + 0x00000003)    # FB 4F 52 E4: decoded, E4 would swallow _start's 0F
.globl _start
.type _start, @function
_start:                         # right after the header, as xv6's entry
    movl %cr4, %eax             # decoded in step with the sweep, not as overlapping code
    orl $0x10, %eax
    movl %eax, %cr4
    lgdt gdtr
    ljmp $0x08, $1f             # reload CS: the standard step after LGDT
1:  movw $0x10, %ax
    movw %ax, %ds
    sgdt gdtr                   # reached only through the far JMP
    cli
    movl $1, %ecx
    pushl $0x08
    pushl $2f
    lret                        # RETF to the label pushed just before it
2:  sidt gdtr
    pushfl
    pushl %cs
    pushl $3f
    iret                        # IRET to the label pushed just before it
3:  sldt %ax
    lcall $0x08, $4f            # far CALL: its target, and the fall-through
    int3                        # a breakpoint the code runs into: it returns after it
    str %ax
    movl $2, %ecx
    pushl $0x08
    pushl %eax
    lret                        # not followed: no immediate was pushed just before
    smsw %ax                    # unreached
    hlt
4:  smsw %ax
    movl $3, %ecx
    lret

    .align 8
mb2:                            # a multiboot2 header, also in .text
    .long 0xE85250D6, 0, mb2_end - mb2, -(0xE85250D6 + (mb2_end - mb2))
    .short 0, 0
    .long 8                     # the end tag
mb2_end:
    cli                         # unreached: nothing falls into or jumps past the header
    ret

.data
gdtr:
    .short 0
    .long 0
