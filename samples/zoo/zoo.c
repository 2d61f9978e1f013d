/* zoo: every privileged and sensitive instruction class at least once, and one
 * line per observation in the form "<key>: <value>".
 *
 * Under QEMU it prints what ring 0 sees. A VMM that runs the kernel in ring 1
 * without hiding it shows itself in a known set of lines (SGDT/SIDT/SLDT/STR/SMSW,
 * PUSHF's IF, POPF and IRET of IF, RPL in CS/SS, LAR/LSL/VERR/VERW); the keys are
 * stable so that a line-by-line diff against the golden file names the leaks.
 * The exit status is 0 whatever was observed (an unexpected exception ends the run
 * with status 2): zoo observes, the diff judges. No options.
 */
#include "../common/desc.h"

#define CR0_PE (1u << 0)
#define CR0_TS (1u << 3)
#define CR0_WP (1u << 16)
#define CR4_PSE (1u << 4)
#define EFLAGS_IOPL (3u << 12)
#define MSR_IA32_SYSENTER_CS 0x174
#define COM1 0x3F8
#define COM1_SCRATCH (COM1 + 7)
#define COM1_LSR (COM1 + 5)
#define LSR_TEMT 0x40

/* A page for CR3 and INVLPG (paging stays off: the value is only stored). */
static u8 scratch_page[4096] ALIGNED(4096);
static volatile u32 ticks, int80_seen, int3_seen;

static const char *yn(int b) { return b ? "yes" : "no"; }

static void on_irq0(struct frame *f) { (void)f; ticks++; pic_eoi(0); }
static void on_int80(struct frame *f) { int80_seen = f->eax; }
static void on_int3(struct frame *f) { (void)f; int3_seen++; }

static u32 read_cr(int n)
{
    u32 v = 0;

    switch (n) {
    case 0: __asm__ volatile("movl %%cr0, %0" : "=r"(v)); break;
    case 2: __asm__ volatile("movl %%cr2, %0" : "=r"(v)); break;
    case 3: __asm__ volatile("movl %%cr3, %0" : "=r"(v)); break;
    case 4: __asm__ volatile("movl %%cr4, %0" : "=r"(v)); break;
    }
    return v;
}

static void write_cr(int n, u32 v)
{
    switch (n) {
    case 0: __asm__ volatile("movl %0, %%cr0" : : "r"(v) : "memory"); break;
    case 2: __asm__ volatile("movl %0, %%cr2" : : "r"(v) : "memory"); break;
    case 3: __asm__ volatile("movl %0, %%cr3" : : "r"(v) : "memory"); break;
    case 4: __asm__ volatile("movl %0, %%cr4" : : "r"(v) : "memory"); break;
    }
}

static u32 smsw(void)
{
    u16 v;

    __asm__ volatile("smsw %0" : "=m"(v));
    return v;
}

/* LAR/LSL/VERR/VERW set ZF on success. */
static void lar_line(u32 sel)
{
    u32 v = 0;
    u8 ok;

    __asm__ volatile("larl %2, %0; setz %1" : "+r"(v), "=q"(ok) : "r"(sel) : "cc");
    if (ok)
        printf("lar 0x%02x: 0x%08x\n", sel, v);
    else
        printf("lar 0x%02x: fail\n", sel);
}

static void lsl_line(u32 sel)
{
    u32 v = 0;
    u8 ok;

    __asm__ volatile("lsll %2, %0; setz %1" : "+r"(v), "=q"(ok) : "r"(sel) : "cc");
    if (ok)
        printf("lsl 0x%02x: 0x%08x\n", sel, v);
    else
        printf("lsl 0x%02x: fail\n", sel);
}

static void verr_verw_line(u32 sel)
{
    u8 r, w;

    __asm__ volatile("verr %w1; setz %0" : "=q"(r) : "r"(sel) : "cc");
    __asm__ volatile("verw %w1; setz %0" : "=q"(w) : "r"(sel) : "cc");
    printf("verr 0x%02x: %s\n", sel, yn(r));
    printf("verw 0x%02x: %s\n", sel, yn(w));
}

