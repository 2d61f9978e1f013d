/* Group `smc`: faults inside patched code and VMM-made stores into it (issue 11, item 9). */
#include "attacks.h"

#define PTE_P 0x001
#define PTE_W 0x002

extern void p_sgdt_pf(void), p_sidt_pf(void), p_str_pf(void), k_smc(void);
extern char p_sgdt_pf_at[], p_sidt_pf_at[], p_str_pf_at[];
extern u32 regs_seen[8], pf_target;
extern void rep_insb(u8 *dst, u32 count, u32 port);

static u8 demand[4096] ALIGNED(4096);     /* demand-paged: not present until it faults */
static u8 scratch[16];
static u32 faults;

static void on_pf_map(struct frame *f)
{
    u32 cr2 = rd_cr2();

    (void)f;
    faults++;
    set_pte(cr2 & ~0xFFFu, (cr2 & ~0xFFFu) | PTE_P | PTE_W);   /* then IRET re-runs it */
}

static void restarted(const char *name, void (*probe)(void))
{
    u32 i;

    for (i = 0; i < 8; i++)
        regs_seen[i] = 0;
    faults = 0;
    set_pte((u32)demand, 0);
    pf_target = (u32)demand + 8;
    report(name, try_kernel(probe), NULL);
    printf("  page faults %u; eax 0x%x ecx 0x%x edx 0x%x ebx %s esi 0x%x edi 0x%x, esp moved by %d\n",
           faults, regs_seen[0], regs_seen[1], regs_seen[2],
           regs_seen[3] == (u32)demand + 8 ? "kept" : "changed", regs_seen[4], regs_seen[5], (s32)regs_seen[7]);
}

static u32 call_smc(void)
{
    u32 eax;

    __asm__ volatile("call *%1" : "=a"(eax) : "r"(k_smc) : "ecx", "edx", "memory");
    __asm__ volatile("sti");
    return eax;
}

void test_smc(void)
{
    u32 i;

    printf("-- a demand-paged store inside patched code, restarted by the #PF handler\n");
    paging_identity(0);
    paging_on();
    set_handler(14, on_pf_map);
    for (i = 0; i < 2; i++) {
        restarted("sgdt to a not-present page", p_sgdt_pf);
        restarted("sidt to a not-present page", p_sidt_pf);
        restarted("str to a not-present page", p_str_pf);
    }
    set_handler(14, NULL);
    attacks_idt_init();
    paging_off();

    printf("-- REP INSB into patched code\n");
    printf("k_smc returns 0x%x\n", call_smc());
    printf("k_smc returns 0x%x\n", call_smc());
    outb(0x3FF, 0x90);                                   /* the UART's scratch register */
    rep_insb(scratch, 1, 0x3FF);                          /* the REP INSB site, patched here */
    rep_insb(scratch, 4, 0x3FF);
    rep_insb((u8 *)k_smc, 1, 0x3FF);                      /* CLI -> NOP */
    printf("after INSB of a NOP over the CLI: 0x%x\n", call_smc());
    outb(0x3FF, 0x22);
    rep_insb((u8 *)k_smc + 2, 4, 0x3FF);                  /* the MOV's immediate */
    printf("after INSB of 0x22 x4 over the immediate: 0x%x\n", call_smc());
    *(volatile u8 *)((u8 *)k_smc + 2) = 0x33;
    printf("after a store of 0x33 over its low byte: 0x%x\n", call_smc());
}
