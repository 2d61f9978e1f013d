/* Shared declarations for the ring1 sample kernels.
 *
 * Everything here is freestanding: no libc, no libgcc (the build machine's gcc has
 * no 32-bit multilib), so only 32-bit arithmetic and no floating point.
 */
#ifndef RING1_SAMPLES_KERNEL_H
#define RING1_SAMPLES_KERNEL_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef int s32;
typedef unsigned long long u64;

#define NULL ((void *)0)
#define NORETURN __attribute__((noreturn))
#define NOINLINE __attribute__((noinline))
#define PACKED __attribute__((packed))
#define ALIGNED(n) __attribute__((aligned(n)))

/* Multiboot (v1) information structure, the fields the samples read. */
#define MULTIBOOT_BOOTLOADER_MAGIC 0x2BADB002
#define MBI_FLAG_MEM (1u << 0)
#define MBI_FLAG_CMDLINE (1u << 2)

struct multiboot_info {
    u32 flags;
    u32 mem_lower;
    u32 mem_upper;
    u32 boot_device;
    u32 cmdline;
};

/* Exit statuses written to QEMU's isa-debug-exit port (QEMU exits with (v << 1) | 1). */
#define EXIT_OK 0
#define EXIT_FAIL 1          /* a check inside the kernel failed */
#define EXIT_UNEXPECTED 2    /* an interrupt or exception nobody expected */

/* Port I/O. */
static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outl(u16 port, u32 v) { __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port)); }
static inline u8 inb(u16 port)
{
    u8 v;
    __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}

/* serial.c: COM1 16550 driver and a tiny printf (%x %08x %d %u %s %c %%). */
void serial_init(void);
void serial_putc(char c);
void serial_puts(const char *s);
void printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* exit.c: write the status to the debug-exit port, then cli; hlt forever. */
NORETURN void debug_exit(u32 status);

/* cmdline.c: the multiboot command line. The loader's first word is the kernel
 * image path (QEMU passes "<path> <append>", GRUB the same); samples skip a first
 * word that holds no '=' and read key=value options from the rest. */
const char *cmdline_args(const struct multiboot_info *mbi);
u32 cmdline_u32(const char *args, const char *key, u32 fallback);

/* string.c: what gcc may call even in freestanding code. */
void *memset(void *d, int c, u32 n);
void *memcpy(void *d, const void *s, u32 n);
u32 strlen(const char *s);

/* The C entry point every sample defines; returns its exit status. */
u32 kmain(u32 magic, const struct multiboot_info *mbi);

#endif
