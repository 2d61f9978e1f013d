/* minios: boot, the interrupt handlers, and the idle loop.
 *
 * Boot: the console, the GDT/IDT/TSS (common/desc.c), the 8259s masked, the MP
 * tables, paging, the local APIC timer, the I/O APIC, the keyboard, the disk and
 * its file table; then the first multiboot module becomes process 1 (the shell)
 * and the boot context becomes the idle loop. When process 1 has exited and
 * nothing else runs, minios says that its screen is final, waits for one key and
 * powers off through the isa-debug-exit port.
 *
 * Kernel command line: timer=N, the local APIC timer's initial count (divider 16;
 * default 625000, 10 ms on QEMU's 1 GHz APIC clock). Nothing minios prints
 * depends on it: the output of processes is ordered by system calls only. */
#include "minios.h"

#define DEFAULT_TIMER_COUNT 625000
#define MBI_FLAG_MODS (1u << 3)
#define LAPIC_DEFAULT 0xFEE00000
#define IOAPIC_DEFAULT 0xFEC00000
#define IMCR_INDEX 0x22
#define IMCR_DATA 0x23
#define IMCR_APIC_MODE 0x70

struct multiboot_mods {                 /* multiboot 0.6.96, 3.3: after the fields kernel.h has */
    struct multiboot_info head;
    u32 mods_count;
    u32 mods_addr;
};

struct multiboot_module {
    u32 start, end;                     /* physical, end exclusive */
    u32 string;
    u32 reserved;
};

extern char __kernel_end[];
extern char stack_top[];                /* common/entry.S: the boot stack */

/* SDM vol. 3, table 6-1; the reserved vectors by number. */
static const char *const exception_names[32] = {
    "#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "CSO", "#TS", "#NP",
    "#SS", "#GP", "#PF", "#15", "#MF", "#AC", "#MC", "#XM", "#VE", "#CP", "#22", "#23",
    "#24", "#25", "#26", "#27", "#28", "#29", "#30", "#31",
};

static u32 read_cr2(void)
{
    u32 v;

    __asm__ volatile("movl %%cr2, %0" : "=r"(v));
    return v;
}

/* A fault in ring 3 ends the process; in the kernel it is a bug. */
static void on_exception(struct frame *f)
{
    const char *name = exception_names[f->vector & 31];

    if ((f->cs & 3) != 3) {
        cprintf("minios: kernel %s, error 0x%x, eip 0x%08x, cr2 0x%08x\n", name, f->err, f->eip, read_cr2());
        debug_exit(EXIT_UNEXPECTED);
    }
    cprintf("minios: pid %u (%s) killed by %s", current->pid, current->name, name);
    if (f->vector == 14)
        cprintf(" at 0x%08x", read_cr2());
    cprintf(", error 0x%x, eip 0x%08x\n", f->err, f->eip);
    proc_exit(-1);
}

static void on_spurious(struct frame *f)
{
    (void)f;                            /* SDM 11.9: no EOI for the spurious vector */
}

static void traps_init(void)
{
    u32 v;

    gdt_init();
    idt_init();
    for (v = 0; v < 32; v++)
        set_handler(v, on_exception);
    set_handler(VEC_TIMER, timer_tick);
    set_handler(VEC_SPURIOUS, on_spurious);
    idt_set_gate(SYSCALL_VECTOR, 3);    /* DPL 3: ring 3 may INT 0x80 */
    set_handler(SYSCALL_VECTOR, syscall_dispatch);
    tss_load((u32)stack_top);
}

/* The module's string is "<path> <args>" from QEMU's -initrd (a loader may pass
 * the arguments alone): skip a first word without '=' as common/cmdline.c does. */
static const char *module_args(const struct multiboot_module *m)
{
    struct multiboot_info as_cmdline = { .flags = MBI_FLAG_CMDLINE, .cmdline = m->string };

    return cmdline_args(&as_cmdline);
}

/* The end of everything the loader placed in memory that minios still reads:
 * the kernel, the modules, their strings, the module list and the command line.
 * Loaders differ in where they put each (QEMU: all of it after the kernel). */
static u32 loader_data_end(const struct multiboot_mods *mb)
{
    const struct multiboot_module *m = (const struct multiboot_module *)mb->mods_addr;
    u32 end = (u32)__kernel_end, i;

#define PAST(a, n) do { if ((a) + (n) > end) end = (a) + (n); } while (0)
    if (mb->head.flags & MBI_FLAG_CMDLINE && mb->head.cmdline)
        PAST(mb->head.cmdline, strlen((const char *)mb->head.cmdline) + 1);
    PAST(mb->mods_addr, mb->mods_count * sizeof(*m));
    for (i = 0; i < mb->mods_count; i++) {
        PAST(m[i].start, m[i].end - m[i].start);
        if (m[i].string)
            PAST(m[i].string, strlen((const char *)m[i].string) + 1);
    }
#undef PAST
    return end;
}

