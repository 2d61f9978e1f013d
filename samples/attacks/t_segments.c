/* Groups `selectors`, `gates` and `exceptions`: descriptor-table attacks and the exception
 * classes the CPU raises for them (issue 11, items 1, 4, 7, 10, 11, 12). */
#include "attacks.h"

#define DECL(p) extern void p(void); extern char p##_at[]
DECL(p_load_ds); DECL(p_load_ss); DECL(p_ljmp); DECL(p_lcall); DECL(p_ltr); DECL(p_lldt);
DECL(p_xonly_iret); DECL(p_xonly_read); DECL(p_conforming_cli); DECL(p_gate_kernel);
DECL(p_gate_jump); DECL(p_far_call); DECL(p_gate_user); DECL(p_user_lcall); DECL(p_user_ds); DECL(p_user_small_ss);
DECL(p_int13); DECL(p_int14); DECL(p_int8); DECL(p_ud2); DECL(p_rmw); DECL(p_read); DECL(p_write);
DECL(p_user_read);
extern void p_xonly(void), p_conforming(void), p_tls(void);
extern void gate_user_target0(void), gate_kernel_target(void);
extern u32 sel_arg, gate_seen[8], tls_seen[3];

/* ring1's own GDT slots: ring-0 code, ring-0 data, ring-1 code and data, ring-3 code,
 * TSS, call gate, LDT (runtime/segments.py), with the RPL ring1 uses. */
static const u32 vmm_selectors[] = {
    VMM_SLOT0, VMM_SLOT0 + 0x08, VMM_SLOT0 + 0x11, VMM_SLOT0 + 0x19,
    VMM_SLOT0 + 0x23, VMM_SLOT0 + 0x28, VMM_SLOT0 + 0x33, VMM_SLOT0 + 0x38,
};

static u64 big_gdt[8192] ALIGNED(8);       /* a GDT whose limit reaches every slot */
static u32 tls_a = 0xAAAA0001, tls_b = 0xBBBB0002;

static void kernel_sel(const char *what, void (*probe)(void), const char *at, u32 sel)
{
    char name[48];
    u32 i = 0;
    const char *s;

    for (s = what; *s && i < sizeof(name) - 8; s++)
        name[i++] = *s;
    name[i] = 0;
    sel_arg = sel;
    printf("%s 0x%x", name, sel);
    report("", try_kernel(probe), at);
}

void tls_rewrite(void);
void test_exceptions_paged(void);
void tls_rewrite(void)
{
    gdt_write(SEL_TLS, seg_desc((u32)&tls_b, 0xFFFFF, 0x92, 0xC));
}

static void load_gdt(u64 *table, u32 limit)
{
    struct dtr d;

    d.limit = limit;
    d.base = (u32)table;
    __asm__ volatile("lgdt %0" : : "m"(d) : "memory");
}

