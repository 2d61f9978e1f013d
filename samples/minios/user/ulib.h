/* The user library: system calls (abi.h) and a few string helpers. */
#ifndef MINIOS_ULIB_H
#define MINIOS_ULIB_H

#include "../abi.h"

typedef unsigned int u32;

int main(const char *args);

void exit(int status) __attribute__((noreturn));
int write(const char *buf, u32 n);
int readline(char *buf, u32 size);
int getpid(void);
void yield(void);
void sleep(u32 ticks);
u32 ticks(void);
int spawn(const char *name, const char *args);
int wait(int pid);
int list(u32 index, char name[32]);
int readfile(const char *name, char *buf, u32 size);
volatile u32 *shared(void);
u32 preempts(void);

u32 strlen(const char *s);
int strcmp(const char *a, const char *b);
int atoi(const char *s);
const char *arg_value(const char *args, const char *key);   /* "key=value" -> "value", or NULL */

/* One write per call, so a line is never cut by another process's output. */
void printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
