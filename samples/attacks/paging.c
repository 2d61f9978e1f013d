/* Paging for the groups that need it: an identity map of the first 16 MiB in 4 KiB pages
 * (attacks.h). */
#include "attacks.h"

#define PTE_P 0x001
#define PTE_W 0x002
#define PTE_U 0x004

u32 pd[1024] ALIGNED(4096);
u32 pt[4][1024] ALIGNED(4096);

void paging_identity(u32 user)
{
    u32 i;

    for (i = 0; i < 4 * 1024; i++)
        pt[i >> 10][i & 1023] = (i << 12) | PTE_P | PTE_W | (user ? PTE_U : 0);
    for (i = 0; i < 4; i++)
        pd[i] = (u32)pt[i] | PTE_P | PTE_W | PTE_U;
}

void paging_on(void)
{
    u32 cr0;

    __asm__ volatile("movl %0, %%cr3" : : "r"(pd) : "memory");
    __asm__ volatile("movl %%cr0, %0" : "=r"(cr0));
    __asm__ volatile("movl %0, %%cr0" : : "r"(cr0 | 0x80000000u) : "memory");
}

void paging_off(void)
{
    u32 cr0;

    __asm__ volatile("movl %%cr0, %0" : "=r"(cr0));
    __asm__ volatile("movl %0, %%cr0" : : "r"(cr0 & ~0x80010000u) : "memory");
}

void set_pte(u32 linear, u32 pte)
{
    pt[linear >> 22][(linear >> 12) & 1023] = pte;
    __asm__ volatile("invlpg (%0)" : : "r"(linear) : "memory");
}
