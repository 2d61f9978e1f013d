/* minios: kernel-internal declarations. A small multiboot OS that runs user
 * processes in ring 3 on the PC platform QEMU's `pc` machine offers: local APIC
 * timer, I/O APIC, PS/2 keyboard, IDE disk, VGA text screen, COM1. */
#ifndef MINIOS_H
#define MINIOS_H

#include "../common/desc.h"
#include "abi.h"

/* Interrupt vectors. The 8259s are remapped to 0x20-0x2F and fully masked, so a
 * spurious 8259 interrupt cannot land on an exception vector; the APICs use the
 * same range (common/isr.S has stubs for 0-47 and 0x80). */
#define VEC_TIMER    0x20           /* local APIC timer */
#define VEC_KBD      0x21           /* ISA IRQ 1 through the I/O APIC */
#define VEC_IDE      0x2E           /* ISA IRQ 14 through the I/O APIC */
#define VEC_SPURIOUS 0x2F           /* local APIC spurious vector: low 4 bits 1111 (P6 rule) */
#define IRQ_KBD 1
#define IRQ_IDE 14

#define PAGE_SIZE 4096
#define PTE_P 0x001
#define PTE_W 0x002
#define PTE_U 0x004
#define PTE_PWT 0x008
#define PTE_PCD 0x010
#define PDE_PS 0x080

/* console.c: every character goes to COM1 and to the VGA text screen. */
void console_init(void);
void console_putc(char c);
void console_write(const char *s, u32 n);
void cprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
NORETURN void panic(const char *what, u32 value);

/* mp.c: the MP floating pointer and configuration table (Intel MP spec 1.4). */
struct mp_info {
    u32 lapic;                      /* local APIC MMIO base */
    u32 ioapic;                     /* I/O APIC MMIO base */
    u32 cpus;
    u32 ioapics;
    u32 imcr;                       /* the IMCR must be switched to APIC mode */
};
int mp_find(struct mp_info *mp);

/* apic.c */
void lapic_init(u32 base, u32 timer_count);
void lapic_eoi(void);
u32 lapic_id(void);
u32 ioapic_init(u32 base);          /* masks every pin; returns how many there are */
void ioapic_route(u32 irq, u32 vector, u32 apic_id);

/* mm.c: 4 KiB pages for page tables, kernel stacks and user memory; the kernel
 * half of every page directory. */
void mm_init(u32 pool_start, u32 pool_end, u32 ram_end, u32 lapic, u32 ioapic);
void *page_alloc(void);             /* zeroed; panics when memory runs out */
void page_free(void *page);
u32 pages_free(void);
u32 *pgdir_new(void);               /* kernel mappings only */
u32 *kernel_pgdir(void);
void load_cr3(u32 *pgdir);

/* kbd.c */
void kbd_init(void);
int kbd_getc(void);                 /* the next typed character, -1 when none is waiting */
int kbd_read(void);                 /* the next typed character; sleeps until there is one */

/* ide.c */
int ide_init(u32 *sectors);
int ide_read(u32 lba, void *buf);   /* one sector; sleeps until IRQ 14 */

/* fs.c: the disk's file table. */
struct disk_entry;
int fs_init(u32 disk_sectors);
const struct disk_entry *fs_entry(u32 index);
const struct disk_entry *fs_find(const char *name);
int fs_read(const struct disk_entry *e, u32 offset, void *buf, u32 n);   /* kernel buffer */

/* proc.c: processes, the scheduler, sleep and wakeup. */
#define NPROC 8
enum proc_state { P_FREE, P_LOADING, P_RUNNABLE, P_SLEEPING, P_ZOMBIE };

struct proc {
    enum proc_state state;
    u32 pid;
    struct proc *parent;
    char name[16];
    u32 *pgdir;
    u32 *user_pt;                   /* the page table behind USER_BASE */
    u8 *kstack;                     /* one page; the TSS esp0 is its top */
    u32 ctx_esp;                    /* saved kernel ESP (swtch.S) */
    void *chan;                     /* what a sleeping process waits for */
    s32 status;                     /* exit status, for the parent */
    u32 preempts;
};

/* A source of a program image: the multiboot module (memory) or a disk file. */
struct image_src {
    const u8 *mem;                  /* in memory, or NULL */
    const struct disk_entry *file;  /* else on the disk */
    u32 size;
};

extern struct proc *current;
extern volatile u32 ticks;
void proc_init(void);
int proc_spawn(const char *name, const struct image_src *src, const char *args, struct proc *parent);
NORETURN void proc_exit(s32 status);
s32 proc_wait(u32 pid);
void proc_reap_orphans(void);
int proc_runnable(void);            /* someone other than the idle context can run */
int init_exited(s32 *status);
void sleep_on(void *chan);
void wakeup(void *chan);
void yield(void);
void timer_tick(struct frame *f);
int proc_any_alive(void);
int user_range(u32 addr, u32 n);    /* mapped in the current process */
u32 map_shared(void);               /* maps the shared page for the current process */
u32 shared_pages(void);             /* 1 once the shared page exists */

/* syscall.c */
void syscall_dispatch(struct frame *f);

/* swtch.S */
void swtch(u32 *save_esp, u32 new_esp);
extern char user_entry[];           /* pops a struct frame and IRETs to ring 3 */

/* Interrupts stay off in the kernel (interrupt gates clear IF); these are for the
 * idle loop and boot-time waits only. CLI/STI and HLT, never PUSHF/POPF: a VMM
 * that runs the kernel outside ring 0 sees the first three trap, while a POPF that
 * fails to restore IF would go unnoticed (raw mode's known POPF leak). */
static inline void irq_enable(void) { __asm__ volatile("sti" ::: "memory"); }
static inline void irq_disable(void) { __asm__ volatile("cli" ::: "memory"); }
static inline void idle_wait(void) { __asm__ volatile("sti; hlt; cli" ::: "memory"); }

static inline u16 inw(u16 port)
{
    u16 v;
    __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}

int strcmp(const char *a, const char *b);
int strncmp(const char *a, const char *b, u32 n);
char *strncpy_z(char *d, const char *s, u32 n);     /* always NUL-terminates */

#endif
