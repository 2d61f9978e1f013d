/* irqsave: spinlock-style critical sections in a loop, the hot-site workload.
 *
 * Each iteration takes a local_irq_save/local_irq_restore section (every eighth
 * one with a nested save/restore inside) and a local_irq_disable/enable section.
 * The flag operations live in irqsave_ops.S. Built with -DPV they touch only a
 * flag word in memory (irqsave-pv); the output is the same byte for byte.
 *
 * Options: iters=N (default 20000); check_if=1 also prints what the saved flags
 * said about IF. By default the output does not depend on IF, because PUSHF does
 * not trap at CPL 1: an unpatched raw-mode guest sees the real IF = 1 there (a leak
 * the `zoo` sample shows on purpose). With check_if=1, QEMU and a correctly patched
 * run print the ring-0 truth and an unpatched run shows the leak.
 */
#include "../common/kernel.h"

#define X86_EFLAGS_IF 0x200
#define DEFAULT_ITERS 20000

u32 local_irq_save(void);
void local_irq_restore(u32 flags);
void local_irq_disable(void);
void local_irq_enable(void);
u32 irqs_disabled(void);
extern u32 nr_save, nr_restore, nr_cli, nr_sti;

/* Global, so they live in memory across the calls: the critical sections really
 * read and write them. */
u32 ctr_a, ctr_b, ctr_c, ctr_d;
u32 saw_if, nested_saw_if, nested;

static void pic_mask_all(void)
{
    /* Whatever the firmware left unmasked (the BIOS timer tick) must not arrive:
     * this kernel has no IDT. */
    outb(0x21, 0xFF);
    outb(0xA1, 0xFF);
}

static void workload(u32 iters)
{
    u32 i;

    for (i = 0; i < iters; i++) {
        u32 flags = local_irq_save();

        if (flags & X86_EFLAGS_IF)
            saw_if++;
        ctr_a += i;
        ctr_b = ctr_b * 33 + (i ^ ctr_a);
        if ((i & 7) == 0) {
            u32 inner = local_irq_save();

            nested++;
            if (inner & X86_EFLAGS_IF)
                nested_saw_if++;
            ctr_c++;
            local_irq_restore(inner);
        }
        local_irq_restore(flags);

        local_irq_disable();
        ctr_d += 3;
        local_irq_enable();
    }
}

static u32 checksum(void)
{
    const u32 v[] = { ctr_a, ctr_b, ctr_c, ctr_d, nr_save, nr_restore, nr_cli, nr_sti };
    u32 h = 2166136261u;                /* FNV-1a over the words */
    u32 i;

    for (i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        h ^= v[i];
        h *= 16777619u;
    }
    return h;
}

u32 kmain(u32 magic, const struct multiboot_info *mbi)
{
    u32 iters, check_if, if_ok;

    serial_init();
    if (magic != MULTIBOOT_BOOTLOADER_MAGIC) {
        printf("irqsave: bad multiboot magic\n");
        return EXIT_FAIL;
    }
    iters = cmdline_u32(cmdline_args(mbi), "iters", DEFAULT_ITERS);
    check_if = cmdline_u32(cmdline_args(mbi), "check_if", 0);
    printf("irqsave: iters=%u\n", iters);

    pic_mask_all();
    if (check_if)
        printf("irqs disabled at entry: %s\n", irqs_disabled() ? "yes" : "no");
    local_irq_enable();
    if (check_if)
        printf("irqs enabled after sti: %s\n", irqs_disabled() ? "no" : "yes");

    workload(iters);

    if_ok = saw_if == iters && nested_saw_if == 0 && !irqs_disabled();
    if (check_if) {
        printf("saved flags had IF: %u of %u\n", saw_if, iters);
        printf("nested saved flags had IF: %u of %u\n", nested_saw_if, nested);
    }
    printf("counter a: 0x%08x\n", ctr_a);
    printf("counter b: 0x%08x\n", ctr_b);
    printf("counter c: %u\n", ctr_c);
    printf("counter d: %u\n", ctr_d);
    printf("calls save/restore/disable/enable: %u %u %u %u\n", nr_save, nr_restore, nr_cli, nr_sti);
    if (check_if)
        printf("irqs enabled at end: %s\n", irqs_disabled() ? "no" : "yes");
    printf("checksum: 0x%08x\n", checksum());
    printf("irqsave: done\n");
    return !check_if || if_ok ? EXIT_OK : EXIT_FAIL;
}