static void segments(void)
{
    u32 cs = read_cs(), ss = read_ss(), ds, pcs, pss;

    __asm__ volatile("movl %%ds, %0" : "=r"(ds));
    __asm__ volatile("pushl %%cs; popl %0" : "=r"(pcs));
    __asm__ volatile("pushl %%ss; popl %0" : "=r"(pss));
    printf("cs.rpl: %u\n", cs & 3);
    printf("ss.rpl: %u\n", ss & 3);
    printf("ds.rpl: %u\n", ds & 3);
    printf("push cs rpl: %u\n", pcs & 3);
    printf("push ss rpl: %u\n", pss & 3);
}

static void flags(void)
{
    u32 f, g;

    /* Only IRQ0 could arrive and the PIC masks it: IF = 1 is safe here. */
    __asm__ volatile("cli; pushfl; popl %0" : "=r"(f));
    printf("pushf.if after cli: %u\n", (f >> 9) & 1);
    __asm__ volatile("sti; pushfl; popl %0" : "=r"(f));
    printf("pushf.if after sti: %u\n", (f >> 9) & 1);
    printf("pushf.iopl: %u\n", (f & EFLAGS_IOPL) >> 12);

    /* POPF of IF: with IF = 0, pop a word with IF = 1, look again; and back. */
    __asm__ volatile("cli; pushfl; orl $0x200, (%%esp); popfl; pushfl; popl %0" : "=r"(f) : : "cc");
    printf("popf restores if: %s\n", yn(f & X86_EFLAGS_IF));
    __asm__ volatile("sti; pushfl; andl $~0x200, (%%esp); popfl; pushfl; popl %0" : "=r"(f) : : "cc");
    printf("popf clears if: %s\n", yn(!(f & X86_EFLAGS_IF)));
    /* POPF of IOPL: ask for 3; ring 0 may change it. Put 0 back. */
    __asm__ volatile("pushfl; orl $0x3000, (%%esp); popfl; pushfl; popl %0;"
                     "pushfl; andl $~0x3000, (%%esp); popfl" : "=r"(f) : : "cc");
    printf("popf sets iopl 3: %s\n", yn((f & EFLAGS_IOPL) == EFLAGS_IOPL));

    /* A same-privilege IRET to a label, with IF = 1 in the frame while IF = 0. */
    g = 0;
    __asm__ volatile("cli\n\t"
                     "pushfl\n\t"
                     "orl $0x200, (%%esp)\n\t"
                     "pushl %%cs\n\t"
                     "pushl $1f\n\t"
                     "iret\n\t"
                     "movl $0, %1\n"    /* skipped when IRET lands on 1: */
                     "1:\n\t"
                     "movl $1, %1\n\t"
                     "pushfl\n\t"
                     "popl %0\n\t"
                     "cli"
                     : "=r"(f), "=r"(g) : : "cc", "memory");
    printf("iret to label: %s\n", yn(g));
    printf("iret restores if: %s\n", yn(f & X86_EFLAGS_IF));
}

static void tables(void)
{
    struct dtr gd, id;
    u32 ldtr = 0xFFFF, tr = 0xFFFF;

    __asm__ volatile("sgdt %0" : "=m"(gd));
    __asm__ volatile("sidt %0" : "=m"(id));
    __asm__ volatile("sldt %0" : "=r"(ldtr));
    __asm__ volatile("str %0" : "=r"(tr));
    printf("sgdt.base: 0x%08x\n", gd.base);
    printf("sgdt.limit: 0x%04x\n", gd.limit);
    printf("sgdt matches lgdt: %s\n", yn(gd.base == (u32)gdt && gd.limit == sizeof(gdt) - 1));
    printf("sidt.base: 0x%08x\n", id.base);
    printf("sidt.limit: 0x%04x\n", id.limit);
    printf("sidt matches lidt: %s\n", yn(id.base == (u32)idt && id.limit == sizeof(idt) - 1));
    printf("sldt: 0x%04x\n", ldtr & 0xFFFF);
    printf("str: 0x%04x\n", tr & 0xFFFF);
    /* LTR marks the TSS descriptor busy in the guest's own GDT (type 9 -> 11). */
    printf("tss busy after ltr: %s\n", yn(((gdt[TSS_SEL >> 3] >> 40) & 0xF) == 0xB));
}

