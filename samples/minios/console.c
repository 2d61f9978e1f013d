/* The console: COM1 (common/serial.c) and the CGA/VGA text screen at 0xB8000,
 * 80x25 cells of (character, attribute), with the CRTC's hardware cursor. Both get
 * the same characters, so the screen shows the last 25 lines of the serial log. */
#include "minios.h"

#define VGA_TEXT ((volatile u16 *)0xB8000)
#define COLS 80
#define ROWS 25
#define ATTR 0x0700                     /* light grey on black */
#define CRTC_INDEX 0x3D4                /* colour adapter: the CRTC at 0x3D4/0x3D5 */
#define CRTC_DATA 0x3D5
#define CRTC_CURSOR_HI 0x0E
#define CRTC_CURSOR_LO 0x0F

static u32 row, col;

static void cursor_update(void)
{
    u32 pos = row * COLS + col;

    outb(CRTC_INDEX, CRTC_CURSOR_HI);
    outb(CRTC_DATA, (u8)(pos >> 8));
    outb(CRTC_INDEX, CRTC_CURSOR_LO);
    outb(CRTC_DATA, (u8)pos);
}

static void scroll(void)
{
    u32 i;

    for (i = 0; i < (ROWS - 1) * COLS; i++)
        VGA_TEXT[i] = VGA_TEXT[i + COLS];
    for (; i < ROWS * COLS; i++)
        VGA_TEXT[i] = ATTR | ' ';
    row = ROWS - 1;
}

static void vga_putc(char c)
{
    if (c == '\n') {
        col = 0;
        row++;
    } else {
        VGA_TEXT[row * COLS + col] = ATTR | (u8)c;
        if (++col == COLS) {
            col = 0;
            row++;
        }
    }
    if (row == ROWS)
        scroll();
}

void console_init(void)
{
    u32 i;

    serial_init();
    /* The firmware may have left its own messages on the screen (QEMU's SeaBIOS
     * does); start from a blank one so that the screen is the OS's alone. */
    for (i = 0; i < ROWS * COLS; i++)
        VGA_TEXT[i] = ATTR | ' ';
    row = col = 0;
    cursor_update();
}

void console_putc(char c)
{
    serial_putc(c);
    vga_putc(c);
}

void console_write(const char *s, u32 n)
{
    u32 i;

    for (i = 0; i < n; i++) {
        serial_putc(s[i]);
        vga_putc(s[i]);
    }
    cursor_update();                    /* once per write: the cursor is only looked at */
}

static void put_u32(u32 v, u32 base, int width, char pad)
{
    char buf[12];
    int n = 0;

    do {
        u32 d = v % base;               /* 32-bit division only: no libgcc */
        buf[n++] = (char)(d < 10 ? '0' + d : 'a' + d - 10);
        v /= base;
    } while (v);
    while (n < width--)
        console_putc(pad);
    while (n)
        console_putc(buf[--n]);
}

/* %s %c %d %u %x, with an optional 0 flag and width: what the kernel prints. */
void cprintf(const char *fmt, ...)
{
    __builtin_va_list ap;

    __builtin_va_start(ap, fmt);
    for (; *fmt; fmt++) {
        int width = 0;
        char pad = ' ';

        if (*fmt != '%') {
            console_putc(*fmt);
            continue;
        }
        if (*++fmt == '0') {
            pad = '0';
            fmt++;
        }
        while (*fmt >= '0' && *fmt <= '9')
            width = width * 10 + (*fmt++ - '0');
        switch (*fmt) {
        case 'x':
            put_u32(__builtin_va_arg(ap, u32), 16, width, pad);
            break;
        case 'u':
            put_u32(__builtin_va_arg(ap, u32), 10, width, pad);
            break;
        case 'd': {
            s32 v = __builtin_va_arg(ap, s32);
            if (v < 0)
                console_putc('-');
            put_u32(v < 0 ? -(u32)v : (u32)v, 10, width, pad);
            break;
        }
        case 's': {
            const char *s = __builtin_va_arg(ap, const char *);
            while (*s)
                console_putc(*s++);
            break;
        }
        case 'c':
            console_putc((char)__builtin_va_arg(ap, int));
            break;
        case '\0':
            fmt--;
            break;
        default:
            console_putc(*fmt);
        }
    }
    __builtin_va_end(ap);
    cursor_update();
}

NORETURN void panic(const char *what, u32 value)
{
    irq_disable();
    cprintf("minios: panic: %s (0x%x)\n", what, value);
    debug_exit(EXIT_UNEXPECTED);
}
