/* The probe framework (attacks.h): the attacks' GDT and IDT, and running code at CPL 0
 * or 3 with every exception caught and recorded. */
#include "attacks.h"

struct trap last_trap;
u64 xgdt[XGDT_ENTRIES] ALIGNED(8);
u64 xldt[4] ALIGNED(8);
u32 user_fn;
u32 user_eax;

static u32 jb[6];
static volatile u32 probing;
static u8 user_stack[8192] ALIGNED(16);
static u8 kernel_stack[8192] ALIGNED(16);
static u8 small_stack[8192] ALIGNED(16);        /* SEL_SMALL_SS3's 4 KiB, and room past it */

extern void gate_kernel_target(void), gate_user_target(void), gate_jump_target(void);

u64 call_gate_desc(u32 sel, u32 offset, u32 dpl, u32 params)
{
    u32 lo = (offset & 0xFFFF) | (sel << 16);
    u32 hi = (offset & 0xFFFF0000) | 0x8C00 | (dpl << 13) | (params & 0x1F);

    return ((u64)hi << 32) | lo;
}

void gdt_write(u32 sel, u64 desc)
{
    xgdt[sel >> 3] = desc;
}

void attacks_gdt_init(void)
{
    struct dtr d;
    u32 i;

    gdt_init();                          /* the shared layout first (desc.c) */
    for (i = 0; i < GDT_ENTRIES; i++)
        xgdt[i] = gdt[i];
    xgdt[LDT_SEL >> 3] = seg_desc((u32)xldt, sizeof(xldt) - 1, 0x82, 0x0);
    xgdt[SEL_NP_DATA0 >> 3] = seg_desc(0, 0xFFFFF, 0x12, 0xC);      /* P = 0, DPL 0, data */
    xgdt[SEL_NP_DATA3 >> 3] = seg_desc(0, 0xFFFFF, 0x72, 0xC);      /* P = 0, DPL 3, data */
    xgdt[SEL_TLS >> 3] = seg_desc(0, 0xFFFFF, 0x92, 0xC);
    xgdt[SEL_XONLY >> 3] = seg_desc(0, 0xFFFFF, 0x98, 0xC);         /* code, execute-only */
    xgdt[SEL_CONFORMING >> 3] = seg_desc(0, 0xFFFFF, 0x9E, 0xC);    /* code, conforming, readable */
    xgdt[SEL_GATE_K >> 3] = call_gate_desc(KERNEL_CS, (u32)gate_kernel_target, 0, 0);
    xgdt[SEL_GATE_U >> 3] = call_gate_desc(KERNEL_CS, (u32)gate_user_target, 3, 2);
    xgdt[SEL_GATE_NP >> 3] = call_gate_desc(KERNEL_CS, (u32)gate_user_target, 3, 0) & ~(1ull << 47);
    xgdt[SEL_NP_CODE >> 3] = seg_desc(0, 0xFFFFF, 0x1A, 0xC);       /* P = 0, DPL 0, code */
    xgdt[SEL_GATE_TO_NP >> 3] = call_gate_desc(SEL_NP_CODE, (u32)gate_user_target, 3, 0);
    xgdt[SEL_GATE_TO_DATA >> 3] = call_gate_desc(KERNEL_DS, (u32)gate_user_target, 3, 0);
    xgdt[SEL_GATE_VMM3 >> 3] = call_gate_desc(VMM_SLOT0, (u32)gate_user_target, 3, 0);
    xgdt[SEL_GATE_VMM0 >> 3] = call_gate_desc(VMM_SLOT0, (u32)gate_kernel_target, 0, 0);
    xgdt[SEL_SMALL_SS3 >> 3] = seg_desc((u32)small_stack, 0xFFF, 0xF2, 0x4);  /* byte granular */
    xgdt[SEL_DATA3_RPL >> 3] = seg_desc(0, 0xFFFFF, 0xF2, 0xC);
    xgdt[SEL_GATE_K_JMP >> 3] = call_gate_desc(KERNEL_CS, (u32)gate_jump_target, 0, 0);
    xldt[0] = 0;
    xldt[1] = call_gate_desc(KERNEL_CS, (u32)gate_user_target, 3, 0);
    xldt[2] = seg_desc(0, 0xFFFFF, 0xF2, 0xC);

    d.limit = sizeof(xgdt) - 1;
    d.base = (u32)xgdt;
    __asm__ volatile("lgdt %0" : : "m"(d) : "memory");
    tss_load((u32)kernel_stack + sizeof(kernel_stack));
    __asm__ volatile("lldt %w0" : : "r"(LDT_SEL));
}

static void on_trap(struct frame *f)
{
    if (!probing) {
        printf("unexpected vector %u err=0x%x eip=0x%08x cs=0x%x\n", f->vector, f->err, f->eip, f->cs);
        debug_exit(EXIT_UNEXPECTED);
    }
    last_trap.vector = f->vector;
    last_trap.err = f->err;
    last_trap.eip = f->eip;
    last_trap.cs = f->cs;
    last_trap.cr2 = rd_cr2();
    probing = 0;
    probe_longjmp(jb, f->vector + 1);
}

static void on_user_exit(struct frame *f)
{
    if (!probing || (f->cs & 3) != 3) {
        printf("unexpected user exit from cs=0x%x\n", f->cs);
        debug_exit(EXIT_UNEXPECTED);
    }
    user_eax = f->eax;
    probing = 0;
    probe_longjmp(jb, 0x1000);
}

void attacks_idt_init(void)
{
    u32 v;

    idt_init();
    for (v = 0; v < 32; v++)
        set_handler(v, on_trap);
    idt_set_gate(USER_EXIT_VECTOR, 3);
    set_handler(USER_EXIT_VECTOR, on_user_exit);
}

u32 try_kernel(void (*fn)(void))
{
    u32 r = probe_setjmp(jb);

    if (r)
        return r == 0x1000 ? 0 : r;      /* 0x1000: the probe went to ring 3 and left by user_done */
    probing = 1;
    fn();
    probing = 0;
    return 0;
}

u32 try_user(void (*fn)(void), u32 arg, u32 iopl)
{
    u32 r = probe_setjmp(jb);

    if (r)
        return r == 0x1000 ? 0 : r;
    probing = 1;
    user_fn = (u32)fn;
    enter_user((u32)user_entry, (u32)user_stack + sizeof(user_stack), 0x202 | (iopl << 12), arg);
    for (;;)
        ;
}

static void show(const char *name, u32 trapped, const void *at, u32 user)
{
    const struct trap *t = &last_trap;

    if (!trapped) {
        if (user)
            printf("%s: no fault, eax=0x%x\n", name, user_eax);
        else
            printf("%s: no fault\n", name);
        return;
    }
    printf("%s: #%u err=0x%x cs=0x%x eip=", name, t->vector, t->err, t->cs);
    if (at && t->eip == (u32)at)
        printf("at the instruction");
    else
        printf("0x%08x", t->eip);
    if (t->vector == 14)
        printf(" cr2=0x%08x", t->cr2);
    printf("\n");
}

void report(const char *name, u32 trapped, const void *at)
{
    show(name, trapped, at, 0);
}

void report_user(const char *name, u32 trapped, const void *at)
{
    show(name, trapped, at, 1);
}
