/* higherhalf: a kernel linked high and loaded low, like xv6 and Linux.
 *
 * What it exercises in a VMM: an ELF whose p_vaddr != p_paddr (the patch manager
 * must read and patch its code where the loader put it, and only once paging maps it
 * there), a page directory that maps the top 4 MiB of the address space (ring1's VMM
 * area has to move out of the way), the guest reading back its own page directory
 * (it must find exactly what it wrote), a CR3 reload, a page-directory entry made
 * present without a TLB flush and used at once, an INVLPG after changing one, and a hot
 * loop of interrupt-flag save/restore (PUSHF/CLI/POPF: patched once they are live).
 * Options: iters=N (default 2000).
 */
#include "../common/kernel.h"

#define KERNEL_BASE 0xC0000000u
#define PDE_4M 0x83u

extern u32 boot_pd[1024];

static inline u32 read_cr3(void)
{
    u32 v;
    __asm__ volatile("movl %%cr3, %0" : "=r"(v));
    return v;
}

static inline void write_cr3(u32 v) { __asm__ volatile("movl %0, %%cr3" : : "r"(v) : "memory"); }

static inline void invlpg(u32 va) { __asm__ volatile("invlpg (%0)" : : "r"(va) : "memory"); }

/* Inlined, as Linux's local_irq_save/restore are: the patch manager then finds a
 * 5-byte window around each site in the loop (a 4-byte function would get INT3s). */
static inline u32 irq_save(void)
{
    u32 f;
    __asm__ volatile("pushfl; popl %0; cli" : "=r"(f) : : "memory");
    return f;
}

static inline void irq_restore(u32 f) { __asm__ volatile("pushl %0; popfl" : : "r"(f) : "memory", "cc"); }

static volatile u32 counter;

u32 kmain(u32 magic, const struct multiboot_info *mbi_phys)
{
    /* The loader's pointer is physical; the kernel sees low memory at KERNEL_BASE. */
    const struct multiboot_info *mbi = (const void *)((u32)mbi_phys + KERNEL_BASE);
    u32 pd_phys = (u32)boot_pd - KERNEL_BASE;

    serial_init();
    printf("higherhalf: kmain at 0x%x, page directory at 0x%x\n", (u32)kmain, pd_phys);
    if (magic != MULTIBOOT_BOOTLOADER_MAGIC) {
        printf("multiboot magic: bad\n");
        return EXIT_FAIL;
    }
    const char *args = cmdline_args(mbi);     /* low physical addresses: identity slot 0 */
    printf("cmdline args: [%s]\n", args);
    u32 iters = cmdline_u32(args, "iters", 2000);

    /* The directory is the guest's own: what it wrote is what it reads back. */
    printf("cr3 = 0x%x\n", read_cr3());
    printf("pde[0] = 0x%08x pde[768] = 0x%08x pde[1016] = 0x%08x pde[1023] = 0x%08x\n",
           boot_pd[0], boot_pd[768], boot_pd[1016], boot_pd[1023]);

    /* Done with the identity mapping: drop it, reload CR3. */
    boot_pd[0] = 0;
    write_cr3(read_cr3());

    /* A new 4 MiB page used at once, no flush (legal: nothing not-present is cached). */
    boot_pd[769] = 0x00400000u | PDE_4M;          /* 0xC0400000 -> 4 MiB */
    boot_pd[832] = 0x00400000u | PDE_4M;          /* 0xD0000000 -> 4 MiB, an alias */
    *(volatile u32 *)0xD0000010u = 0x600dcafeu;
    printf("alias read: 0x%x\n", *(volatile u32 *)0xC0400010u);

    /* Repoint one, then INVLPG: the new page from then on. */
    boot_pd[770] = 0x00800000u | PDE_4M;          /* 0xC0800000 -> 8 MiB */
    boot_pd[832] = 0x00800000u | PDE_4M;
    invlpg(0xD0000000u);
    *(volatile u32 *)0xD0000020u = 0xfeedf00du;
    printf("after invlpg: 0x%x 0x%x\n", *(volatile u32 *)0xC0800020u, *(volatile u32 *)0xC0400020u);

    /* The hot path kernels patch: save flags, CLI, restore flags. */
    for (u32 i = 0; i < iters; i++) {
        u32 f = irq_save();
        counter++;
        irq_restore(f);
    }
    printf("irq save/restore: %u rounds\n", counter);
    printf("higherhalf: bye\n");
    return EXIT_OK;
}
