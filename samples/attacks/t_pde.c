/* Group `pde`: the guest maps the 4 MiB slot ring1's own area sits in (the top of the
 * address space, at first), with and without INVLPG, and maps ring1's physical pages through
 * its own page tables and writes them (issue 11, item 3). On hardware the slot is the
 * guest's like any other, and physical 0xFFC00000 and up is no RAM. */
#include "attacks.h"

#define PTE_P 0x001
#define PTE_W 0x002

static u32 top_pt[1024] ALIGNED(4096);      /* maps the slot at 0xFFC00000 */
static u32 next_pt[1024] ALIGNED(4096);     /* maps the slot below it, 0xFF800000 */
static u32 alias_pt[1024] ALIGNED(4096);    /* maps ring1's physical pages at 0x02000000 */
static u32 mine[3][1024] ALIGNED(4096);

static const u32 ring1_pages[] = {
    0xFFC00000, 0xFFC11000, 0xFFC14000, 0xFFC16000, 0xFFC1A000, 0xFFC1B000, 0xFFC1C000, 0xFFE00000,
};

static void invlpg(u32 linear)
{
    __asm__ volatile("invlpg (%0)" : : "r"(linear) : "memory");
}

/* Page-table stores must be made, in order, before the accesses they enable: a compiler
 * barrier (the C compiler knows nothing of paging). */
#define BARRIER() __asm__ volatile("" : : : "memory")

static u32 peek(const u32 *p)
{
    return *(const volatile u32 *)p;
}

void test_pde(void)
{
    volatile u32 *top = (volatile u32 *)0xFFC00000, *below = (volatile u32 *)0xFF800000;
    volatile u32 *alias = (volatile u32 *)0x02000000;
    u32 i, old;

    paging_identity(0);
    paging_on();
    printf("the guest's own directory entry 1023: 0x%x, 1022: 0x%x\n", pd[1023], pd[1022]);

    printf("-- map the top slot, then INVLPG\n");
    top_pt[0] = (u32)mine[0] | PTE_P | PTE_W;
    top_pt[0x16] = (u32)mine[1] | PTE_P | PTE_W;
    BARRIER();
    pd[1023] = (u32)top_pt | PTE_P | PTE_W;
    invlpg(0xFFC00000);
    invlpg(0xFFC16000);
    top[0] = 0x600DF00D;
    top[0x16000 / 4] = 0x5747E;
    printf("0xffc00000 reads 0x%x, the page behind it 0x%x; 0xffc16000 reads 0x%x, its page 0x%x\n",
           top[0], peek(mine[0]), top[0x16000 / 4], peek(mine[1]));

    printf("-- map the slot below it with no flush (a not-present entry is never cached)\n");
    next_pt[0] = (u32)mine[2] | PTE_P | PTE_W;
    pd[1022] = (u32)next_pt | PTE_P | PTE_W;
    BARRIER();
    below[0] = 0xB310B310;
    printf("0xff800000 reads 0x%x, the page behind it 0x%x\n", below[0], peek(mine[2]));

    printf("-- ring1's physical pages through the guest's own page table\n");
    for (i = 0; i < sizeof(ring1_pages) / sizeof(ring1_pages[0]); i++)
        alias_pt[i] = ring1_pages[i] | PTE_P | PTE_W;
    pd[8] = (u32)alias_pt | PTE_P | PTE_W;
    BARRIER();
    for (i = 0; i < sizeof(ring1_pages) / sizeof(ring1_pages[0]); i++) {
        volatile u32 *p = alias + i * 1024 + 8;
        old = *p;
        *p = old ^ 0xA5A5A5A5;
        printf("physical 0x%08x: the write %s\n", ring1_pages[i] + 32, *p == (old ^ 0xA5A5A5A5) ? "stuck" : "did not stick");
    }

    printf("-- and the machine still works\n");
    printf("cr0 reads 0x%x; the top slot still reads 0x%x\n", rd_cr0(), top[0]);
    pd[1023] = 0;
    pd[1022] = 0;
    pd[8] = 0;
    BARRIER();
    __asm__ volatile("movl %0, %%cr3" : : "r"(pd) : "memory");
    paging_off();
}
