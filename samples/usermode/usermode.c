/* usermode: paging with 4 KiB and 4 MiB (PSE) pages, CR0.WP, a TSS with ss0:esp0,
 * ring-3 code and data segments, an IDT with an INT 0x80 gate at DPL 3 and a #PF
 * handler. The kernel first takes a write-protect fault of its own (and fixes it),
 * then enters ring 3 with IRET; the ring-3 task (user.S) makes system calls to
 * print, then reads a supervisor-only page. The #PF handler prints CR2 and the
 * error code and ends the run through debug-exit. No options. */
#include "../common/desc.h"
#include "usermode.h"

#define PTE_P 0x001
#define PTE_W 0x002
#define PTE_U 0x004
#define PDE_PS 0x080
#define CR0_PG (1u << 31)
#define CR0_WP (1u << 16)
#define CR4_PSE (1u << 4)
#define PF_ERR_P 1
#define PF_ERR_W 2
#define PF_ERR_U 4

extern char __user_start[], __user_end[];
extern char user_main[], user_fault_insn[], user_stack_top[];

static u32 page_dir[1024] ALIGNED(4096);
static u32 page_table0[1024] ALIGNED(4096);
static volatile u32 ro_page[1024] ALIGNED(4096);       /* mapped read-only: the WP test */
static u8 kstack[8192] ALIGNED(16);                    /* TSS esp0: ring 3 -> ring 0 */
static u32 syscalls;

static u32 read_cr2(void)
{
    u32 v;

    __asm__ volatile("movl %%cr2, %0" : "=r"(v));
    return v;
}

static int user_range(u32 p, u32 n)
{
    u32 us = (u32)__user_start, ue = (u32)__user_end;

    if (p + n < p)
        return 0;
    return (p >= us && p + n <= ue) || (p >= USER_BIG_PAGE && p + n <= USER_BIG_PAGE + 0x400000);
}

static void on_syscall(struct frame *f)
{
    if (syscalls++ == 0)
        printf("kernel: first syscall frame cs=0x%x ss=0x%x from ring %u\n", f->cs, f->user_ss, f->cs & 3);
    switch (f->eax) {
    case SYS_WRITE: {
        const char *p = (const char *)f->ebx;
        u32 i;

        if (!user_range(f->ebx, f->ecx)) {
            f->eax = (u32)-1;
            return;
        }
        for (i = 0; i < f->ecx; i++)
            serial_putc(p[i]);
        f->eax = f->ecx;
        return;
    }
    case SYS_HEX:
        if (!user_range(f->ebx, 16)) {
            f->eax = (u32)-1;
            return;
        }
        printf("%s0x%x\n", (const char *)f->ebx, f->ecx);
        f->eax = 0;
        return;
    case SYS_EXIT:
        printf("kernel: user exit %u\n", f->ebx);
        debug_exit(f->ebx ? EXIT_FAIL : EXIT_OK);
    default:
        f->eax = (u32)-1;
    }
}

static void on_page_fault(struct frame *f)
{
    u32 cr2 = read_cr2();

    printf("#PF cr2=0x%08x err=0x%x\n", cr2, f->err);
    if (!(f->err & PF_ERR_U) && cr2 == (u32)ro_page && f->err == (PF_ERR_P | PF_ERR_W)) {
        /* The kernel's own write to a read-only page, refused because CR0.WP = 1. */
        printf("kernel write to a read-only page: fixing the PTE\n");
        page_table0[cr2 >> 12] |= PTE_W;
        __asm__ volatile("invlpg (%0)" : : "r"(cr2) : "memory");
        return;                         /* IRET re-runs the write */
    }
    if (f->err & PF_ERR_U) {
        printf("#PF from ring %u, at the user load: %s\n", f->cs & 3,
               f->eip == (u32)user_fault_insn ? "yes" : "no");
        printf("usermode: done\n");
        debug_exit(cr2 == SUPER_BIG_PAGE && f->err == (PF_ERR_P | PF_ERR_U) ? EXIT_OK : EXIT_FAIL);
    }
    printf("unexpected kernel page fault at eip=0x%08x\n", f->eip);
    debug_exit(EXIT_UNEXPECTED);
}

