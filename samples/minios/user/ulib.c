/* System call stubs and helpers for minios programs. */
#include "ulib.h"

static int syscall3(u32 nr, u32 a, u32 b, u32 c)
{
    int r;

    __asm__ volatile("int %1" : "=a"(r) : "i"(SYSCALL_VECTOR), "a"(nr), "b"(a), "c"(b), "d"(c) : "memory");
    return r;
}

void exit(int status)
{
    syscall3(SYS_EXIT, (u32)status, 0, 0);
    for (;;)
        ;
}

int write(const char *buf, u32 n) { return syscall3(SYS_WRITE, (u32)buf, n, 0); }
int readline(char *buf, u32 size) { return syscall3(SYS_READ, (u32)buf, size, 0); }
int getpid(void) { return syscall3(SYS_GETPID, 0, 0, 0); }
void yield(void) { syscall3(SYS_YIELD, 0, 0, 0); }
void sleep(u32 n) { syscall3(SYS_SLEEP, n, 0, 0); }
u32 ticks(void) { return (u32)syscall3(SYS_TICKS, 0, 0, 0); }
int spawn(const char *name, const char *args) { return syscall3(SYS_SPAWN, (u32)name, (u32)args, 0); }
int wait(int pid) { return syscall3(SYS_WAIT, (u32)pid, 0, 0); }
int list(u32 index, char name[32]) { return syscall3(SYS_LIST, index, (u32)name, 0); }
int readfile(const char *name, char *buf, u32 size) { return syscall3(SYS_READFILE, (u32)name, (u32)buf, size); }
volatile u32 *shared(void) { return (volatile u32 *)syscall3(SYS_SHARED, 0, 0, 0); }
u32 preempts(void) { return (u32)syscall3(SYS_PREEMPTS, 0, 0, 0); }

u32 strlen(const char *s)
{
    u32 n = 0;

    while (s[n])
        n++;
    return n;
}

int strcmp(const char *a, const char *b)
{
    while (*a && *a == *b) {
        a++;
        b++;
    }
    return (unsigned char)*a - (unsigned char)*b;
}

int atoi(const char *s)
{
    int v = 0;

    while (*s >= '0' && *s <= '9')
        v = v * 10 + (*s++ - '0');
    return v;
}

const char *arg_value(const char *args, const char *key)
{
    u32 n = strlen(key);

    while (*args) {
        u32 i = 0;

        while (i < n && args[i] == key[i])
            i++;
        if (i == n && args[i] == '=')
            return args + n + 1;
        while (*args && *args != ' ')
            args++;
        while (*args == ' ')
            args++;
    }
    return 0;
}

struct out {
    char buf[160];
    u32 n;
};

static void put(struct out *o, char c)
{
    if (o->n == sizeof(o->buf)) {
        write(o->buf, o->n);
        o->n = 0;
    }
    o->buf[o->n++] = c;
}

static void put_u32(struct out *o, u32 v, u32 base, int width)
{
    char digits[12];
    int n = 0;

    do {
        u32 d = v % base;
        digits[n++] = (char)(d < 10 ? '0' + d : 'a' + d - 10);
        v /= base;
    } while (v);
    while (n < width--)
        put(o, ' ');
    while (n)
        put(o, digits[--n]);
}

/* %s %d %u %x %c, with a width; %-Ns pads a string on the right. */
void printf(const char *fmt, ...)
{
    struct out o;
    __builtin_va_list ap;

    o.n = 0;
    __builtin_va_start(ap, fmt);
    for (; *fmt; fmt++) {
        int width = 0, left = 0;

        if (*fmt != '%') {
            put(&o, *fmt);
            continue;
        }
        if (*++fmt == '-') {
            left = 1;
            fmt++;
        }
        while (*fmt >= '0' && *fmt <= '9')
            width = width * 10 + (*fmt++ - '0');
        switch (*fmt) {
        case 'd': {
            int v = __builtin_va_arg(ap, int);
            if (v < 0)
                put(&o, '-');
            put_u32(&o, v < 0 ? -(u32)v : (u32)v, 10, width);
            break;
        }
        case 'u':
            put_u32(&o, __builtin_va_arg(ap, u32), 10, width);
            break;
        case 'x':
            put_u32(&o, __builtin_va_arg(ap, u32), 16, width);
            break;
        case 'c':
            put(&o, (char)__builtin_va_arg(ap, int));
            break;
        case 's': {
            const char *s = __builtin_va_arg(ap, const char *);
            int len = (int)strlen(s);
            if (!left)
                for (; width > len; width--)
                    put(&o, ' ');
            while (*s)
                put(&o, *s++);
            for (; left && width > len; width--)
                put(&o, ' ');
            break;
        }
        case '\0':
            fmt--;
            break;
        default:
            put(&o, *fmt);
        }
    }
    __builtin_va_end(ap);
    if (o.n)
        write(o.buf, o.n);
}
