/* procs: two user processes in ring 3, each with its own page directory and kernel stack,
 * preempted by the local APIC timer at a high rate (every 20 us): every switch reloads CR3,
 * updates TSS.esp0 and IRETs to the other process. Each process spins in user mode and
 * makes INT 0x80 system calls; it never yields, so that both finish proves the timer took
 * the CPU away from a spinning process. Prints only counts that do not depend on timing. */
#include "probe.h"

#define LAPIC 0xFEE00000u
#define V_TIMER 0x21
#define SYSCALLS 20
#define KSTACK 4096

struct task {
    u32 esp;                                    /* saved kernel ESP (pushal + IRET frame) */
    u32 cr3;
    u32 kstack_top;
    u32 syscalls;
    u32 done;
};

static u32 pd[2][1024] ALIGNED(4096);
static u8 kstacks[2][KSTACK] ALIGNED(16);
static struct task tasks[2];
static volatile u32 current, bad_cpl;
static u32 ustacks[2][256] __attribute__((section(".user_data")));
static volatile u32 spins[2] __attribute__((section(".user_data")));

/* Ring 3: spin, and every 2048 iterations ask the kernel for a system call (EAX 1); after
 * SYSCALLS of them, say so (EAX 2) and spin for ever. EBX is the process number. */
__attribute__((section(".user_text"), noreturn)) static void user_main(void)
{
    u32 me, n = 0;
    __asm__ volatile("" : "=b"(me));
    for (;;) {
        if ((++spins[me] & 2047) == 0 && n < SYSCALLS) {
            n++;
            __asm__ volatile("int $0x80" : : "a"(n == SYSCALLS ? 2 : 1), "b"(me) : "memory");
        }
    }
}

/* Called by the timer stub with the interrupted process's kernel ESP; returns the ESP to
 * resume (the other process's), after switching CR3 and TSS.esp0. */
u32 timer_switch(u32 esp);
u32 timer_switch(u32 esp)
{
    struct task *t = &tasks[current];
    t->esp = esp;
    if ((((u32 *)esp)[9] & 3) != 3)             /* the IRET frame's CS: the timer hit user mode */
        bad_cpl++;
    current ^= 1;
    t = &tasks[current];
    __asm__ volatile("movl %0, %%cr3" : : "r"(t->cr3) : "memory");
    tss.esp0 = t->kstack_top;
    mmio_write(LAPIC + 0xB0, 0);                /* EOI */
    if (tasks[0].done && tasks[1].done) {
        mmio_write(LAPIC + 0x320, 0x10000);     /* timer masked */
        printf("process 0: %u system calls, process 1: %u system calls\n", tasks[0].syscalls,
               tasks[1].syscalls);
        printf("preempted in user mode: %s\n", bad_cpl ? "no" : "yes");
        debug_exit(EXIT_OK);
    }
    return t->esp;
}

__asm__(
    ".text\n"
    "timer_entry:\n\t"
    "pushal\n\t"
    "pushl %esp\n\t"
    "call timer_switch\n\t"
    "movl %eax, %esp\n\t"                     /* the other process's kernel stack */
    "popal\n\t"
    "iret\n");
void timer_entry(void);

static void on_syscall(struct frame *f)
{
    struct task *t = &tasks[f->ebx & 1];
    t->syscalls++;
    if (f->eax == 2)
        t->done = 1;
}

static void start_task(u32 n)
{
    struct task *t = &tasks[n];
    for (u32 i = 0; i < 1024; i++)
        pd[n][i] = 0;
    pd[n][0] = 0x00000087;                      /* 0-4 MiB: present, writable, user, 4 MiB page */
    pd[n][LAPIC >> 22] = (LAPIC & 0xFFC00000u) | 0x83;
    t->cr3 = (u32)pd[n];
    t->kstack_top = (u32)&kstacks[n][KSTACK];
    u32 *sp = (u32 *)t->kstack_top;
    *--sp = USER_DS | 3;                        /* IRET frame to ring 3 */
    *--sp = (u32)&ustacks[n][256];
    *--sp = 0x202;
    *--sp = USER_CS | 3;
    *--sp = (u32)user_main;
    for (u32 r = 0; r < 8; r++)                 /* pushal: EAX ECX EDX EBX ESP EBP ESI EDI */
        *--sp = r == 3 ? n : 0;                 /* EBX (fourth from the top) = process number */
    t->esp = (u32)sp;
}

u32 kmain(u32 magic, const struct multiboot_info *mbi)
{
    (void)magic;
    (void)mbi;
    serial_init();
    gdt_init();
    idt_init();
    idt_set_gate(0x80, 3);
    set_handler(0x80, on_syscall);
    u32 entry = (u32)timer_entry;
    idt[V_TIMER] = ((u64)((entry & 0xFFFF0000u) | 0x8E00) << 32) | (entry & 0xFFFF) | (KERNEL_CS << 16);
    pic_remap(0xFF, 0xFF);
    printf("procs: ring1 platform probe\n");
    start_task(0);
    start_task(1);
    tss_load(tasks[0].kstack_top);
    u32 cr4;
    __asm__ volatile("movl %%cr4, %0" : "=r"(cr4));
    __asm__ volatile("movl %0, %%cr4" : : "r"(cr4 | 0x10));      /* PSE: 4 MiB pages */
    __asm__ volatile("movl %0, %%cr3" : : "r"(tasks[0].cr3));
    u32 cr0;
    __asm__ volatile("movl %%cr0, %0" : "=r"(cr0));
    __asm__ volatile("movl %0, %%cr0" : : "r"(cr0 | 0x80000000u) : "memory");
    mmio_write(LAPIC + 0xF0, 0x1FF);
    mmio_write(LAPIC + 0x3E0, 0xB);                               /* divide by 1 */
    mmio_write(LAPIC + 0x320, 0x20000 | V_TIMER);                /* periodic */
    mmio_write(LAPIC + 0x380, 20000);                             /* every 20 us */
    current = 0;
    __asm__ volatile("movl %0, %%esp\n\tpopal\n\tiret" : : "r"(tasks[0].esp) : "memory");
    return EXIT_FAIL;
}
