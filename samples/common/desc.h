/* Descriptor tables, interrupt dispatch, the 8259 PIC and the 8254 PIT, shared by
 * the samples that run with their own GDT and IDT (timer, zoo, usermode). */
#ifndef RING1_SAMPLES_DESC_H
#define RING1_SAMPLES_DESC_H

#include "kernel.h"

/* The GDT every such sample loads (desc.c). */
#define KERNEL_CS 0x08
#define KERNEL_DS 0x10
#define USER_CS   0x18          /* DPL 3; selectors used from ring 3 carry RPL 3 */
#define USER_DS   0x20
#define TSS_SEL   0x28
#define LDT_SEL   0x30
#define GDT_ENTRIES 7

#define X86_EFLAGS_IF 0x200

/* What common/isr.S pushes, lowest address first. */
struct frame {
    u32 edi, esi, ebp, esp_at_pushal, ebx, edx, ecx, eax;
    u32 es, ds;
    u32 vector, err;
    u32 eip, cs, eflags;
    u32 user_esp, user_ss;       /* only when the interrupt came from ring 3 */
};

struct PACKED dtr {
    u16 limit;
    u32 base;
};

/* The 32-bit TSS: only ss0:esp0 matters (the stack for ring 3 -> ring 0). */
struct PACKED tss32 {
    u32 prev, esp0, ss0, esp1, ss1, esp2, ss2;
    u32 cr3, eip, eflags, eax, ecx, edx, ebx, esp, ebp, esi, edi;
    u32 es, cs, ss, ds, fs, gs, ldt;
    u16 trap, iomap_base;
};

typedef void (*handler_fn)(struct frame *f);

extern u64 gdt[GDT_ENTRIES];
extern u64 idt[256];
extern u64 ldt[2];
extern struct tss32 tss;

void gdt_init(void);                    /* LGDT, far jump to reload CS, reload data segments */
void tss_load(u32 esp0);                /* fill ss0:esp0, LTR */
void ldt_load(void);                    /* LLDT */
void idt_init(void);                    /* gates for vectors 0-47 and 0x80, LIDT */
void idt_set_gate(u32 vector, u32 dpl);
void set_handler(u32 vector, handler_fn fn);
u64 seg_desc(u32 base, u32 limit, u32 access, u32 flags);

/* 8259 PIC and 8254 PIT (pic.c). */
#define IRQ_BASE 0x20
void pic_remap(u8 master_mask, u8 slave_mask);
void pic_eoi(u32 irq);
void pit_start(u32 hz);
void pit_stop(void);

static inline u32 read_cs(void)
{
    u32 v;
    __asm__ volatile("movl %%cs, %0" : "=r"(v));
    return v;
}

static inline u32 read_ss(void)
{
    u32 v;
    __asm__ volatile("movl %%ss, %0" : "=r"(v));
    return v;
}

static inline u32 read_eflags(void)
{
    u32 v;
    __asm__ volatile("pushfl; popl %0" : "=r"(v));
    return v;
}

#endif