void test_selectors(void)
{
    u32 i;

    printf("-- ring1's own selectors from ring 0 (beyond the guest's GDT)\n");
    for (i = 0; i < sizeof(vmm_selectors) / sizeof(vmm_selectors[0]); i++) {
        kernel_sel("mov ds,", p_load_ds, p_load_ds_at, vmm_selectors[i]);
        kernel_sel("ljmp", p_ljmp, p_ljmp_at, vmm_selectors[i]);
        kernel_sel("lcall", p_lcall, p_lcall_at, vmm_selectors[i]);
    }
    kernel_sel("ltr", p_ltr, p_ltr_at, VMM_SLOT0 + 0x28);
    kernel_sel("lldt", p_lldt, p_lldt_at, VMM_SLOT0 + 0x38);

    printf("-- ring1's own selectors from ring 3\n");
    for (i = 0; i < sizeof(vmm_selectors) / sizeof(vmm_selectors[0]); i++) {
        printf("user lcall 0x%x", vmm_selectors[i] | 3);
        report_user("", try_user(p_user_lcall, vmm_selectors[i] | 3, 0), p_user_lcall_at);
        printf("user mov ds, 0x%x", vmm_selectors[i] | 3);
        report_user("", try_user(p_user_ds, vmm_selectors[i] | 3, 0), p_user_ds_at);
    }

    printf("-- not-present, wrong-DPL and null segments\n");
    kernel_sel("mov ds,", p_load_ds, p_load_ds_at, SEL_NP_DATA0);
    kernel_sel("mov ds,", p_load_ds, p_load_ds_at, SEL_NP_DATA3);
    kernel_sel("mov ss,", p_load_ss, p_load_ss_at, SEL_NP_DATA0);
    kernel_sel("mov ss,", p_load_ss, p_load_ss_at, SEL_DATA3_RPL);
    kernel_sel("mov ss,", p_load_ss, p_load_ss_at, SEL_DATA3_RPL | 3);
    kernel_sel("mov ss,", p_load_ss, p_load_ss_at, 0);
    kernel_sel("mov ss,", p_load_ss, p_load_ss_at, KERNEL_CS);
    kernel_sel("mov ds,", p_load_ds, p_load_ds_at, TSS_SEL);
    kernel_sel("mov ds,", p_load_ds, p_load_ds_at, SEL_GATE_U);
    kernel_sel("ljmp", p_ljmp, p_ljmp_at, SEL_NP_CODE);
    kernel_sel("ljmp", p_ljmp, p_ljmp_at, KERNEL_DS);
    kernel_sel("ltr", p_ltr, p_ltr_at, KERNEL_DS);
    kernel_sel("lldt", p_lldt, p_lldt_at, TSS_SEL);
    printf("user mov ds, 0x%x", SEL_NP_DATA3 | 3);
    report_user("", try_user(p_user_ds, SEL_NP_DATA3 | 3, 0), p_user_ds_at);
    printf("user mov ds, 0x%x", KERNEL_DS | 3);
    report_user("", try_user(p_user_ds, KERNEL_DS | 3, 0), p_user_ds_at);
    printf("user mov ds, 0x%x", TSS_SEL | 3);
    report_user("", try_user(p_user_ds, TSS_SEL | 3, 0), p_user_ds_at);
    report_user("user push beyond a 4 KiB stack segment", try_user(p_user_small_ss, 0, 0), p_user_small_ss_at);

    printf("-- an execute-only kernel code segment\n");
    report("run in it (mov cr0, cli)", try_kernel(p_xonly), NULL);
    report("iret into it", try_kernel(p_xonly_iret), p_xonly_iret_at);
    report("read through cs in it", try_kernel(p_xonly_read), p_xonly_read_at);

    printf("-- a conforming DPL-0 code segment, called from ring 3\n");
    report_user("lcall, read cs", try_user(p_conforming, 0, 0), NULL);
    report_user("lcall, cli in it", try_user(p_conforming_cli, 0, 0), p_conforming_cli_at);

    printf("-- a descriptor rewritten after the guest loaded it (item 12)\n");
    gdt_write(SEL_TLS, seg_desc((u32)&tls_a, 0xFFFFF, 0x92, 0xC));
    sel_arg = SEL_TLS;
    report("gs from the tls slot", try_kernel(p_tls), NULL);
    printf("gs:0 before 0x%x, after the write 0x%x (cached), after reloading gs 0x%x\n",
           tls_seen[0], tls_seen[1], tls_seen[2]);
    xldt[2] = seg_desc((u32)&tls_a, 0xFFFFF, 0xF2, 0xC);
    sel_arg = 0x14;
    tls_seen[0] = tls_seen[1] = tls_seen[2] = 0;
    report("gs from the ldt's slot 2", try_kernel(p_tls), NULL);
    printf("gs:0 0x%x 0x%x 0x%x (the LDT slot was not rewritten)\n", tls_seen[0], tls_seen[1], tls_seen[2]);
    xldt[2] = seg_desc((u32)&tls_b, 0xFFFFF, 0xF2, 0xC);
    tls_seen[0] = 0;
    report("gs from the rewritten ldt slot", try_kernel(p_tls), NULL);
    printf("gs:0 0x%x\n", tls_seen[0]);
    gdt_write(SEL_TLS, seg_desc(0, 0xFFFFF, 0x92, 0xC));
    xldt[2] = seg_desc(0, 0xFFFFF, 0xF2, 0xC);

    printf("-- a GDT limit of 0xFFFF over a table whose tail is zeros\n");
    for (i = 0; i < XGDT_ENTRIES; i++)
        big_gdt[i] = xgdt[i];
    load_gdt(big_gdt, 0xFFFF);
    kernel_sel("mov ds,", p_load_ds, p_load_ds_at, KERNEL_DS);
    kernel_sel("mov ds,", p_load_ds, p_load_ds_at, VMM_SLOT0);
    kernel_sel("mov ds,", p_load_ds, p_load_ds_at, 0xFFF8);
    kernel_sel("ljmp", p_ljmp, p_ljmp_at, VMM_SLOT0 + 0x10);
    printf("user lcall 0x%x", VMM_SLOT0 + 0x33);
    report_user("", try_user(p_user_lcall, VMM_SLOT0 + 0x33, 0), p_user_lcall_at);
    load_gdt(xgdt, sizeof(xgdt) - 1);
}

