/* timer: its own GDT and IDT, the 8259 PIC remapped to 0x20-0x2F with only IRQ0
 * unmasked, the 8254 PIT at 100 Hz, and an STI; HLT idle loop. The IRQ0 handler
 * counts ticks, sends EOI and returns with IRET (common/isr.S). Prints every tenth
 * tick and stops after 50. No options. */
#include "../common/desc.h"

#define HZ 100
#define STOP_AFTER 50

static volatile u32 ticks;
static volatile u32 bad_cs, bad_if_before;

static void on_irq0(struct frame *f)
{
    ticks++;
    if (f->cs != KERNEL_CS)             /* the interrupted code ran in ring 0 */
        bad_cs++;
    if (!(f->eflags & X86_EFLAGS_IF))   /* ... with interrupts on */
        bad_if_before++;
    pic_eoi(0);
}

u32 kmain(u32 magic, const struct multiboot_info *mbi)
{
    u32 printed = 0;

    (void)mbi;
    serial_init();
    printf("timer: ring1 sample kernel\n");
    if (magic != MULTIBOOT_BOOTLOADER_MAGIC) {
        printf("bad multiboot magic\n");
        return EXIT_FAIL;
    }
    gdt_init();
    /* Not the selectors: MOV r,CS/SS shows RPL 1 in unpatched ring 1, and this
     * sample must print the same everywhere (zoo is the one that shows leaks). */
    printf("gdt loaded\n");
    idt_init();
    set_handler(IRQ_BASE + 0, on_irq0);
    printf("idt loaded\n");
    pic_remap(0xFE, 0xFF);              /* IRQ0 only */
    pit_start(HZ);
    printf("pit: %u Hz, pic: irq0 at vector 0x%x\n", HZ, IRQ_BASE);

    __asm__ volatile("sti");
    while (printed < STOP_AFTER) {
        u32 now;

        __asm__ volatile("hlt");
        now = ticks;
        while (printed + 10 <= now && printed < STOP_AFTER) {
            printed += 10;
            printf("tick %u\n", printed);
        }
    }
    __asm__ volatile("cli");
    pit_stop();
    pic_remap(0xFF, 0xFF);

    printf("frame cs was kernel cs: %s\n", bad_cs ? "no" : "yes");
    printf("frame eflags had IF: %s\n", bad_if_before ? "no" : "yes");
    printf("timer: stopped after %u ticks\n", STOP_AFTER);
    return bad_cs || bad_if_before ? EXIT_FAIL : EXIT_OK;
}
