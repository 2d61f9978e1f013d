/* attacks: hostile and unusual guest-kernel operations, one group per boot
 * (`test=NAME`), each printing what the CPU did: the reference is QEMU (the guest at
 * CPL 0 on a model of real x86), ring1 must print the same (issue 11).
 *
 * The framework (probe.c, probe.S): run a piece of code in ring 0 or ring 3 and catch
 * whatever exception it raises, by vector, error code, EIP and CS, then go on with the
 * next probe (a longjmp out of the exception handler: no IRET, so a broken frame does
 * not matter). */
#ifndef RING1_ATTACKS_H
#define RING1_ATTACKS_H

#include "../common/desc.h"

/* The attacks' own GDT (probe.c `attacks_gdt_init`): the shared samples' first seven
 * entries (desc.h: 0x08/0x10 kernel, 0x18/0x20 user, 0x28 TSS, 0x30 LDT), then these. */
#define SEL_NP_DATA0     0x38   /* data, DPL 0, not present */
#define SEL_NP_DATA3     0x40   /* data, DPL 3, not present */
#define SEL_TLS          0x48   /* data, DPL 0: its base is rewritten (item 12) */
#define SEL_XONLY        0x50   /* code, DPL 0, execute-only */
#define SEL_CONFORMING   0x58   /* code, DPL 0, conforming, readable */
#define SEL_GATE_K       0x60   /* call gate, DPL 0 -> 0x08:gate_kernel_target */
#define SEL_GATE_U       0x68   /* call gate, DPL 3 -> 0x08:gate_user_target, 2 parameters */
#define SEL_GATE_NP      0x70   /* call gate, DPL 3, not present */
#define SEL_NP_CODE      0x78   /* code, DPL 0, not present */
#define SEL_GATE_TO_NP   0x80   /* call gate, DPL 3 -> SEL_NP_CODE */
#define SEL_GATE_TO_DATA 0x88   /* call gate, DPL 3 -> 0x10 */
#define SEL_GATE_VMM3    0x90   /* call gate, DPL 3 -> 0xFF80 (ring1's ring-0 code slot) */
#define SEL_GATE_VMM0    0x98   /* call gate, DPL 0 -> 0xFF80 */
#define SEL_SMALL_SS3    0xA0   /* data, DPL 3, limit 0xFFF */
#define SEL_DATA3_RPL    0xA8   /* data, DPL 3, flat */
#define SEL_GATE_K_JMP   0xB0   /* call gate, DPL 0 -> 0x08:gate_jump_target */
#define XGDT_ENTRIES 32
#define LDT_GATE_SEL     0x0C   /* LDT slot 1: call gate, DPL 3 -> 0x08:gate_user_target, 0 params */

/* ring1's own GDT slots begin at index 8176 (bt/layout.py VMM_GDT_FIRST_SLOT). */
#define VMM_SLOT0 0xFF80

#define USER_EXIT_VECTOR 0x80

struct trap {
    u32 vector, err, eip, cs, cr2;
    u32 has_err;
};
extern struct trap last_trap;
extern u64 xgdt[XGDT_ENTRIES];
extern u64 xldt[4];

void attacks_gdt_init(void);
void attacks_idt_init(void);
void gdt_write(u32 sel, u64 desc);               /* one descriptor of the loaded GDT */
u64 call_gate_desc(u32 sel, u32 offset, u32 dpl, u32 params);

/* Run fn at CPL 0 (try_kernel) or CPL 3 (try_user, flat user segments, the user stack,
 * IF = 1, IOPL `iopl`); 0 if it returned (ring 3: reached `user_done`), else the trap
 * vector + 1, last_trap filled. try_user's fn gets EAX = arg. */
u32 try_kernel(void (*fn)(void));
u32 try_user(void (*fn)(void), u32 arg, u32 iopl);
extern u32 user_eax;                             /* EAX when ring 3 reached user_done */

/* "name: no fault" or "name: #13 err=0x... eip=0x..." (eip relative to `at` if given). */
void report(const char *name, u32 trapped, const void *at);
void report_user(const char *name, u32 trapped, const void *at);

/* probe.S */
u32 probe_setjmp(u32 *buf) __attribute__((returns_twice));
NORETURN void probe_longjmp(u32 *buf, u32 value);
extern char user_entry[], user_done[];
/* Not NORETURN on purpose: a noreturn call may be a tail jump that reuses the caller's
 * frame, which try_user's setjmp needs intact. */
void enter_user(u32 eip, u32 esp, u32 eflags, u32 eax);

static inline u32 rd_cr0(void) { u32 v; __asm__ volatile("movl %%cr0, %0" : "=r"(v)); return v; }
static inline u32 rd_cr2(void) { u32 v; __asm__ volatile("movl %%cr2, %0" : "=r"(v)); return v; }
static inline void wr_cr2(u32 v) { __asm__ volatile("movl %0, %%cr2" : : "r"(v)); }

/* The groups, one per boot. */
void test_selectors(void);
void test_gates(void);
void test_exceptions(void);
void test_user_patch(u32 paging);
void test_pde(void);
void test_iopl(void);
void test_unscanned(void);
void test_instructions(void);
void test_smc(void);

/* paging.c: identity map of the first 16 MiB with 4 KiB pages, U/S as asked. */
void paging_identity(u32 user);
void paging_on(void);
void paging_off(void);                       /* CR0.PG and CR0.WP off */
extern u32 pd[1024];
extern u32 pt[4][1024];
void set_pte(u32 linear, u32 pte);

#endif