void test_gates(void)
{
    u32 r;

    printf("-- a DPL-0 call gate, from ring 0\n");
    r = try_kernel(p_gate_kernel);
    report("lcall", r, p_gate_kernel_at);
    printf("pushed cs=0x%x, return eip is the caller's: %s\n", gate_seen[2],
           gate_seen[1] == (u32)p_gate_kernel_at + 7 ? "yes" : "no");
    report("lcall 0x08 (no gate)", try_kernel(p_far_call), p_far_call_at);
    printf("pushed cs=0x%x\n", gate_seen[2]);
    gate_seen[7] = 0;
    report("ljmp through a DPL-0 gate", try_kernel(p_gate_jump), p_gate_jump_at);
    printf("landed: %u\n", gate_seen[7]);

    printf("-- a DPL-3 call gate to ring 0 with 2 parameters, from ring 3\n");
    r = try_user(p_gate_user, 0, 0);
    report_user("lcall", r, p_gate_user_at);
    printf("kernel esp=0x%x (tss.esp0 - 24: %s), pushed cs=0x%x ss=0x%x, params 0x%x 0x%x, "
           "user esp pushed as it was: %s\n", gate_seen[0], gate_seen[0] == tss.esp0 - 24 ? "yes" : "no",
           gate_seen[2], gate_seen[6], gate_seen[3], gate_seen[4], gate_seen[5] == 0 ? "yes" : "no");

    printf("-- call gates the CPU refuses\n");
    report_user("user lcall through a DPL-0 gate", try_user(p_user_lcall, SEL_GATE_K | 3, 0), p_user_lcall_at);
    report_user("user lcall through a not-present gate", try_user(p_user_lcall, SEL_GATE_NP | 3, 0),
                p_user_lcall_at);
    report_user("user lcall to a not-present segment", try_user(p_user_lcall, SEL_GATE_TO_NP | 3, 0),
                p_user_lcall_at);
    report_user("user lcall to a data segment", try_user(p_user_lcall, SEL_GATE_TO_DATA | 3, 0),
                p_user_lcall_at);
    report_user("user lcall to ring1's ring-0 code", try_user(p_user_lcall, SEL_GATE_VMM3 | 3, 0),
                p_user_lcall_at);
    sel_arg = SEL_GATE_VMM0;
    report("lcall to ring1's ring-0 code", try_kernel(p_lcall), p_lcall_at);
    sel_arg = SEL_GATE_K | 3;
    report("lcall with RPL 3 through a DPL-0 gate", try_kernel(p_lcall), p_lcall_at);

    printf("-- a call gate in the LDT\n");
    xldt[1] = call_gate_desc(KERNEL_CS, (u32)gate_user_target0, 3, 0);
    gate_seen[7] = gate_seen[2] = 0;
    report_user("user lcall 0x0f", try_user(p_user_lcall, LDT_GATE_SEL | 3, 0), p_user_lcall_at);
    printf("landed: %u, pushed cs=0x%x\n", gate_seen[7], gate_seen[2]);

}

void test_exceptions(void)
{
    u32 r;

    printf("-- software interrupts with exception vectors, at CPL 0 (item 7)\n");
    wr_cr2(0x12345000);
    r = try_kernel(p_int13);
    report("int $13", r, p_int13_at);
    printf("frame starts with the return eip (no error code): %s, cr2=0x%08x\n",
           last_trap.err == (u32)p_int13_at ? "yes" : "no", last_trap.cr2);
    r = try_kernel(p_int14);
    report("int $14", r, p_int14_at);
    printf("frame starts with the return eip (no error code): %s, cr2=0x%08x\n",
           last_trap.err == (u32)p_int14_at ? "yes" : "no", last_trap.cr2);
    r = try_kernel(p_int8);
    printf("int $8: vector %u, frame starts with the return eip: %s\n", r - 1,
           last_trap.err == (u32)p_int8_at ? "yes" : "no");
    report("ud2", try_kernel(p_ud2), p_ud2_at);
    test_exceptions_paged();
}
