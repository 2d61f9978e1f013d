/* Group `user_patch` (paging off) and `user_patch_paged` (paging on, every page user
 * accessible): guest user code calls guest-kernel functions that hold sensitive
 * instructions, after the kernel ran them (issue 11, item 2). */
#include "attacks.h"

struct kfn {
    const char *name;
    void (*fn)(void);
};

extern void k_cli(void), k_sti(void), k_pushf(void), k_popf(void), k_wrmsr(void), k_rdmsr(void);
extern void k_cr0(void), k_cr3(void), k_out80(void), k_lsl(void), k_pushcs(void), k_movss(void);
extern void k_sgdt(void), k_invlpg(void);
extern void p_user_jump(void), p_user_read_probe(void), p_user_write_probe(void);
extern char p_user_jump_at[];

static const struct kfn kfns[] = {
    {"cli", k_cli}, {"sti", k_sti}, {"pushf", k_pushf}, {"popf", k_popf}, {"wrmsr", k_wrmsr},
    {"rdmsr", k_rdmsr}, {"mov cr0", k_cr0}, {"mov cr3", k_cr3}, {"out 0x80", k_out80},
    {"lsl", k_lsl}, {"push cs", k_pushcs}, {"mov ss", k_movss}, {"invlpg", k_invlpg},
};

static u32 kernel_eax;
static void (*kernel_fn)(void);

static void call_kernel(void)
{
    u32 eax;

    __asm__ volatile("call *%1" : "=a"(eax) : "r"(kernel_fn) : "ecx", "edx", "memory");
    kernel_eax = eax;
}

static void sgdt_line(const char *who, u32 base)
{
    /* Raw mode cannot hide SGDT from ring 3 (it never faults): under ring1 the user sees the
     * real GDTR, the VMM's (docs/threat-model.md). */
    printf("%s sgdt shows the guest's GDT: %s\n", who, base == (u32)xgdt ? "yes" : "no");
}

void test_user_patch(u32 paging)
{
    u32 i, twice;

    if (paging) {
        paging_identity(1);
        paging_on();
    }
    for (twice = 0; twice < 2; twice++) {
        printf("-- %s pass\n", twice ? "second" : "first");
        for (i = 0; i < sizeof(kfns) / sizeof(kfns[0]); i++) {
            kernel_fn = kfns[i].fn;
            report("kernel", try_kernel(call_kernel), NULL);
            printf("  %s: kernel eax=0x%x\n", kfns[i].name, kernel_eax);
            __asm__ volatile("sti");
            printf("  %s:", kfns[i].name);
            report_user(" user", try_user(kfns[i].fn, 0, 0), kfns[i].fn);
        }
    }
    kernel_fn = k_sgdt;
    try_kernel(call_kernel);
    sgdt_line("kernel", kernel_eax);
    if (!try_user(k_sgdt, 0, 0))
        sgdt_line("user", user_eax);
    if (paging) {
        printf("-- ring 3 jumps into what ring1 keeps at the top of the address space\n");
        report_user("trampoline page", try_user(p_user_jump, 0xFFC15000, 0), (void *)0xFFC15000);
        report_user("VMM code page", try_user(p_user_jump, 0xFFC14000, 0), (void *)0xFFC14000);
        report_user("patch memory", try_user(p_user_jump, 0xFFE00000, 0), (void *)0xFFE00000);
        report_user("read the state page", try_user(p_user_read_probe, 0xFFC16000, 0), NULL);
        report_user("write the patch-writable page", try_user(p_user_write_probe, 0xFFC1B000, 0), NULL);
        paging_off();
    }
}
