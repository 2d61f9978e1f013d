/* attacks: hostile and unusual guest-kernel operations (attacks.h). One group per boot,
 * chosen by `test=NAME` on the command line. */
#include "attacks.h"

struct group {
    const char *name;
    void (*run)(void);
};

static void user_patch_flat(void) { test_user_patch(0); }
static void user_patch_paged(void) { test_user_patch(1); }

static const struct group groups[] = {
    {"selectors", test_selectors},
    {"gates", test_gates},
    {"exceptions", test_exceptions},
    {"instructions", test_instructions},
    {"user_patch", user_patch_flat},
    {"user_patch_paged", user_patch_paged},
    {"pde", test_pde},
    {"smc", test_smc},
    {"iopl", test_iopl},
    {"unscanned", test_unscanned},
};

static int same(const char *a, const char *b)
{
    while (*a && *a == *b)
        a++, b++;
    return *a == *b;
}

static const char *option(const char *args, const char *key, char *out, u32 size)
{
    /* The value of key=... as a word (cmdline.c only parses numbers). */
    const char *p = args;
    u32 n;

    while (p && *p) {
        const char *k = key;
        while (*p == ' ')
            p++;
        while (*k && *p == *k)
            p++, k++;
        if (!*k && *p == '=') {
            p++;
            for (n = 0; n + 1 < size && p[n] && p[n] != ' '; n++)
                out[n] = p[n];
            out[n] = 0;
            return out;
        }
        while (*p && *p != ' ')
            p++;
    }
    return NULL;
}

u32 kmain(u32 magic, const struct multiboot_info *mbi)
{
    char name[32];
    u32 i;

    serial_init();
    if (magic != MULTIBOOT_BOOTLOADER_MAGIC)
        return EXIT_FAIL;
    if (!option(cmdline_args(mbi), "test", name, sizeof(name))) {
        printf("attacks: test=NAME missing\n");
        return EXIT_FAIL;
    }
    attacks_gdt_init();
    attacks_idt_init();
    pic_remap(0xFF, 0xFF);
    for (i = 0; i < sizeof(groups) / sizeof(groups[0]); i++) {
        if (same(groups[i].name, name)) {
            printf("attacks: %s\n", name);
            groups[i].run();
            printf("attacks: %s done\n", name);
            return EXIT_OK;
        }
    }
    printf("attacks: no group %s\n", name);
    return EXIT_FAIL;
}
