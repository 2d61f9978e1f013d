/* The PS/2 keyboard behind the 8042 controller (data port 0x60, status 0x64),
 * IRQ 1. The firmware leaves the controller translating to scan code set 1 with
 * the keyboard interrupt enabled (QEMU's SeaBIOS does; xv6 relies on it too), so
 * minios only reads. Typed characters wait in a buffer; the reader echoes them
 * (syscall.c), so typing ahead never changes what the console shows. */
#include "minios.h"

#define KBD_DATA 0x60
#define KBD_STATUS 0x64
#define STATUS_OUTPUT_FULL 0x01
#define STATUS_AUX 0x20                 /* the byte is from the mouse port */
#define SC_RELEASE 0x80
#define SC_EXTENDED 0xE0
#define SC_LSHIFT 0x2A
#define SC_RSHIFT 0x36

/* Set 1 make codes 0x00-0x39, US layout; 0 = no character. */
static const char normal[0x3A] = {
    0, 0, '1', '2', '3', '4', '5', '6', '7', '8', '9', '0', '-', '=', '\b', '\t',
    'q', 'w', 'e', 'r', 't', 'y', 'u', 'i', 'o', 'p', '[', ']', '\n', 0, 'a', 's',
    'd', 'f', 'g', 'h', 'j', 'k', 'l', ';', '\'', '`', 0, '\\', 'z', 'x', 'c', 'v',
    'b', 'n', 'm', ',', '.', '/', 0, '*', 0, ' ',
};
static const char shifted[0x3A] = {
    0, 0, '!', '@', '#', '$', '%', '^', '&', '*', '(', ')', '_', '+', '\b', '\t',
    'Q', 'W', 'E', 'R', 'T', 'Y', 'U', 'I', 'O', 'P', '{', '}', '\n', 0, 'A', 'S',
    'D', 'F', 'G', 'H', 'J', 'K', 'L', ':', '"', '~', 0, '|', 'Z', 'X', 'C', 'V',
    'B', 'N', 'M', '<', '>', '?', 0, '*', 0, ' ',
};

#define BUF_SIZE 256
static char buf[BUF_SIZE];
static u32 head, tail;                  /* head == tail: empty */
static u32 shift, extended;

static void scancode(u8 sc)
{
    u8 code = sc & ~SC_RELEASE;
    char c;

    if (sc == SC_EXTENDED) {
        extended = 1;
        return;
    }
    if (extended) {                     /* arrows, right Ctrl...: minios has no use for them */
        extended = 0;
        return;
    }
    if (code == SC_LSHIFT || code == SC_RSHIFT) {
        shift = !(sc & SC_RELEASE);
        return;
    }
    if (sc & SC_RELEASE || code >= sizeof(normal))
        return;
    c = shift ? shifted[code] : normal[code];
    if (c && head - tail < BUF_SIZE)
        buf[head++ % BUF_SIZE] = c;
}

static void drain(void)
{
    u8 status;

    while ((status = inb(KBD_STATUS)) & STATUS_OUTPUT_FULL) {
        u8 sc = inb(KBD_DATA);

        if (!(status & STATUS_AUX))
            scancode(sc);
    }
}

static void on_kbd_irq(struct frame *f)
{
    (void)f;
    drain();
    lapic_eoi();
    wakeup(buf);
}

void kbd_init(void)
{
    set_handler(VEC_KBD, on_kbd_irq);
    ioapic_route(IRQ_KBD, VEC_KBD, lapic_id());
    drain();                            /* keys typed before the route existed are kept */
}

int kbd_getc(void)
{
    if (head == tail)
        return -1;
    return (u8)buf[tail++ % BUF_SIZE];
}

int kbd_read(void)
{
    int c;

    while ((c = kbd_getc()) < 0)
        sleep_on(buf);
    return c;
}
