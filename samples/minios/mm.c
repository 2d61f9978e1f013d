/* Memory: a free list of 4 KiB physical pages, and the kernel's half of every page
 * directory. Every directory maps the same kernel view (Intel SDM vol. 3, 4.3):
 * RAM identity-mapped and supervisor-only (page 0 left out, so NULL faults; a
 * 4 KiB page table for the first 4 MiB, 4 MiB pages above) and the APIC pages,
 * uncached. Each process adds one user page table at USER_BASE (proc.c). */
#include "minios.h"

#define MiB (1024 * 1024)
#define BIG_PAGE (4 * MiB)
#define POOL_MAX (4 * MiB)              /* plenty for NPROC small processes */
#define CR0_PG (1u << 31)
#define CR4_PSE (1u << 4)

static u32 kpgdir[1024] ALIGNED(PAGE_SIZE);
static u32 low_pt[1024] ALIGNED(PAGE_SIZE);     /* 0-4 MiB in 4 KiB pages */
static u32 dev_pt[2][1024] ALIGNED(PAGE_SIZE);  /* the local APIC's and the I/O APIC's 4 MiB */
static u32 dev_pts_used;

static u32 *free_list;                  /* each free page holds the next one's address */
static u32 nfree, pool_lo, pool_hi;

void page_free(void *page)
{
    u32 a = (u32)page;

    if (a & (PAGE_SIZE - 1) || a < pool_lo || a >= pool_hi)
        panic("page_free of a page not from the pool", a);
    *(u32 **)page = free_list;
    free_list = page;
    nfree++;
}

void *page_alloc(void)
{
    u32 *p = free_list;

    if (!p)
        panic("out of memory", nfree);
    free_list = *(u32 **)p;
    nfree--;
    memset(p, 0, PAGE_SIZE);
    return p;
}

u32 pages_free(void)
{
    return nfree;
}

static void map_device(u32 addr)
{
    u32 pde = addr >> 22;
    u32 *pt;

    if (kpgdir[pde] & PDE_PS || pde == USER_BASE >> 22)
        panic("device page overlaps RAM or user space", addr);
    if (!(kpgdir[pde] & PTE_P)) {
        if (dev_pts_used == 2)
            panic("too many device windows", addr);
        pt = dev_pt[dev_pts_used++];
        kpgdir[pde] = (u32)pt | PTE_P | PTE_W;
    }
    pt = (u32 *)(kpgdir[pde] & ~(PAGE_SIZE - 1));
    pt[(addr >> 12) & 1023] = (addr & ~(PAGE_SIZE - 1)) | PTE_PCD | PTE_PWT | PTE_W | PTE_P;
}

void mm_init(u32 pool_start, u32 pool_end, u32 ram_end, u32 lapic, u32 ioapic)
{
    u32 a, cr0, cr4;

    for (a = PAGE_SIZE; a < BIG_PAGE; a += PAGE_SIZE)
        low_pt[a >> 12] = a | PTE_W | PTE_P;
    kpgdir[0] = (u32)low_pt | PTE_W | PTE_P;
    for (a = BIG_PAGE; a + BIG_PAGE <= ram_end && a < USER_BASE; a += BIG_PAGE)
        kpgdir[a >> 22] = a | PDE_PS | PTE_W | PTE_P;
    map_device(lapic);
    map_device(ioapic);

    pool_lo = (pool_start + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1);
    pool_hi = pool_end < a ? pool_end : a;                  /* mapped RAM only */
    if (pool_hi > pool_lo + POOL_MAX)
        pool_hi = pool_lo + POOL_MAX;
    for (a = pool_hi; a > pool_lo; a -= PAGE_SIZE)          /* low pages come out first */
        page_free((void *)(a - PAGE_SIZE));

    load_cr3(kpgdir);
    __asm__ volatile("movl %%cr4, %0" : "=r"(cr4));
    __asm__ volatile("movl %0, %%cr4" : : "r"(cr4 | CR4_PSE) : "memory");
    __asm__ volatile("movl %%cr0, %0" : "=r"(cr0));
    __asm__ volatile("movl %0, %%cr0" : : "r"(cr0 | CR0_PG) : "memory");
}

u32 *kernel_pgdir(void)
{
    return kpgdir;
}

u32 *pgdir_new(void)
{
    u32 *d = page_alloc();

    memcpy(d, kpgdir, PAGE_SIZE);
    return d;
}

void load_cr3(u32 *pgdir)
{
    __asm__ volatile("movl %0, %%cr3" : : "r"(pgdir) : "memory");
}
