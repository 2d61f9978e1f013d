/* hello: serial output only. The smallest guest: checks the multiboot magic,
 * prints the command line it was given, and exits through debug-exit. */
#include "../common/kernel.h"

u32 kmain(u32 magic, const struct multiboot_info *mbi)
{
    int ok = magic == MULTIBOOT_BOOTLOADER_MAGIC;

    serial_init();
    printf("hello: ring1 sample kernel\n");
    printf("multiboot magic: %s\n", ok ? "ok" : "bad");
    if (!ok)
        return EXIT_FAIL;
    printf("cmdline present: %s\n", (mbi->flags & MBI_FLAG_CMDLINE) ? "yes" : "no");
    printf("cmdline args: [%s]\n", cmdline_args(mbi));
    printf("mem info present: %s\n", (mbi->flags & MBI_FLAG_MEM) ? "yes" : "no");
    printf("mem_upper >= 15 MiB: %s\n", mbi->mem_upper >= 15 * 1024 ? "yes" : "no");
    printf("checks: %d %u 0x%x 0x%08x %c %s\n", -42, 4000000000u, 0xbeef, 0x1234, 'z', "done");
    printf("hello: bye\n");
    return EXIT_OK;
}
