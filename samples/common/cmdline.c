#include "kernel.h"

static int has_eq(const char *w)
{
    for (; *w && *w != ' '; w++)
        if (*w == '=')
            return 1;
    return 0;
}

const char *cmdline_args(const struct multiboot_info *mbi)
{
    const char *s;

    if (!(mbi->flags & MBI_FLAG_CMDLINE) || !mbi->cmdline)
        return "";
    s = (const char *)mbi->cmdline;
    while (*s == ' ')
        s++;
    if (*s && !has_eq(s)) {             /* the loader's image path */
        while (*s && *s != ' ')
            s++;
        while (*s == ' ')
            s++;
    }
    return s;
}

u32 cmdline_u32(const char *args, const char *key, u32 fallback)
{
    u32 klen = strlen(key);
    const char *w = args;

    while (*w) {
        u32 i = 0;
        while (i < klen && w[i] == key[i])
            i++;
        if (i == klen && w[i] == '=') {
            const char *p = w + klen + 1;
            u32 v = 0;
            if (*p < '0' || *p > '9')
                return fallback;
            while (*p >= '0' && *p <= '9')
                v = v * 10 + (u32)(*p++ - '0');
            return v;
        }
        while (*w && *w != ' ')
            w++;
        while (*w == ' ')
            w++;
    }
    return fallback;
}
