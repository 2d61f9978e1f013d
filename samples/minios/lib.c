/* The few string routines the kernel needs beyond common/string.c. */
#include "minios.h"

int strcmp(const char *a, const char *b)
{
    while (*a && *a == *b) {
        a++;
        b++;
    }
    return (u8)*a - (u8)*b;
}

int strncmp(const char *a, const char *b, u32 n)
{
    for (; n; n--, a++, b++) {
        if (*a != *b)
            return (u8)*a - (u8)*b;
        if (!*a)
            return 0;
    }
    return 0;
}

char *strncpy_z(char *d, const char *s, u32 n)
{
    u32 i;

    for (i = 0; i + 1 < n && s[i]; i++)
        d[i] = s[i];
    d[i] = '\0';
    return d;
}
