/* INT 0x80 from ring 3 (abi.h). Every pointer a process passes is checked against
 * its own page table before the kernel touches it: a process may be hostile. */
#include "minios.h"
#include "disk.h"

/* Copies a NUL-terminated user string of at most max - 1 characters. */
static int copy_string(char *dst, u32 src, u32 max)
{
    u32 i;

    for (i = 0; i < max; i++) {
        if (!user_range(src + i, 1))
            return -1;
        dst[i] = *(const char *)(src + i);
        if (!dst[i])
            return 0;
    }
    return -1;
}

/* One line from the keyboard. The reader echoes what it takes, when it takes it:
 * the console then shows the same thing however early the keys were typed. */
static s32 read_line(u32 ubuf, u32 size)
{
    char *buf = (char *)ubuf;
    u32 n = 0;

    if (size == 0 || !user_range(ubuf, size))
        return -1;
    for (;;) {
        int c = kbd_read();

        if (c == '\n')
            break;
        if (c < ' ' || c > '~' || n + 1 >= size)
            continue;                   /* no line editing: other keys are dropped */
        buf[n++] = (char)c;
        console_write(&buf[n - 1], 1);
    }
    console_write("\n", 1);
    buf[n] = '\0';
    return (s32)n;
}

static s32 sys_spawn(u32 uname, u32 uargs)
{
    char name[DISK_NAME_MAX + 1], args[USER_ARGS_MAX];
    const struct disk_entry *e;
    struct image_src src;

    if (copy_string(name, uname, sizeof(name)))
        return -1;
    args[0] = '\0';
    if (uargs && copy_string(args, uargs, sizeof(args)))
        return -1;
    e = fs_find(name);
    if (!e)
        return -1;
    src.mem = NULL;
    src.file = e;
    src.size = e->size;
    return proc_spawn(name, &src, args, current);
}

static s32 sys_list(u32 index, u32 ubuf)
{
    const struct disk_entry *e = fs_entry(index);
    char *out = (char *)ubuf;

    if (!e || !user_range(ubuf, DISK_NAME_MAX + 1))
        return -1;
    memcpy(out, e->name, DISK_NAME_MAX);
    out[DISK_NAME_MAX] = '\0';
    return (s32)e->size;
}

static s32 sys_readfile(u32 uname, u32 ubuf, u32 size)
{
    char name[DISK_NAME_MAX + 1];
    const struct disk_entry *e;

    if (copy_string(name, uname, sizeof(name)) || !user_range(ubuf, size))
        return -1;
    e = fs_find(name);
    if (!e)
        return -1;
    return fs_read(e, 0, (void *)ubuf, size);  /* the kernel writes user pages directly (CR0.WP off) */
}

static s32 sys_sleep(u32 n)
{
    u32 until = ticks + n;

    while ((s32)(ticks - until) < 0)
        sleep_on((void *)&ticks);
    return 0;
}

void syscall_dispatch(struct frame *f)
{
    s32 r;

    switch (f->eax) {
    case SYS_EXIT:
        proc_exit((s32)f->ebx);
    case SYS_WRITE:
        r = -1;
        if (user_range(f->ebx, f->ecx)) {
            console_write((const char *)f->ebx, f->ecx);
            r = (s32)f->ecx;
        }
        break;
    case SYS_READ:
        r = read_line(f->ebx, f->ecx);
        break;
    case SYS_GETPID:
        r = (s32)current->pid;
        break;
    case SYS_YIELD:
        yield();
        r = 0;
        break;
    case SYS_SLEEP:
        r = sys_sleep(f->ebx);
        break;
    case SYS_TICKS:
        r = (s32)ticks;
        break;
    case SYS_SPAWN:
        r = sys_spawn(f->ebx, f->ecx);
        break;
    case SYS_WAIT:
        r = proc_wait(f->ebx);
        break;
    case SYS_LIST:
        r = sys_list(f->ebx, f->ecx);
        break;
    case SYS_READFILE:
        r = sys_readfile(f->ebx, f->ecx, f->edx);
        break;
    case SYS_SHARED:
        r = (s32)map_shared();
        break;
    case SYS_PREEMPTS:
        r = (s32)current->preempts;
        break;
    default:
        r = -1;
    }
    f->eax = (u32)r;
}