static void apics_init(struct mp_info *mp, u32 timer_count)
{
    u32 pins;

    /* MP spec 3.6.2.1: a system booting in PIC mode has an IMCR; point it at the APIC. */
    if (mp->imcr) {
        outb(IMCR_INDEX, IMCR_APIC_MODE);
        outb(IMCR_DATA, inb(IMCR_DATA) | 1);
    }
    lapic_init(mp->lapic, timer_count);
    pins = ioapic_init(mp->ioapic);
    cprintf("apic: local apic timer periodic at vector 0x%x, i/o apic with %u pins\n", VEC_TIMER, pins);
}

/* Once the screen holds its last line, a line on COM1 alone says so (the QEMU
 * harness reads the screen then: every VGA write came before it); the key that
 * follows ends the run. */
static NORETURN void power_off(s32 status, u32 leaked)
{
    cprintf("minios: sh exited with status %d\n", status);
    if (leaked)
        cprintf("minios: %u pages leaked\n", leaked);
    cprintf("minios: press a key to power off\n");
    serial_puts("minios: screen final\n");
    kbd_read();
    serial_puts("minios: power off\n");
    debug_exit(status == 0 && !leaked ? EXIT_OK : EXIT_FAIL);
}

u32 kmain(u32 magic, const struct multiboot_info *mbi)
{
    const struct multiboot_mods *mb = (const struct multiboot_mods *)mbi;
    const struct multiboot_module *mod;
    struct mp_info mp = { .lapic = LAPIC_DEFAULT, .ioapic = IOAPIC_DEFAULT };
    struct image_src init;
    u32 timer_count, pool_start, ram_end, sectors, boot_pages;
    int files;
    s32 status;

    console_init();
    cprintf("minios: booting\n");
    if (magic != MULTIBOOT_BOOTLOADER_MAGIC || !(mbi->flags & MBI_FLAG_MEM)) {
        cprintf("minios: not booted by a multiboot loader\n");
        return EXIT_FAIL;
    }
    timer_count = cmdline_u32(cmdline_args(mbi), "timer", DEFAULT_TIMER_COUNT);
    mod = (const struct multiboot_module *)mb->mods_addr;
    if (!(mbi->flags & MBI_FLAG_MODS) || mb->mods_count == 0 || mod->end <= mod->start) {
        cprintf("minios: no multiboot module: nothing to run\n");
        return EXIT_FAIL;
    }
    cprintf("minios: %u module(s), the first one (%u bytes) is process 1\n", mb->mods_count,
            mod->end - mod->start);

    traps_init();
    pic_remap(0xFF, 0xFF);              /* remapped off the exception vectors, all masked */
    if (mp_find(&mp))
        cprintf("mp: no MP table; default APIC addresses\n");
    else
        cprintf("mp: %u cpu(s), %u i/o apic(s), local apic at 0x%08x, i/o apic at 0x%08x\n", mp.cpus,
                mp.ioapics, mp.lapic, mp.ioapic);

    pool_start = loader_data_end(mb);
    ram_end = 0x100000 + mbi->mem_upper * 1024;
    mm_init(pool_start, ram_end, ram_end, mp.lapic, mp.ioapic);
    boot_pages = pages_free();
    cprintf("mm: paging on, kernel identity-mapped, one page directory per process\n");

    apics_init(&mp, timer_count);
    proc_init();
    kbd_init();
    if (ide_init(&sectors)) {
        cprintf("ide: no disk on the primary master\n");
        return EXIT_FAIL;
    }
    files = fs_init(sectors);
    cprintf("ide: primary master, %u sectors, %d files\n", sectors, files);
    if (files < 0)
        return EXIT_FAIL;

    init.mem = (const u8 *)mod->start;
    init.file = NULL;
    init.size = mod->end - mod->start;
    if (proc_spawn("sh", &init, module_args(mod), NULL) != 1) {
        cprintf("minios: module 1 is not a program\n");
        return EXIT_FAIL;
    }

    /* The idle loop: run whoever can run, else halt until an interrupt. */
    for (;;) {
        proc_reap_orphans();
        if (proc_runnable())
            yield();
        else if (init_exited(&status) && !proc_any_alive())
            break;
        else
            idle_wait();
    }
    power_off(status, boot_pages - pages_free() - shared_pages());
}
