/* Group `exceptions`, under paging: #PF error codes, and exceptions raised while the CPU
 * delivers another one (SDM vol. 3 table 6-5: serially, or #DF). */
#include "attacks.h"

#define PTE_P 0x001
#define PTE_W 0x002
#define PTE_U 0x004
#define CR0_WP (1u << 16)

extern void p_ud2_probe(void);
extern void p_load_ds(void), p_read(void), p_write(void), p_rmw(void), p_user_read(void), p_int3(void);
extern char p_load_ds_at[], p_read_at[], p_write_at[], p_rmw_at[], p_user_read_at[], p_int3_at[];
extern u32 sel_arg;

static u8 area[4 * 4096] ALIGNED(4096);     /* pages for the faults, and an IDT across two */

static void pf(const char *name, void (*probe)(void), const char *at, u32 addr)
{
    sel_arg = addr;
    report(name, try_kernel(probe), at);
}

static void load_idt(u32 base)
{
    struct dtr d;

    d.limit = 256 * 8 - 1;
    d.base = base;
    __asm__ volatile("lidt %0" : : "m"(d) : "memory");
}

void test_exceptions_paged(void);
void test_exceptions_paged(void)
{
    u32 page = (u32)area, ro = page + 4096, idt2 = page + 3 * 4096 - 14 * 8, cr0;
    u64 saved;

    printf("-- #PF error codes (paging on, every page user-accessible)\n");
    paging_identity(1);
    paging_on();
    set_pte(page, 0);                                       /* not present */
    set_pte(ro, ro | PTE_P | PTE_U);                        /* read-only */
    pf("read, not present", p_read, p_read_at, page);
    pf("write, not present", p_write, p_write_at, page);
    pf("read-modify-write, not present", p_rmw, p_rmw_at, page);
    pf("write, read-only, CR0.WP=0", p_write, p_write_at, ro);
    __asm__ volatile("movl %%cr0, %0" : "=r"(cr0));
    __asm__ volatile("movl %0, %%cr0" : : "r"(cr0 | CR0_WP) : "memory");
    pf("write, read-only, CR0.WP=1", p_write, p_write_at, ro);
    pf("read-modify-write, read-only, CR0.WP=1", p_rmw, p_rmw_at, ro);
    report_user("user read, not present", try_user(p_user_read, page, 0), p_user_read_at);
    set_pte(page, page | PTE_P | PTE_W);                    /* supervisor only */
    report_user("user read, supervisor page", try_user(p_user_read, page, 0), p_user_read_at);
    set_pte(page, page | PTE_P | PTE_W | PTE_U);
    set_pte(ro, ro | PTE_P | PTE_W | PTE_U);

    printf("-- an exception while delivering another (table 6-5)\n");
    memcpy((void *)idt2, idt, sizeof(idt));
    load_idt(idt2);
    set_pte(page + 2 * 4096, 0);                            /* IDT entries 0-13 */
    sel_arg = VMM_SLOT0;
    report("#GP, its IDT entry not present: the #PF serially", try_kernel(p_load_ds), p_load_ds_at);
    set_pte(page + 2 * 4096, (page + 2 * 4096) | PTE_P | PTE_W | PTE_U);
    load_idt((u32)idt);

    saved = idt[13];
    idt[13] = (saved & ~(0xFFFFull << 16)) | ((u64)SEL_NP_CODE << 16);
    report("#GP, its handler segment not present: #DF", try_kernel(p_load_ds), p_load_ds_at);
    idt[13] = saved;
    saved = idt[14];
    idt[14] = (saved & ~(0xFFFFull << 16)) | ((u64)SEL_NP_CODE << 16);
    set_pte(page, 0);
    pf("#PF, its handler segment not present: #DF", p_read, p_read_at, page);
    set_pte(page, page | PTE_P | PTE_W | PTE_U);
    idt[14] = saved;
    saved = idt[3];
    idt[3] = (saved & ~(0xFFFFull << 16)) | ((u64)SEL_NP_CODE << 16);
    report("int3, its handler segment not present: the #NP serially", try_kernel(p_int3), p_int3_at);
    idt[3] = saved;
    saved = idt[6];
    idt[6] = 0;
    report("ud2, its IDT entry empty: the #GP serially", try_kernel(p_ud2_probe), NULL);
    idt[6] = saved;
    paging_off();
}
