/* The local APIC (Intel SDM vol. 3, chapter 11) as the scheduler's clock, and the
 * I/O APIC (82093AA datasheet) routing the ISA keyboard and disk interrupts. Both
 * are memory-mapped; minios maps their pages uncached (mm.c). */
#include "minios.h"

/* Local APIC registers: byte offsets from the base, 32-bit accesses only. */
#define LAPIC_ID      0x020
#define LAPIC_VER     0x030
#define LAPIC_TPR     0x080
#define LAPIC_EOI     0x0B0
#define LAPIC_SVR     0x0F0
#define LAPIC_ESR     0x280
#define LAPIC_LVT_TIMER 0x320
#define LAPIC_LVT_PERF  0x340
#define LAPIC_LVT_LINT0 0x350
#define LAPIC_LVT_LINT1 0x360
#define LAPIC_LVT_ERROR 0x370
#define LAPIC_TIMER_INIT 0x380
#define LAPIC_TIMER_DIV  0x3E0

#define SVR_ENABLE   0x100
#define LVT_MASKED   0x10000
#define LVT_PERIODIC 0x20000
#define TIMER_DIV_16 0x3                /* SDM 11.5.4: divide configuration 0b0011 */

/* I/O APIC: an index register and a data window. */
#define IOAPIC_REGSEL 0x00
#define IOAPIC_WIN    0x10
#define IOAPIC_VER    0x01
#define IOAPIC_REDTBL 0x10              /* two 32-bit registers per pin */
#define REDIR_MASKED  0x10000           /* edge, active high, fixed, physical: all 0 */

static volatile u32 *lapic;
static volatile u32 *ioapic;

static u32 lapic_read(u32 reg) { return lapic[reg / 4]; }

static void lapic_write(u32 reg, u32 v)
{
    lapic[reg / 4] = v;
    (void)lapic[LAPIC_ID / 4];          /* read back: the write has reached the APIC */
}

void lapic_init(u32 base, u32 timer_count)
{
    lapic = (volatile u32 *)base;
    lapic_write(LAPIC_SVR, SVR_ENABLE | VEC_SPURIOUS);
    /* The firmware leaves LINT0 as ExtINT (the 8259) and LINT1 as NMI: virtual
     * wire mode. minios takes interrupts from the I/O APIC only. */
    lapic_write(LAPIC_LVT_LINT0, LVT_MASKED);
    lapic_write(LAPIC_LVT_LINT1, LVT_MASKED);
    if (((lapic_read(LAPIC_VER) >> 16) & 0xFF) >= 4)    /* max LVT entry: a perf counter LVT */
        lapic_write(LAPIC_LVT_PERF, LVT_MASKED);
    lapic_write(LAPIC_LVT_ERROR, LVT_MASKED);
    lapic_write(LAPIC_ESR, 0);          /* SDM 11.5.3: back-to-back writes clear it */
    lapic_write(LAPIC_ESR, 0);
    lapic_write(LAPIC_EOI, 0);          /* anything the firmware left in service */
    lapic_write(LAPIC_TPR, 0);          /* accept every priority class */

    /* The scheduler tick: periodic, counting down from timer_count at the bus
     * clock / 16. Nothing minios prints depends on its rate. */
    lapic_write(LAPIC_TIMER_DIV, TIMER_DIV_16);
    lapic_write(LAPIC_LVT_TIMER, LVT_PERIODIC | VEC_TIMER);
    lapic_write(LAPIC_TIMER_INIT, timer_count);
}

void lapic_eoi(void)
{
    lapic_write(LAPIC_EOI, 0);
}

u32 lapic_id(void)
{
    return lapic_read(LAPIC_ID) >> 24;
}

static u32 ioapic_read(u32 reg)
{
    ioapic[IOAPIC_REGSEL / 4] = reg;
    return ioapic[IOAPIC_WIN / 4];
}

static void ioapic_write(u32 reg, u32 v)
{
    ioapic[IOAPIC_REGSEL / 4] = reg;
    ioapic[IOAPIC_WIN / 4] = v;
}

u32 ioapic_init(u32 base)
{
    u32 pins, i;

    ioapic = (volatile u32 *)base;
    pins = ((ioapic_read(IOAPIC_VER) >> 16) & 0xFF) + 1;    /* bits 16-23: max redirection entry */
    for (i = 0; i < pins; i++) {
        ioapic_write(IOAPIC_REDTBL + 2 * i + 1, 0);
        ioapic_write(IOAPIC_REDTBL + 2 * i, REDIR_MASKED | (IRQ_BASE + i));
    }
    return pins;
}

/* ISA IRQs 1 and 14 are I/O APIC pins 1 and 14 on a PC (only IRQ 0 is moved, to
 * pin 2, and minios does not use the PIT). Destination first, then unmask. */
void ioapic_route(u32 irq, u32 vector, u32 apic_id)
{
    ioapic_write(IOAPIC_REDTBL + 2 * irq + 1, apic_id << 24);
    ioapic_write(IOAPIC_REDTBL + 2 * irq, vector);
}
