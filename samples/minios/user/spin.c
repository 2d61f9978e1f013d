/* spin: proof of preemption that prints nothing about time. It starts pong, says
 * so, raises `ready` in the shared page and then spins in ring 3 without a system
 * call until pong has set `done`. pong waits (yielding) for `ready`, so it can
 * only print after spin's first line, and on one CPU it can only run while spin
 * spins if the timer took the CPU away from spin. */
#include "ulib.h"

int main(const char *args)
{
    volatile u32 *page = shared();
    int pid, status;

    (void)args;
    page[0] = 0;                        /* ready */
    page[1] = 0;                        /* done */
    pid = spawn("pong", "");
    if (pid < 0) {
        printf("spin: cannot start pong\n");
        return 1;
    }
    printf("spin: pid %d started pong (pid %d); spinning in ring 3, no system calls\n", getpid(), pid);
    page[0] = 1;
    while (!page[1])
        ;
    printf("spin: pong ran while I spun; the timer preempted me: %s\n", preempts() ? "yes" : "no");
    status = wait(pid);
    printf("spin: pong exited with status %d\n", status);
    return 0;
}
