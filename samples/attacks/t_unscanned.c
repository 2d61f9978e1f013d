/* Group `unscanned`: sensitive instructions in code the kernel copies into RAM and runs
 * there, where no scan of its ELF found them (issue 11, item 6). */
#include "attacks.h"

/* Position-independent snippets, copied before they run. */
static const u8 blob_pushf[] = {          /* cli; pushfl; popl %eax; sti; ret */
    0xFA, 0x9C, 0x58, 0xFB, 0xC3,
};
static const u8 blob_popf_hlt[] = {       /* cli; pushl $0x202; popfl; hlt; cli; ret */
    0xFA, 0x68, 0x02, 0x02, 0x00, 0x00, 0x9D, 0xF4, 0xFA, 0xC3,
};
static const u8 blob_popf_pushf[] = {     /* cli; pushl $0x202; popfl; pushfl; popl %eax; cli; ret */
    0xFA, 0x68, 0x02, 0x02, 0x00, 0x00, 0x9D, 0x9C, 0x58, 0xFA, 0xC3,
};

static u8 code_page[3][4096] ALIGNED(4096);
static volatile u32 ticks;

static void on_tick(struct frame *f)
{
    (void)f;
    ticks++;
    pic_eoi(0);
}

static u32 run(u32 n, const u8 *blob, u32 size)
{
    u32 eax;

    memcpy(code_page[n] + 16, blob, size);
    __asm__ volatile("call *%1" : "=a"(eax) : "r"(code_page[n] + 16) : "ecx", "edx", "memory");
    return eax;
}

void test_unscanned(void)
{
    u32 eax;

    printf("-- copied code: cli; pushf\n");
    eax = run(0, blob_pushf, sizeof(blob_pushf));
    printf("pushf after cli shows IF %u\n", (eax >> 9) & 1);
    eax = run(1, blob_popf_pushf, sizeof(blob_popf_pushf));
    printf("pushf after popf of IF=1 shows IF %u\n", (eax >> 9) & 1);
    printf("-- the same page rewritten with the copy again\n");
    eax = run(0, blob_pushf, sizeof(blob_pushf));
    printf("pushf after cli shows IF %u\n", (eax >> 9) & 1);

    printf("-- copied code: popf enables interrupts, then hlt (the timer runs at 100 Hz)\n");
    set_handler(IRQ_BASE, on_tick);
    pic_remap(0xFE, 0xFF);
    pit_start(100);
    run(2, blob_popf_hlt, sizeof(blob_popf_hlt));
    printf("woke from hlt on a tick: %s\n", ticks ? "yes" : "no");
    pit_stop();
    pic_remap(0xFF, 0xFF);
}
