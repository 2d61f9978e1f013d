/* sh: process 1, loaded from the multiboot module. Shows the file its argument
 * motd=NAME names, then reads commands: built-ins (help, ls, cat, exit) or the
 * name of a program on the disk, run as a child and waited for. */
#include "ulib.h"

#define LINE_MAX 64

static char file_buf[4096];

static void cat(const char *name)
{
    int n = readfile(name, file_buf, sizeof(file_buf));

    if (n < 0)
        printf("sh: cat: %s: no such file\n", name);
    else
        write(file_buf, (u32)n);
}

static void ls(void)
{
    char name[32];
    int size;
    u32 i;

    for (i = 0; (size = list(i, name)) >= 0; i++)
        printf("%-12s %5d bytes\n", name, size);
}

static void run(const char *name, const char *args)
{
    int pid = spawn(name, args), status;

    if (pid < 0) {
        printf("sh: %s: not found\n", name);
        return;
    }
    status = wait(pid);
    if (status != 0)
        printf("sh: %s (pid %d) exited with status %d\n", name, pid, status);
}

int main(const char *args)
{
    const char *motd = arg_value(args, "motd");
    char line[LINE_MAX];

    printf("sh: pid %d, args \"%s\"\n", getpid(), args);
    if (motd)
        cat(motd);
    for (;;) {
        char *cmd = line, *rest;

        write("sh$ ", 4);
        readline(line, sizeof(line));
        while (*cmd == ' ')
            cmd++;
        for (rest = cmd; *rest && *rest != ' '; rest++)
            ;
        if (*rest)
            *rest++ = '\0';
        while (*rest == ' ')
            rest++;
        if (!*cmd)
            continue;
        if (!strcmp(cmd, "help"))
            printf("built-ins: help ls cat NAME exit; anything else runs from the disk\n");
        else if (!strcmp(cmd, "ls"))
            ls();
        else if (!strcmp(cmd, "cat"))
            cat(rest);
        else if (!strcmp(cmd, "exit"))
            return 0;
        else
            run(cmd, rest);
    }
}
