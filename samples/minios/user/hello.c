/* hello: prints its pid and its arguments. */
#include "ulib.h"

int main(const char *args)
{
    printf("hello from ring 3: pid %d, args \"%s\"\n", getpid(), args);
    return 0;
}
