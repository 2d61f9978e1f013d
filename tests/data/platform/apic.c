/* apic: the local APIC and the I/O APIC as a kernel drives them, printing only what does
 * not depend on timing (orders, flags, register values), so that QEMU and ring1 print the
 * same: timer one-shot and periodic, EOI and the ISR, TPR and PPR, IPIs to self and their
 * priority order, the I/O APIC routing COM1's interrupt (edge, then level with remote
 * IRR), illegal register accesses in ESR, LINT0 (the 8259 through virtual wire mode). */
#include "probe.h"

#define LAPIC 0xFEE00000u
#define IOAPIC 0xFEC00000u
#define L_ID 0x20
#define L_VER 0x30
#define L_TPR 0x80
#define L_PPR 0xA0
#define L_EOI 0xB0
#define L_LDR 0xD0
#define L_DFR 0xE0
#define L_SVR 0xF0
#define L_ISR 0x100
#define L_TMR 0x180
#define L_IRR 0x200
#define L_ESR 0x280
#define L_ICRLO 0x300
#define L_ICRHI 0x310
#define L_TIMER 0x320
#define L_LINT0 0x350
#define L_TICR 0x380
#define L_TCCR 0x390
#define L_TDCR 0x3E0

#define V_TIMER 0x21
#define V_UART 0x24
#define V_LOW 0x25
#define V_HIGH 0x27
#define V_SPURIOUS 0x2F

static volatile u32 count[48];
static volatile u32 order[16];
static volatile u32 norder;
static volatile u32 isr_seen, tmr_seen, rirr_seen;

static u32 lapic(u32 reg) { return mmio_read(LAPIC + reg); }
static void lapic_w(u32 reg, u32 v) { mmio_write(LAPIC + reg, v); }
static u32 ioapic(u32 reg) { mmio_write(IOAPIC, reg); return mmio_read(IOAPIC + 0x10); }
static void ioapic_w(u32 reg, u32 v) { mmio_write(IOAPIC, reg); mmio_write(IOAPIC + 0x10, v); }
static u32 bit(u32 base, u32 vector) { return (lapic(base + 0x10 * (vector / 32)) >> (vector % 32)) & 1; }

static void on_vector(struct frame *f)
{
    count[f->vector]++;
    if (norder < 16)
        order[norder++] = f->vector;
    isr_seen = bit(L_ISR, f->vector);
    tmr_seen = bit(L_TMR, f->vector);
    if (f->vector == V_UART) {
        rirr_seen = (ioapic(0x10 + 2 * 4) >> 14) & 1;
        inb(0x3FA);                             /* IIR: the THR-empty interrupt is acknowledged */
        outb(0x3F9, 0);                         /* IER off: the line stays low */
    }
    if (f->vector != V_SPURIOUS)
        lapic_w(L_EOI, 0);
}

static void self_ipi(u32 vector) { lapic_w(L_ICRLO, (1u << 18) | 0x4000 | vector); }

