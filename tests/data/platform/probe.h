/* What the platform probes share: MMIO access, waiting for interrupts, hex dumps. */
#ifndef RING1_PLATFORM_PROBE_H
#define RING1_PLATFORM_PROBE_H

#include "desc.h"

static inline u32 mmio_read(u32 addr) { return *(volatile u32 *)addr; }
static inline void mmio_write(u32 addr, u32 v) { *(volatile u32 *)addr = v; }
static inline void sti(void) { __asm__ volatile("sti"); }
static inline void cli(void) { __asm__ volatile("cli"); }
/* STI; HLT; CLI: sleep until an interrupt has been handled. */
static inline void wait_irq(void) { __asm__ volatile("sti; hlt; cli"); }
static inline u16 inw(u16 port)
{
    u16 v;
    __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}
static inline u32 inl(u16 port)
{
    u32 v;
    __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}
static inline void outw(u16 port, u16 v) { __asm__ volatile("outw %0, %1" : : "a"(v), "Nd"(port)); }

static inline void dump(const char *tag, const u8 *p, u32 n)
{
    printf("%s", tag);
    for (u32 i = 0; i < n; i++)
        printf("%s%02x", (i % 32) ? "" : "\n  ", p[i]);
    printf("\n");
}

#endif
