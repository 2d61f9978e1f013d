/* The primary IDE channel's master disk in PIO mode (ATA-1 task file at
 * 0x1F0-0x1F7, device control at 0x3F6): IDENTIFY DEVICE and READ SECTORS with
 * 28-bit LBA, one sector per command, the completion signalled by IRQ 14. The
 * interrupt handler takes the data; the process that asked sleeps meanwhile. */
#include "minios.h"
#include "disk.h"

#define IDE_DATA    0x1F0
#define IDE_COUNT   0x1F2
#define IDE_LBA0    0x1F3
#define IDE_LBA1    0x1F4
#define IDE_LBA2    0x1F5
#define IDE_DRIVE   0x1F6               /* 0xE0: LBA mode, master, LBA bits 24-27 below */
#define IDE_STATUS  0x1F7               /* reading it acknowledges the interrupt */
#define IDE_COMMAND 0x1F7
#define IDE_CONTROL 0x3F6               /* bit 1 nIEN: 0 lets the drive interrupt */

#define ST_BSY  0x80
#define ST_DRDY 0x40
#define ST_DF   0x20
#define ST_DRQ  0x08
#define ST_ERR  0x01

#define CMD_READ_SECTORS 0x20
#define CMD_IDENTIFY     0xEC
#define LBA28_LIMIT (1u << 28)
#define POLL_LIMIT 100000               /* BSY clears at once on emulated disks; bound it anyway */

static volatile int done;               /* the command in flight has completed */
static volatile int failed;
static void *volatile dst;              /* where the IRQ handler puts the sector */
static int busy;                        /* a command is in flight: others wait */

static int wait_ready(void)
{
    u32 n;

    for (n = 0; n < POLL_LIMIT; n++) {
        u8 s = inb(IDE_STATUS);

        if (s == 0xFF)                  /* floating bus: no drive */
            return -1;
        if ((s & (ST_BSY | ST_DRDY)) == ST_DRDY)
            return s & (ST_DF | ST_ERR) ? -1 : 0;
    }
    return -1;
}

static void insl(u16 port, void *d, u32 dwords)
{
    __asm__ volatile("cld; rep insl" : "+D"(d), "+c"(dwords) : "d"(port) : "memory");
}

static void on_ide_irq(struct frame *f)
{
    u8 s = inb(IDE_STATUS);

    (void)f;
    if (dst && !done) {
        if (s & (ST_ERR | ST_DF) || !(s & ST_DRQ))
            failed = 1;
        else
            insl(IDE_DATA, dst, SECTOR_SIZE / 4);
        done = 1;
    }
    lapic_eoi();
    wakeup((void *)&done);
}

/* Issue a command that reads one sector into `buf` (a kernel address: the
 * handler may run under another process's page directory). */
static int transfer(u8 cmd, u32 lba, void *buf)
{
    int err;

    while (busy)
        sleep_on(&busy);
    busy = 1;
    failed = 0;
    done = 0;
    err = wait_ready();
    if (!err) {
        dst = buf;
        outb(IDE_COUNT, 1);
        outb(IDE_LBA0, (u8)lba);
        outb(IDE_LBA1, (u8)(lba >> 8));
        outb(IDE_LBA2, (u8)(lba >> 16));
        outb(IDE_DRIVE, 0xE0 | ((lba >> 24) & 0x0F));
        outb(IDE_COMMAND, cmd);
        while (!done)
            sleep_on((void *)&done);
        dst = NULL;
        err = failed ? -1 : 0;
    }
    busy = 0;
    wakeup(&busy);
    return err;
}

int ide_init(u32 *sectors)
{
    static u16 id[256];

    set_handler(VEC_IDE, on_ide_irq);
    ioapic_route(IRQ_IDE, VEC_IDE, lapic_id());
    outb(IDE_CONTROL, 0);
    outb(IDE_DRIVE, 0xE0);
    if (transfer(CMD_IDENTIFY, 0, id))
        return -1;
    *sectors = id[60] | (u32)id[61] << 16;  /* words 60-61: sectors addressable with LBA28 */
    return 0;
}

int ide_read(u32 lba, void *buf)
{
    if (lba >= LBA28_LIMIT)
        return -1;
    return transfer(CMD_READ_SECTORS, lba, buf);
}
