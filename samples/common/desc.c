#include "desc.h"

/* Flat 4 GiB segments (Intel SDM vol. 3, 3.4.5): kernel code/data at DPL 0, user
 * code/data at DPL 3, then the TSS and an LDT. */
u64 gdt[GDT_ENTRIES] ALIGNED(8);
u64 idt[256] ALIGNED(8);
u64 ldt[2] ALIGNED(8);
struct tss32 tss ALIGNED(16);

static handler_fn handlers[256];
extern u32 isr_stubs[];                 /* isr.S: entry points for vectors 0-47 */
extern char isr_stub_0x80[];

u64 seg_desc(u32 base, u32 limit, u32 access, u32 flags)
{
    u32 lo = (limit & 0xFFFF) | (base << 16);
    u32 hi = ((base >> 16) & 0xFF) | (access << 8) | (limit & 0xF0000) | (flags << 20) | (base & 0xFF000000);

    return ((u64)hi << 32) | lo;
}

void gdt_init(void)
{
    struct dtr d;

    gdt[0] = 0;
    gdt[KERNEL_CS >> 3] = seg_desc(0, 0xFFFFF, 0x9A, 0xC);     /* present, DPL 0, code, readable */
    gdt[KERNEL_DS >> 3] = seg_desc(0, 0xFFFFF, 0x92, 0xC);     /* present, DPL 0, data, writable */
    gdt[USER_CS >> 3] = seg_desc(0, 0xFFFFF, 0xFA, 0xC);       /* DPL 3 code */
    gdt[USER_DS >> 3] = seg_desc(0, 0xFFFFF, 0xF2, 0xC);       /* DPL 3 data */
    gdt[TSS_SEL >> 3] = seg_desc((u32)&tss, sizeof(tss) - 1, 0x89, 0x0);    /* 32-bit TSS, available */
    gdt[LDT_SEL >> 3] = seg_desc((u32)ldt, sizeof(ldt) - 1, 0x82, 0x0);     /* LDT */
    ldt[0] = 0;
    ldt[1] = seg_desc(0, 0xFFFFF, 0x92, 0xC);                  /* selector 0x0C: a flat data segment */

    d.limit = sizeof(gdt) - 1;
    d.base = (u32)gdt;
    __asm__ volatile(
        "lgdt %0\n\t"
        "ljmp %1, $1f\n"
        "1:\n\t"
        "movl %2, %%eax\n\t"
        "movl %%eax, %%ds\n\t"
        "movl %%eax, %%es\n\t"
        "movl %%eax, %%fs\n\t"
        "movl %%eax, %%gs\n\t"
        "movl %%eax, %%ss\n\t"
        : : "m"(d), "i"(KERNEL_CS), "i"(KERNEL_DS) : "eax", "memory");
}

void tss_load(u32 esp0)
{
    memset(&tss, 0, sizeof(tss));
    tss.ss0 = KERNEL_DS;
    tss.esp0 = esp0;
    tss.iomap_base = sizeof(tss);       /* no I/O bitmap: ring 3 gets no port */
    __asm__ volatile("ltr %w0" : : "r"(TSS_SEL));
}

void ldt_load(void)
{
    __asm__ volatile("lldt %w0" : : "r"(LDT_SEL));
}

static void set_gate(u32 vector, u32 entry, u32 dpl)
{
    /* 32-bit interrupt gate: IF cleared on entry (SDM vol. 3, 6.11). */
    u32 lo = (entry & 0xFFFF) | (KERNEL_CS << 16);
    u32 hi = (entry & 0xFFFF0000) | 0x8E00 | (dpl << 13);

    idt[vector] = ((u64)hi << 32) | lo;
}

void idt_set_gate(u32 vector, u32 dpl)
{
    set_gate(vector, vector == 0x80 ? (u32)isr_stub_0x80 : isr_stubs[vector], dpl);
}

void idt_init(void)
{
    struct dtr d;
    u32 v;

    for (v = 0; v < 48; v++)
        idt_set_gate(v, 0);
    d.limit = sizeof(idt) - 1;
    d.base = (u32)idt;
    __asm__ volatile("lidt %0" : : "m"(d) : "memory");
}

void set_handler(u32 vector, handler_fn fn)
{
    handlers[vector & 0xFF] = fn;
}

void isr_dispatch(struct frame *f);

void isr_dispatch(struct frame *f)
{
    handler_fn fn = handlers[f->vector & 0xFF];

    if (fn) {
        fn(f);
        return;
    }
    printf("unexpected vector %u err=0x%x eip=0x%08x cs=0x%x\n", f->vector, f->err, f->eip, f->cs);
    debug_exit(EXIT_UNEXPECTED);
}
