/* kbd: the PS/2 controller and keyboard as a driver initialises them, then typed keys.
 * Controller commands (self test, interface test, command byte, output port, writes to
 * the output buffer, the mouse), keyboard commands (reset, identify, echo, scan code set,
 * LEDs, an unknown command), each answer printed with the status it came with. Then it
 * prints "keys?" and every scan code that arrives by IRQ 1 until Enter is released, with
 * translation on (set 1); then "keys2?" with translation off (set 2) until the set-2 Enter
 * break (F0 5A). The test types "aZ1 -\n" then "b\n" (ring1: --keys; QEMU: QMP send-key). */
#include "probe.h"

#define DATA 0x60
#define STATUS 0x64

static volatile u8 codes[64];
static volatile u32 ncodes;

static void on_kbd(struct frame *f)
{
    (void)f;
    u8 c = inb(DATA);
    if (ncodes < 64)
        codes[ncodes++] = c;
    pic_eoi(1);
}

static void wait_write(void)
{
    while (inb(STATUS) & 0x02)
        ;
}

static void command(u8 c)
{
    wait_write();
    outb(STATUS, c);
}

static void data(u8 d)
{
    wait_write();
    outb(DATA, d);
}

/* Print every byte the controller has for us: "st:data" pairs. */
static void answers(const char *what)
{
    printf("%s:", what);
    for (u32 spins = 0; spins < 1000; spins++) {
        u8 s = inb(STATUS);
        if (s & 0x01) {
            printf(" %02x:%02x", s, inb(DATA));
            spins = 0;
        }
    }
    printf("\n");
}

static void typed(const char *prompt, u8 last0, u8 last1)
{
    ncodes = 0;
    printf("%s\n", prompt);
    for (;;) {
        wait_irq();
        if (ncodes >= 2 && codes[ncodes - 2] == last0 && codes[ncodes - 1] == last1)
            break;
        if (ncodes >= 64)
            break;
    }
    printf("codes:");
    for (u32 i = 0; i < ncodes; i++)
        printf(" %02x", codes[i]);
    printf("\n");
}

u32 kmain(u32 magic, const struct multiboot_info *mbi)
{
    (void)magic;
    (void)mbi;
    serial_init();
    gdt_init();
    idt_init();
    set_handler(IRQ_BASE + 1, on_kbd);
    pic_remap(0xFF, 0xFF);
    printf("kbd: ring1 platform probe\n");
    printf("status %02x\n", inb(STATUS));
    command(0x20);
    answers("command byte");
    command(0xAD);                              /* keyboard interface off while we talk */
    command(0xAA);
    answers("self test");
    command(0xAB);
    answers("keyboard interface test");
    command(0xA9);
    answers("mouse interface test");
    command(0xC0);
    answers("input port");
    command(0xD0);
    answers("output port");
    command(0x60);
    data(0x20);                                 /* no interrupts, no translation, mouse off */
    command(0x20);
    answers("command byte now");
    command(0xD2);
    data(0x99);
    answers("write output buffer");
    command(0xD4);
    data(0xF2);
    answers("mouse identify");
    command(0xAE);
    data(0xFF);
    answers("reset");
    data(0xF2);
    answers("identify (set 2)");
    data(0xEE);
    answers("echo");
    data(0xF0);
    data(0x00);
    answers("scan code set");
    data(0xED);
    data(0x07);
    answers("leds");
    data(0x01);
    answers("unknown");
    command(0x60);
    data(0x61);                                 /* SeaBIOS's: interrupts on, translation on */
    data(0xF2);
    answers("identify (translated)");
    data(0xF0);
    data(0x00);
    answers("scan code set (translated)");
    data(0xF4);
    answers("enable");

    pic_remap(0xFD, 0xFF);                      /* IRQ 1 */
    typed("keys?", 0x1C, 0x9C);
    cli();
    command(0x60);
    data(0x21);                                 /* translation off: set 2 */
    typed("keys2?", 0xF0, 0x5A);
    return EXIT_OK;
}
