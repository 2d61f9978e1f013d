#include "kernel.h"

/* COM1, a 16550 UART, driven the way a real kernel's early console does it. */
#define COM1 0x3F8
#define UART_THR 0      /* transmit holding register (DLAB = 0) */
#define UART_DLL 0      /* divisor latch low (DLAB = 1) */
#define UART_IER 1      /* interrupt enable (DLAB = 0) */
#define UART_DLM 1      /* divisor latch high (DLAB = 1) */
#define UART_FCR 2
#define UART_LCR 3
#define UART_MCR 4
#define UART_LSR 5
#define LSR_THRE 0x20   /* transmit holding register empty */

void serial_init(void)
{
    outb(COM1 + UART_IER, 0x00);        /* no UART interrupts: the samples poll */
    outb(COM1 + UART_LCR, 0x80);        /* DLAB on */
    outb(COM1 + UART_DLL, 0x01);        /* divisor 1: 115200 baud */
    outb(COM1 + UART_DLM, 0x00);
    outb(COM1 + UART_LCR, 0x03);        /* DLAB off, 8 data bits, no parity, 1 stop */
    outb(COM1 + UART_FCR, 0xC7);        /* FIFO on, clear both, 14-byte threshold */
    outb(COM1 + UART_MCR, 0x03);        /* DTR, RTS; OUT2 off keeps the IRQ line quiet */
}

void serial_putc(char c)
{
    while (!(inb(COM1 + UART_LSR) & LSR_THRE))
        ;
    outb(COM1 + UART_THR, (u8)c);
}

void serial_puts(const char *s)
{
    while (*s)
        serial_putc(*s++);
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
        serial_putc(pad);
    while (n)
        serial_putc(buf[--n]);
}

void printf(const char *fmt, ...)
{
    __builtin_va_list ap;

    __builtin_va_start(ap, fmt);
    for (; *fmt; fmt++) {
        int width = 0;
        char pad = ' ';

        if (*fmt != '%') {
            serial_putc(*fmt);
            continue;
        }
        fmt++;
        if (*fmt == '0') {
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
            if (v < 0) {
                serial_putc('-');
                put_u32(-(u32)v, 10, width ? width - 1 : 0, pad);
            } else {
                put_u32((u32)v, 10, width, pad);
            }
            break;
        }
        case 's': {
            const char *s = __builtin_va_arg(ap, const char *);
            serial_puts(s ? s : "(null)");
            break;
        }
        case 'c':
            serial_putc((char)__builtin_va_arg(ap, int));
            break;
        case '%':
            serial_putc('%');
            break;
        case '\0':
            fmt--;
            break;
        default:
            serial_putc('%');
            serial_putc(*fmt);
        }
    }
    __builtin_va_end(ap);
}
