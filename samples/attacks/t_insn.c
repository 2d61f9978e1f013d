/* Group `instructions`: what must fault does, as ring1's own CPUID and QEMU say (issue 11,
 * item 8), and SYSENTER/SYSEXIT at CPL 0. */
#include "attacks.h"

#define DECL(p) extern void p(void); extern char p##_at[]
DECL(p_syscall); DECL(p_stac); DECL(p_clac); DECL(p_monitor); DECL(p_mwait); DECL(p_rdpmc);
DECL(p_invpcid); DECL(p_xsetbv); DECL(p_xgetbv); DECL(p_rdtscp); DECL(p_sysexit_k);
DECL(p_sysenter); DECL(p_sysexit); DECL(p_user_sysenter);
extern void sysenter_target(void);
extern u32 sysenter_seen[4], sysenter_user;

static u8 sysenter_stack[1024] ALIGNED(16);

static void wrmsr(u32 index, u32 value)
{
    __asm__ volatile("wrmsr" : : "c"(index), "a"(value), "d"(0));
}

static void cpuid(u32 leaf, u32 *a, u32 *b, u32 *c, u32 *d)
{
    __asm__ volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "a"(leaf), "c"(0));
}

void test_instructions(void)
{
    u32 a, b, c, d, max;

    cpuid(0, &max, &b, &c, &d);
    cpuid(1, &a, &b, &c, &d);
    printf("cpuid.1: monitor %u, osxsave %u\n", (c >> 3) & 1, (c >> 27) & 1);
    b = 0;
    if (max >= 7)
        cpuid(7, &a, &b, &c, &d);
    printf("cpuid.7: smap %u, invpcid %u\n", (b >> 20) & 1, (b >> 10) & 1);

    printf("-- at CPL 0\n");
    report("syscall (EFER.SCE = 0)", try_kernel(p_syscall), p_syscall_at);
    report("stac", try_kernel(p_stac), p_stac_at);
    report("clac", try_kernel(p_clac), p_clac_at);
    report("monitor", try_kernel(p_monitor), p_monitor_at);
    report("mwait", try_kernel(p_mwait), p_mwait_at);
    report("rdpmc", try_kernel(p_rdpmc), p_rdpmc_at);
    report("invpcid", try_kernel(p_invpcid), p_invpcid_at);
    report("xsetbv (CR4.OSXSAVE = 0)", try_kernel(p_xsetbv), p_xsetbv_at);
    report("xgetbv (CR4.OSXSAVE = 0)", try_kernel(p_xgetbv), p_xgetbv_at);
    report("sysexit (SYSENTER_CS = 0)", try_kernel(p_sysexit_k), p_sysexit_k_at);
    report("sysenter (SYSENTER_CS = 0)", try_kernel(p_sysenter), p_sysenter_at);

    wrmsr(0x174, KERNEL_CS);
    wrmsr(0x175, (u32)sysenter_stack + sizeof(sysenter_stack));
    wrmsr(0x176, (u32)sysenter_target);
    report("sysenter (SYSENTER_CS = 0x08)", try_kernel(p_sysenter), p_sysenter_at);
    printf("landed %u, esp is SYSENTER_ESP: %s, IF %u\n", sysenter_seen[0],
           sysenter_seen[1] == (u32)sysenter_stack + sizeof(sysenter_stack) ? "yes" : "no",
           (sysenter_seen[2] >> 9) & 1);
    report("sysexit to ring 3", try_kernel(p_sysexit), p_sysexit_at);
    printf("ring 3 reached with eax=0x%x\n", user_eax);
    sysenter_seen[0] = 0;
    sysenter_user = 1;
    report_user("user sysenter, sysexit back", try_user(p_user_sysenter, 0, 0), p_user_sysenter_at);
    sysenter_user = 0;
    printf("landed %u, IF %u\n", sysenter_seen[0], (sysenter_seen[2] >> 9) & 1);
    wrmsr(0x174, 0);
    report_user("user sysenter (SYSENTER_CS = 0)", try_user(p_user_sysenter, 0, 0), p_user_sysenter_at);
}
