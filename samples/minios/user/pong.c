/* pong: spin's partner (see spin.c). */
#include "ulib.h"

int main(const char *args)
{
    volatile u32 *page = shared();

    (void)args;
    while (!page[0])
        yield();
    printf("pong: pid %d runs while spin spins\n", getpid());
    page[1] = 1;
    return 7;
}