u32 kmain(u32 magic, const struct multiboot_info *mbi)
{
    (void)magic;
    (void)mbi;
    serial_init();
    gdt_init();
    idt_init();
    for (u32 v = 0x20; v < 0x30; v++)
        set_handler(v, on_vector);
    pic_remap(0xFF, 0xFF);                      /* the 8259 masked: the APICs deliver */
    printf("apic: ring1 platform probe\n");
    printf("id %x version %x svr %x dfr %x lint0 %x\n", lapic(L_ID), lapic(L_VER), lapic(L_SVR),
           lapic(L_DFR), lapic(L_LINT0));
    lapic_w(L_SVR, 0x100 | V_SPURIOUS);
    lapic_w(L_LDR, 0x01000000);
    lapic_w(L_DFR, 0x0FFFFFFF);
    printf("ldr %x dfr %x svr %x\n", lapic(L_LDR), lapic(L_DFR), lapic(L_SVR));

    /* One-shot timer: fires once, then the current count stays 0. */
    lapic_w(L_TDCR, 0xB);                       /* divide by 1 */
    lapic_w(L_TIMER, V_TIMER);
    lapic_w(L_TICR, 200000);
    while (!count[V_TIMER])
        wait_irq();
    printf("one-shot: fired %u, in service %u, tmr %u, current %x, divide %x\n", count[V_TIMER], isr_seen,
           tmr_seen, lapic(L_TCCR), lapic(L_TDCR));
    /* Periodic timer: five periods, then masked. */
    lapic_w(L_TDCR, 0x3);                       /* divide by 16 */
    lapic_w(L_TIMER, 0x20000 | V_TIMER);
    lapic_w(L_TICR, 20000);
    while (count[V_TIMER] < 6)
        wait_irq();
    lapic_w(L_TIMER, 0x10000 | 0x20000 | V_TIMER);
    sti();                                      /* a period that ended before the mask comes now */
    __asm__ volatile("nop; nop");
    cli();
    printf("periodic: 5 interrupts %s, timer lvt %x, initial %u\n", count[V_TIMER] >= 6 ? "yes" : "no",
           lapic(L_TIMER), lapic(L_TICR));

    /* Self IPIs with interrupts off: the higher vector first, the lower after its EOI. */
    norder = 0;
    self_ipi(V_LOW);
    self_ipi(V_HIGH);
    printf("irr: low %u high %u, ppr %x\n", bit(L_IRR, V_LOW), bit(L_IRR, V_HIGH), lapic(L_PPR));
    sti();
    __asm__ volatile("nop; nop");
    cli();
    printf("order: %x %x (%u)\n", order[0], order[1], norder);

    /* TPR holds back a class at or below it. */
    norder = 0;
    lapic_w(L_TPR, 0x20);
    self_ipi(V_LOW);
    sti();
    __asm__ volatile("nop; nop");
    cli();
    printf("tpr 20: delivered %u, irr %u, ppr %x\n", norder, bit(L_IRR, V_LOW), lapic(L_PPR));
    lapic_w(L_TPR, 0x10);
    sti();
    __asm__ volatile("nop; nop");
    cli();
    printf("tpr 10: delivered %u, vector %x, ppr %x\n", norder, order[0], lapic(L_PPR));
    lapic_w(L_TPR, 0);

    /* I/O APIC: version, then COM1 (ISA IRQ 4) routed edge-triggered to the local APIC. */
    printf("ioapic: id %x version %x arb %x pin4 %x %x\n", ioapic(0), ioapic(1), ioapic(2), ioapic(0x18),
           ioapic(0x19));
    norder = 0;
    ioapic_w(0x19, 0);                          /* destination: APIC ID 0, physical */
    ioapic_w(0x18, V_UART);                     /* edge, active high, fixed, unmasked */
    outb(0x3F9, 0x02);                          /* THR-empty interrupt on: the line rises */
    sti();
    __asm__ volatile("nop; nop");
    cli();
    printf("uart edge: %u interrupt(s), tmr %u, remote irr %u\n", count[V_UART], tmr_seen, rirr_seen);
    ioapic_w(0x18, 0x8000 | V_UART);            /* level-triggered now */
    outb(0x3F9, 0x02);
    sti();
    __asm__ volatile("nop; nop");
    cli();
    printf("uart level: %u interrupt(s), tmr %u, remote irr %u then %u\n", count[V_UART], tmr_seen,
           rirr_seen, (ioapic(0x18) >> 14) & 1);
    ioapic_w(0x18, 0x10000 | V_UART);           /* masked */
    outb(0x3F9, 0x02);
    sti();
    __asm__ volatile("nop; nop");
    cli();
    outb(0x3F9, 0);
    printf("uart masked: %u interrupt(s)\n", count[V_UART]);

    /* An illegal register read sets ESR bit 7. */
    printf("esr %x", lapic(L_ESR));
    (void)lapic(0x40);
    printf(" -> %x\n", lapic(L_ESR));
    return EXIT_OK;
}
