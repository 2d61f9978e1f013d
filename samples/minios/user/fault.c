/* fault KIND: does what ring 3 may not, so that the kernel ends it. KIND: kernel
 * (read a supervisor page: #PF), null (read page 0: #PF), cli (a privileged
 * instruction: #GP), port (I/O without permission: #GP), ud (UD2: #UD). */
#include "ulib.h"

/* volatile: a plain NULL dereference is undefined, and gcc would replace it by UD2. */
static volatile u32 *volatile null_page = 0;

int main(const char *args)
{
    printf("fault: %s\n", args);
    if (!strcmp(args, "kernel"))
        return (int)*(volatile u32 *)0x00100000;
    if (!strcmp(args, "null"))
        return (int)*null_page;
    if (!strcmp(args, "cli"))
        __asm__ volatile("cli");
    else if (!strcmp(args, "port"))
        __asm__ volatile("outb %%al, $0x80" : : "a"(0));
    else if (!strcmp(args, "ud"))
        __asm__ volatile("ud2");
    else
        printf("fault: unknown kind; try kernel, null, cli, port, ud\n");
    return 1;
}
