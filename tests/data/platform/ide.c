/* ide: the primary IDE channel driven in PIO mode with IRQ 14 through the 8259, printing
 * registers, data and interrupt counts (no timing): IDENTIFY of master and slave, READ
 * SECTORS by LBA and by CHS, SET MULTIPLE and READ MULTIPLE, WRITE SECTORS then read back,
 * 32-bit data port reads, an aborted command, an address past the end, nIEN, software
 * reset and its signature. Run with two disks (tests/test_platform_qemu.py makes them). */
#include "probe.h"

#define DATA 0x1F0
#define ERROR 0x1F1
#define COUNT 0x1F2
#define LBA0 0x1F3
#define LBA1 0x1F4
#define LBA2 0x1F5
#define DEVICE 0x1F6
#define STATUS 0x1F7
#define CONTROL 0x3F6
#define BSY 0x80
#define DRQ 0x08

static volatile u32 irqs;
static u8 buf[16 * 512];

static void on_ide(struct frame *f)
{
    (void)f;
    irqs++;
    pic_eoi(14);
}

static u8 wait_ready(void)
{
    u8 s;
    while ((s = inb(STATUS)) & BSY)
        ;
    return s;
}

static void regs(const char *what)
{
    printf("%s: status %02x error %02x count %02x lba %02x %02x %02x device %02x irqs %u\n", what,
           inb(CONTROL), inb(ERROR), inb(COUNT), inb(LBA0), inb(LBA1), inb(LBA2), inb(DEVICE), irqs);
}

static void command(u8 device, u32 lba, u8 count, u8 cmd)
{
    outb(DEVICE, device | ((lba >> 24) & 0x0F));
    outb(COUNT, count);
    outb(LBA0, lba);
    outb(LBA1, lba >> 8);
    outb(LBA2, lba >> 16);
    outb(STATUS, cmd);
}

/* PIO data-in: `blocks` blocks, each after its interrupt; returns how many had DRQ. */
static u32 read_blocks(u8 *dst, u32 words_per_block, u32 max_blocks)
{
    u32 blocks = 0;
    while (blocks < max_blocks) {
        while (irqs == 0)
            wait_irq();
        irqs--;
        u8 s = inb(STATUS);
        if (!(s & DRQ))
            break;
        for (u32 i = 0; i < words_per_block; i++)
            ((u16 *)dst)[i] = inw(DATA);
        dst += 2 * words_per_block;
        blocks++;
    }
    return blocks;
}

static u32 sum(const u8 *p, u32 n)
{
    u32 s = 0;
    for (u32 i = 0; i < n; i++)
        s = s * 31 + p[i];
    return s;
}

u32 kmain(u32 magic, const struct multiboot_info *mbi)
{
    (void)magic;
    (void)mbi;
    serial_init();
    gdt_init();
    idt_init();
    set_handler(IRQ_BASE + 14, on_ide);
    pic_remap(0xFB, 0xBF);                      /* cascade and IRQ 14 */
    printf("ide: ring1 platform probe\n");
    regs("entry");

    for (u32 unit = 0; unit < 2; unit++) {
        irqs = 0;
        outb(DEVICE, 0xA0 | (unit << 4));
        wait_ready();
        outb(STATUS, 0xEC);
        while (irqs == 0)
            wait_irq();
        u8 s = inb(STATUS);
        for (u32 i = 0; i < 256; i++)
            ((u16 *)buf)[i] = inw(DATA);
        printf("identify %u: status %02x, then %02x, irqs %u", unit, s, inb(STATUS), irqs);
        dump("", buf, 512);
    }

    irqs = 0;
    command(0xE0, 3, 2, 0x20);                  /* READ SECTORS, LBA 3, 2 sectors */
    printf("read lba: %u blocks", read_blocks(buf, 256, 2));
    printf(", sum %x\n", sum(buf, 1024));
    dump("  head", buf, 32);
    regs("after read");

    irqs = 0;
    command(0xA0, 1, 1, 0x20);                  /* CHS: cylinder 0, head 0, sector 1 */
    printf("read chs: %u blocks, sum %x\n", read_blocks(buf, 256, 1), sum(buf, 512));
    regs("after chs");

    irqs = 0;
    command(0xE0, 0, 4, 0xC6);                  /* SET MULTIPLE: 4 sectors per block */
    while (irqs == 0)
        wait_irq();
    regs("set multiple");
    irqs = 0;
    command(0xE0, 10, 10, 0xC4);                /* READ MULTIPLE: 10 sectors, blocks of 4, 4, 2 */
    u32 blocks = 0;
    u8 *dst = buf;
    for (u32 left = 10; left;) {
        while (irqs == 0)
            wait_irq();
        irqs--;
        if (!(inb(STATUS) & DRQ))
            break;
        u32 n = left < 4 ? left : 4;
        for (u32 i = 0; i < 128 * n; i++)       /* 32-bit data port reads */
            ((u32 *)dst)[i] = inl(DATA);
        dst += 512 * n;
        left -= n;
        blocks++;
    }
    printf("read multiple: %u blocks, sum %x\n", blocks, sum(buf, 10 * 512));
    regs("after read multiple");

    irqs = 0;
    command(0xE0, 5, 1, 0x30);                  /* WRITE SECTORS, LBA 5 */
    u8 s = wait_ready();
    printf("write: status %02x irqs %u\n", s, irqs);
    for (u32 i = 0; i < 256; i++)
        outw(DATA, 0x1234 + i);
    while (irqs == 0)
        wait_irq();
    regs("after write");
    irqs = 0;
    command(0xE0, 5, 1, 0x20);
    read_blocks(buf, 256, 1);
    dump("read back", buf, 16);

    irqs = 0;
    command(0xE0, 0, 1, 0xA1);                  /* IDENTIFY PACKET: a disk aborts it */
    while (irqs == 0)
        wait_irq();
    regs("identify packet");
    irqs = 0;
    command(0xE0, 0x0FFFFFF0, 1, 0x20);         /* past the end of the disk */
    while (irqs == 0)
        wait_irq();
    regs("past the end");

    irqs = 0;
    outb(CONTROL, 0x02);                        /* nIEN: no interrupt */
    command(0xE0, 1, 1, 0x20);
    while (!(inb(CONTROL) & DRQ))
        ;
    for (u32 i = 0; i < 256; i++)
        (void)inw(DATA);
    printf("nien: irqs %u\n", irqs);
    outb(CONTROL, 0x04);                        /* software reset (QEMU completes it asynchronously) */
    outb(CONTROL, 0x00);
    wait_ready();
    regs("after reset");
    outb(DEVICE, 0xB0);
    regs("slave");
    return EXIT_OK;
}
