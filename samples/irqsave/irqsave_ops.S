/* irqsave's interrupt-flag operations, one small out-of-line function each, as
 * Linux has local_irq_save/local_irq_restore/local_irq_disable/local_irq_enable.
 *
 * These are the hot sites for ring1's patch manager, which (like VirtualBox PATM)
 * overwrites a 5-byte window starting at the CLI, STI, PUSHF or POPF with a JMP
 * into patch code. So every such instruction is followed by at least 5 bytes of
 * ordinary instructions (a 6-byte INCL of a call counter) before any branch, and
 * no branch targets the inside of a window.
 *
 * Built with -DPV (irqsave-pv) every sensitive instruction becomes a plain memory
 * operation on pv_vflags, a virtual EFLAGS word of which only IF (bit 9) matters:
 * the paravirtualised twin, the same workload that never has to exit.
 */
#define X86_EFLAGS_IF 0x200

    .data
    .align 4
    .globl nr_save, nr_restore, nr_cli, nr_sti
nr_save:    .long 0
nr_restore: .long 0
nr_cli:     .long 0
nr_sti:     .long 0
#ifdef PV
    .globl pv_vflags
pv_vflags:  .long 0x00000002            /* IF = 0, as at multiboot entry */
#endif

    .text

/* u32 local_irq_save(void): the flags as they were, then interrupts off. */
    .p2align 4
    .globl local_irq_save
    .type local_irq_save, @function
local_irq_save:
#ifdef PV
    movl pv_vflags, %eax
    andl $~X86_EFLAGS_IF, pv_vflags
#else
    pushfl
    popl %eax
    cli
#endif
    incl nr_save
    ret
    .size local_irq_save, . - local_irq_save

/* void local_irq_restore(u32 flags) */
    .p2align 4
    .globl local_irq_restore
    .type local_irq_restore, @function
local_irq_restore:
    movl 4(%esp), %eax
#ifdef PV
    andl $X86_EFLAGS_IF, %eax
    orl $0x2, %eax
    movl %eax, pv_vflags
#else
    pushl %eax
    popfl
#endif
    incl nr_restore
    ret
    .size local_irq_restore, . - local_irq_restore

/* void local_irq_disable(void) */
    .p2align 4
    .globl local_irq_disable
    .type local_irq_disable, @function
local_irq_disable:
#ifdef PV
    andl $~X86_EFLAGS_IF, pv_vflags
#else
    cli
#endif
    incl nr_cli
    ret
    .size local_irq_disable, . - local_irq_disable

/* void local_irq_enable(void) */
    .p2align 4
    .globl local_irq_enable
    .type local_irq_enable, @function
local_irq_enable:
#ifdef PV
    orl $X86_EFLAGS_IF, pv_vflags
#else
    sti
#endif
    incl nr_sti
    ret
    .size local_irq_enable, . - local_irq_enable

/* u32 irqs_disabled(void): 1 when IF is clear. */
    .p2align 4
    .globl irqs_disabled
    .type irqs_disabled, @function
irqs_disabled:
#ifdef PV
    movl pv_vflags, %eax
#else
    pushfl
    popl %eax
#endif
    notl %eax
    shrl $9, %eax
    andl $1, %eax
    ret
    .size irqs_disabled, . - irqs_disabled

    .section .note.GNU-stack, "", @progbits
