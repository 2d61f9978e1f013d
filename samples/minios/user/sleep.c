/* sleep N: sleeps N timer ticks, then says whether at least N went by. */
#include "ulib.h"

int main(const char *args)
{
    u32 n = (u32)atoi(args), start = ticks();

    sleep(n);
    printf("sleep: %u ticks: %s\n", n, ticks() - start >= n ? "ok" : "too short");
    return 0;
}