static void paging_init(void)
{
    u32 i, cr0, cr4;
    static const char msg[] = "hello from a 4 MiB page\n";

    for (i = 1; i < 1024; i++) {        /* page 0 stays unmapped: NULL faults */
        u32 a = i << 12, fl = PTE_P | PTE_W;

        if (a >= (u32)__user_start && a < (u32)__user_end)
            fl |= PTE_U;
        if (a == (u32)ro_page)
            fl = PTE_P;
        page_table0[i] = a | fl;
    }
    page_dir[0] = (u32)page_table0 | PTE_P | PTE_W | PTE_U;            /* the PTEs decide U/S */
    page_dir[USER_BIG_PAGE >> 22] = USER_BIG_PAGE | PDE_PS | PTE_P | PTE_W | PTE_U;
    page_dir[SUPER_BIG_PAGE >> 22] = SUPER_BIG_PAGE | PDE_PS | PTE_P | PTE_W;

    __asm__ volatile("movl %0, %%cr3" : : "r"(page_dir) : "memory");
    __asm__ volatile("movl %%cr4, %0" : "=r"(cr4));
    __asm__ volatile("movl %0, %%cr4" : : "r"(cr4 | CR4_PSE) : "memory");
    __asm__ volatile("movl %%cr0, %0" : "=r"(cr0));
    __asm__ volatile("movl %0, %%cr0" : : "r"(cr0 | CR0_PG | CR0_WP) : "memory");

    /* Through the new mappings: a message for ring 3 and a secret it must not read. */
    *(volatile u32 *)USER_BIG_PAGE = sizeof(msg) - 1;
    memcpy((void *)(USER_BIG_PAGE + 4), msg, sizeof(msg) - 1);
    *(volatile u32 *)SUPER_BIG_PAGE = 0x5EC12E7;
}

static NORETURN void enter_ring3(void)
{
    __asm__ volatile(
        "movl %0, %%eax\n\t"
        "movl %%eax, %%ds\n\t"
        "movl %%eax, %%es\n\t"
        "movl %%eax, %%fs\n\t"
        "movl %%eax, %%gs\n\t"
        "pushl %0\n\t"                  /* ss */
        "pushl %1\n\t"                  /* esp */
        "pushl $0x202\n\t"              /* eflags: IF = 1 (the PIC masks everything), IOPL 0 */
        "pushl %2\n\t"                  /* cs */
        "pushl %3\n\t"                  /* eip */
        "iret"
        : : "i"(USER_DS | 3), "r"(user_stack_top), "i"(USER_CS | 3), "r"(user_main) : "eax", "memory");
    __builtin_unreachable();
}

u32 kmain(u32 magic, const struct multiboot_info *mbi)
{
    u32 cr0, cr4;

    (void)mbi;
    serial_init();
    printf("usermode: ring1 sample kernel\n");
    if (magic != MULTIBOOT_BOOTLOADER_MAGIC) {
        printf("bad multiboot magic\n");
        return EXIT_FAIL;
    }
    gdt_init();
    idt_init();
    idt_set_gate(SYSCALL_VECTOR, 3);    /* DPL 3: ring 3 may INT 0x80 */
    set_handler(SYSCALL_VECTOR, on_syscall);
    set_handler(14, on_page_fault);
    pic_remap(0xFF, 0xFF);
    tss_load((u32)kstack + sizeof(kstack));

    paging_init();
    __asm__ volatile("movl %%cr0, %0" : "=r"(cr0));
    __asm__ volatile("movl %%cr4, %0" : "=r"(cr4));
    printf("paging: cr0.pg=%u cr0.wp=%u cr4.pse=%u\n", cr0 >> 31, (cr0 >> 16) & 1, (cr4 >> 4) & 1);
    printf("user pages: 0x%08x-0x%08x, 4 MiB pages: 0x%08x (user), 0x%08x (supervisor)\n",
           (u32)__user_start, (u32)__user_end, USER_BIG_PAGE, SUPER_BIG_PAGE);

    ro_page[0] = 0x600D;                /* faults once: CR0.WP applies to the kernel too */
    printf("write after the fix: 0x%x\n", ro_page[0]);

    printf("entering ring 3\n");
    enter_ring3();
}
