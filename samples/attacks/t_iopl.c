/* Group `iopl`: ring 3 with IOPL 3 from its IRET frame (Linux's iopl(3) path): I/O, CLI and
 * STI are legal there and IF is the user's (issue 11, item 5). */
#include "attacks.h"

#define DECL(p) extern void p(void); extern char p##_at[]
DECL(p_u_out); DECL(p_u_in); DECL(p_u_cli); DECL(p_u_pushf); DECL(p_u_hlt); DECL(p_u_ticks);
extern u32 ticks, tick_seen[4];

static void on_tick(struct frame *f)
{
    (void)f;
    ticks++;
    pic_eoi(0);
}

void test_iopl(void)
{
    u32 iopl;

    for (iopl = 0; iopl <= 3; iopl += 3) {
        printf("-- ring 3 with IOPL %u\n", iopl);
        report_user("out 0x80", try_user(p_u_out, 0, iopl), p_u_out_at);
        report_user("in 0x80", try_user(p_u_in, 0, iopl), p_u_in_at);
        report_user("cli; sti", try_user(p_u_cli, 0, iopl), p_u_cli_at);
        report_user("hlt", try_user(p_u_hlt, 0, iopl), p_u_hlt_at);
    }
    /* PUSHF in ring 3 shows the real IF and IOPL under raw mode, never trapping: a known
     * leak (docs/threat-model.md). */
    if (!try_user(p_u_pushf, 0, 3))
        printf("pushf in ring 3 with IOPL 3 shows IOPL %u\n", (user_eax >> 12) & 3);

    printf("-- ring 3 with IOPL 3 disables interrupts, the timer runs at 1 kHz\n");
    set_handler(IRQ_BASE, on_tick);
    pic_remap(0xFE, 0xFF);
    pit_start(1000);
    report_user("cli, spin, sti, spin", try_user(p_u_ticks, 0, 3), NULL);
    printf("ticks while IF = 0: %s; a tick after sti: %s\n",
           tick_seen[1] == tick_seen[0] ? "none" : "some", tick_seen[2] != tick_seen[1] ? "yes" : "no");
    pit_stop();
    pic_remap(0xFF, 0xFF);
}