static void control_registers(void)
{
    u32 cr0 = read_cr(0), cr4, v;

    printf("cr0: 0x%08x\n", cr0);
    printf("cr0.pe: %u\n", cr0 & CR0_PE);
    printf("smsw: 0x%04x\n", smsw());
    printf("smsw matches cr0: %s\n", yn(smsw() == (cr0 & 0xFFFF)));

    write_cr(0, cr0 | CR0_WP);
    v = read_cr(0);
    printf("mov cr0 sets wp: %s\n", yn(v & CR0_WP));
    write_cr(0, cr0);

    __asm__ volatile("lmsw %w0" : : "r"(smsw() | CR0_TS));
    v = read_cr(0);
    printf("lmsw sets ts: %s\n", yn(v & CR0_TS));
    printf("smsw sees ts: %s\n", yn(smsw() & CR0_TS));
    __asm__ volatile("clts");
    printf("clts clears ts: %s\n", yn(!(read_cr(0) & CR0_TS)));
    printf("smsw after clts: 0x%04x\n", smsw());

    write_cr(2, 0x12345678);
    printf("cr2: 0x%08x\n", read_cr(2));

    v = read_cr(3);
    write_cr(3, (u32)scratch_page);
    printf("mov cr3 roundtrip: %s\n", yn(read_cr(3) == (u32)scratch_page));
    write_cr(3, v);

    cr4 = read_cr(4);
    printf("cr4: 0x%08x\n", cr4);
    write_cr(4, cr4 | CR4_PSE);
    printf("mov cr4 sets pse: %s\n", yn(read_cr(4) & CR4_PSE));
    write_cr(4, cr4);
}

static void debug_registers(void)
{
    u32 v;

    __asm__ volatile("movl %%dr7, %0" : "=r"(v));
    printf("dr7: 0x%08x\n", v);
    /* LE|GE only: no breakpoint is enabled. */
    __asm__ volatile("movl %0, %%dr7" : : "r"(0x300u));
    __asm__ volatile("movl %%dr7, %0" : "=r"(v));
    printf("dr7 after write 0x300: 0x%08x\n", v);
    __asm__ volatile("movl %0, %%dr7" : : "r"(0x400u));
}

static void caches_and_msrs(void)
{
    u32 lo, hi, old_lo, old_hi;

    __asm__ volatile("invlpg (%0)" : : "r"(scratch_page) : "memory");
    printf("invlpg: done\n");
    __asm__ volatile("wbinvd" : : : "memory");
    printf("wbinvd: done\n");
    /* INVD drops dirty cache lines on hardware; under an emulator it is harmless,
     * and the WBINVD just before leaves nothing dirty. */
    __asm__ volatile("invd" : : : "memory");
    printf("invd: done\n");

    __asm__ volatile("rdmsr" : "=a"(old_lo), "=d"(old_hi) : "c"(MSR_IA32_SYSENTER_CS));
    __asm__ volatile("wrmsr" : : "a"(KERNEL_CS), "d"(0), "c"(MSR_IA32_SYSENTER_CS));
    __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(MSR_IA32_SYSENTER_CS));
    printf("rdmsr 0x174 after wrmsr 0x8: 0x%08x%08x\n", hi, lo);
    __asm__ volatile("wrmsr" : : "a"(old_lo), "d"(old_hi), "c"(MSR_IA32_SYSENTER_CS));
}

static void tsc_and_cpuid(void)
{
    u32 lo1, hi1, lo2, hi2, a, b, c, d;

    __asm__ volatile("rdtsc" : "=a"(lo1), "=d"(hi1));
    __asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(0));
    printf("cpuid vendor ok: %s\n", yn(b && c && d));
    printf("cpuid max leaf >= 1: %s\n", yn(a >= 1));
    __asm__ volatile("rdtsc" : "=a"(lo2), "=d"(hi2));
    printf("rdtsc monotonic: %s\n", yn(hi2 > hi1 || (hi2 == hi1 && lo2 > lo1)));
}

