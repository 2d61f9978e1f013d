# Scanner fixture: one site per patch-window rule (bt scan tests and golden files).
# Built by tests/test_scan_golden.py's recipe, committed so the golden files never depend
# on the local binutils:
#   as --32 patchcases.S -o patchcases.o
#   ld -m elf_i386 -Ttext 0x100000 -e _start patchcases.o -o patchcases.elf
.text
.globl _start
.type _start, @function
_start:
    cli                         # 0x100000  jump: mov imm32 follows, no target, no block end
    movl $1, %eax
    call fn_ret
    call fn_target
    call fn_page
    call fn_overlap
    call fn_cover
    je   after
    hlt
after:
    ret

.type fn_ret, @function
fn_ret:
    sti                         # int3: the RET at +1 ends the block inside the window
    ret
    inb %dx, %al                # unreached: nothing jumps here
    ret

.type fn_target, @function
fn_target:
    pushf                       # int3: the loop below jumps to +1
1:  nop
    nop
    nop
    nop
    decl %ecx
    jne 1b
    ret

.org 0xffe, 0x90
.type fn_page, @function
fn_page:
    cli                         # 0x100ffe: int3, its window crosses into the next page
    movl $2, %eax
    ret

.type fn_overlap, @function
fn_overlap:
    je 2f+1                     # a branch into the middle of the next instruction
2:  .byte 0xb8                  # mov eax, imm32 ... whose first immediate byte is
    cli                         # ... a CLI when entered at 2f+1
    nop
    nop
    nop
    ret

.type fn_cover, @function
fn_cover:
    je 4f+1                     # into the immediate of the MOV below: decodes as
4:  movb $0xb8, %al             # "mov eax, imm32" at 4f+1, running through ...
    nop
    cli                         # ... this CLI's byte: trap-only although the sweep decoded it
    nop
    nop
    ret
