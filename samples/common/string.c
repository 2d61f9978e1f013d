#include "kernel.h"

/* gcc may emit calls to memset/memcpy for struct copies and zeroing, even with
 * -ffreestanding. String instructions keep gcc from turning these loops back into
 * calls to themselves. */
void *memset(void *d, int c, u32 n)
{
    void *p = d;
    __asm__ volatile("cld; rep stosb" : "+D"(p), "+c"(n) : "a"(c) : "memory", "cc");
    return d;
}

void *memcpy(void *d, const void *s, u32 n)
{
    void *p = d;
    __asm__ volatile("cld; rep movsb" : "+D"(p), "+S"(s), "+c"(n) : : "memory", "cc");
    return d;
}

u32 strlen(const char *s)
{
    u32 n = 0;
    while (s[n])
        n++;
    return n;
}
