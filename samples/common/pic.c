#include "desc.h"

/* 8259A pair (master 0x20/0x21, slave 0xA0/0xA1) and 8254 PIT channel 0. */
#define PIC1_CMD 0x20
#define PIC1_DATA 0x21
#define PIC2_CMD 0xA0
#define PIC2_DATA 0xA1
#define PIC_EOI 0x20
#define PIT_CH0 0x40
#define PIT_MODE 0x43
#define PIT_HZ 1193182

void pic_remap(u8 master_mask, u8 slave_mask)
{
    outb(PIC1_DATA, 0xFF);              /* quiet while reprogramming */
    outb(PIC2_DATA, 0xFF);
    outb(PIC1_CMD, 0x11);               /* ICW1: edge, cascade, ICW4 follows */
    outb(PIC2_CMD, 0x11);
    outb(PIC1_DATA, IRQ_BASE);          /* ICW2: vectors 0x20-0x27 */
    outb(PIC2_DATA, IRQ_BASE + 8);      /*        and 0x28-0x2F */
    outb(PIC1_DATA, 0x04);              /* ICW3: slave on IRQ2 */
    outb(PIC2_DATA, 0x02);
    outb(PIC1_DATA, 0x01);              /* ICW4: 8086 mode, normal EOI */
    outb(PIC2_DATA, 0x01);
    outb(PIC1_DATA, master_mask);
    outb(PIC2_DATA, slave_mask);
}

void pic_eoi(u32 irq)
{
    if (irq >= 8)
        outb(PIC2_CMD, PIC_EOI);
    outb(PIC1_CMD, PIC_EOI);
}

void pit_start(u32 hz)
{
    u32 divisor = PIT_HZ / hz;

    outb(PIT_MODE, 0x34);               /* channel 0, lobyte/hibyte, mode 2 (rate generator), binary */
    outb(PIT_CH0, divisor & 0xFF);
    outb(PIT_CH0, (divisor >> 8) & 0xFF);
}

void pit_stop(void)
{
    outb(PIT_MODE, 0x30);               /* channel 0, mode 0, waits for a count that never comes */
}