static void descriptors(void)
{
    u32 fs;

    /* Load the LDT's data segment so its descriptor is in use (and accessed). */
    __asm__ volatile("movl %1, %%fs; movl %%fs, %0" : "=r"(fs) : "r"(0x0Cu));
    printf("mov fs from ldt: 0x%04x\n", fs & 0xFFFF);
    __asm__ volatile("movl %0, %%fs" : : "r"((u32)KERNEL_DS));

    lar_line(KERNEL_CS);
    lar_line(KERNEL_DS);
    lar_line(USER_CS | 3);
    lar_line(TSS_SEL);
    lar_line(LDT_SEL);
    lar_line(0x0C);
    lar_line(GDT_ENTRIES * 8);          /* past the GDT limit */
    lsl_line(KERNEL_CS);
    lsl_line(KERNEL_DS);
    lsl_line(TSS_SEL);
    lsl_line(LDT_SEL);
    verr_verw_line(KERNEL_CS);
    verr_verw_line(KERNEL_DS);
    verr_verw_line(USER_DS | 3);
}

static void port_io(void)
{
    static const char msg[] = "hello via rep outsb\n";
    u8 buf[4] = { 0, 0, 0, 0 };
    u32 n;
    const void *src;
    void *dst;
    u8 b;

    outb(0x80, 0x42);                   /* the POST port */
    printf("in 0x80: 0x%02x\n", inb(0x80));
    outb(COM1_SCRATCH, 0x5A);
    printf("uart scratch: 0x%02x\n", inb(COM1_SCRATCH));

    /* RTC status register B: 24-hour and binary-mode bits (set by the firmware). */
    outb(0x70, 0x0B);
    b = inb(0x71);
    printf("cmos.b 24h: %u\n", (b >> 1) & 1);
    printf("cmos.b binary: %u\n", (b >> 2) & 1);

    dst = buf;
    n = sizeof(buf);
    __asm__ volatile("cld; rep insb" : "+D"(dst), "+c"(n) : "d"(COM1_SCRATCH) : "memory");
    printf("rep insb scratch: %02x%02x%02x%02x\n", buf[0], buf[1], buf[2], buf[3]);

    printf("rep outsb: ");
    while (!(inb(COM1_LSR) & LSR_TEMT))  /* the FIFO is empty: 16 bytes fit */
        ;
    src = msg;
    n = sizeof(msg) - 1;
    __asm__ volatile("cld; rep outsb" : "+S"(src), "+c"(n) : "d"(COM1) : "memory");
}

static void software_interrupts(void)
{
    u32 r = 0x1234;

    __asm__ volatile("int $0x80" : "+a"(r) : : "memory");
    printf("int 0x80 handled: %s\n", yn(int80_seen == 0x1234));
    __asm__ volatile("int3" : : : "memory");
    printf("int3 handled: %s\n", yn(int3_seen == 1));
}

static void halt(void)
{
    pic_remap(0xFE, 0xFF);
    pit_start(100);
    __asm__ volatile("sti; hlt; cli" : : : "memory");
    pit_stop();
    pic_remap(0xFF, 0xFF);
    printf("hlt woke on irq0: %s\n", yn(ticks >= 1));
}

u32 kmain(u32 magic, const struct multiboot_info *mbi)
{
    (void)mbi;
    serial_init();
    printf("zoo: ring1 sample kernel\n");
    if (magic != MULTIBOOT_BOOTLOADER_MAGIC) {
        printf("bad multiboot magic\n");
        return EXIT_FAIL;
    }
    gdt_init();
    idt_init();
    idt_set_gate(0x80, 0);
    set_handler(IRQ_BASE + 0, on_irq0);
    set_handler(0x80, on_int80);
    set_handler(3, on_int3);
    pic_remap(0xFF, 0xFF);
    ldt_load();
    tss_load((u32)scratch_page + sizeof(scratch_page));

    segments();
    flags();
    tables();
    control_registers();
    debug_registers();
    caches_and_msrs();
    tsc_and_cpuid();
    descriptors();
    port_io();
    software_interrupts();
    halt();
    printf("zoo: done\n");
    return EXIT_OK;
}
