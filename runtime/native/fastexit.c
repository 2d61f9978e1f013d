/* The fast exits: CLI, STI and RDTSC of the guest kernel, emulated in C.
 *
 * Why: a trap-and-emulate exit through the Python hook (runtime/traps.py) costs about
 * 4-8 µs, spread over some twenty Python calls with no single hot spot (runtime/README.md
 * has the profile). CLI, STI and RDTSC are most of a kernel's traps once its hot sites are
 * patched (the sites a rule refused, RDTSC which no rule patches, or every site under
 * --no-patch), and emulating them is a bit in the state block or a reading of virtual
 * time. So this hook sits in front of the Python one: a #GP that is one of them at CPL 1,
 * at a site the Python side registered, is done here with the same effects the Python path
 * has; anything else, or any doubt, goes to Python untouched.
 *
 * What the Python side guarantees (runtime/fastexit.py):
 * - a site is registered only after Python handled a trap there and the patch manager
 *   said a trap there would from now on only be counted (`Patcher.quiet`); the table is
 *   emptied whenever the patch manager changes a patch or a refusal, so the next
 *   instruction's resume address (`Patcher.resume_at`) is the instruction itself;
 * - `enabled` is 0 whenever the Python path would do more than this one (the guest's
 *   mapping changed and deferred patches wait, the guest has exited, ring 3 mode, the
 *   latch without live fields, the count clock);
 * - `irq_hint` is 0 only while no interrupt is waiting (asked of the interrupt controller
 *   at each slice's start and at the end of every Python hook, the only places where it can
 *   change): STI then needs nothing but the bit;
 * - `time_base` is virtual time as runtime/vm.py `Vm.clock` computes it, less the block
 *   clock's instructions and this side's exits, set at the same places (only time passing
 *   in a hook, a HLT, moves it): RDTSC reads time_base + exits * ns_per_exit + insns *
 *   ns_per_insn, the 1 GHz virtual TSC of runtime/emulate/msr.py.
 * What this hook checks itself, every time: the exception is a #GP(0) fault (not INT 13),
 * the CPU is at CPL 1 outside virtual-8086 mode, the byte at EIP is still the site's
 * opcode (the guest may rewrite or remap its code), the clock is not stepping.
 *
 * Its counts are kept here until the Python side folds them into the run's statistics
 * (`FastExits.fold`), at the start of every Python hook and at the end of every slice, so
 * that the order of the last exits and the exit count virtual time is made of are exact
 * whenever Python looks.
 */
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "native.h"

typedef int (*uc_reg_fn)(void *uc, int regid, void *value);
typedef void (*intr_hook_fn)(void *uc, uint32_t intno, void *user_data);

#define RING 64          /* the last fast exits kept for the trap history (runtime/traps.py `last`) */
#define KIND_CLI 0
#define KIND_STI 1
#define KIND_RDTSC 2
#define VEC_GP 13
#define EFLAGS_VM (1u << 17)
#define VIRTUAL_IF (1u << 9)

typedef struct {
    uint32_t eip;        /* 0: empty (no site at 0 is registered) */
    uint32_t kind;       /* KIND_CLI, KIND_STI or KIND_RDTSC */
    uint32_t count;      /* exits here since the last fold */
    uint32_t dirty;      /* 1: listed in `dirty` */
    uint64_t block;      /* the block of the last exit here (NO_BLOCK: none yet) */
    uint64_t between;    /* its instructions before the site */
} fast_site;

typedef struct {
    uint32_t enabled;
    uint32_t irq_hint;
    uint32_t mask;        /* site table size - 1 (a power of two) */
    uint32_t ndirty;
    fast_site *sites;
    uint32_t *dirty;      /* indices of the sites with a count since the fold */
    uint32_t ring_n;      /* fast exits since the fold; the ring keeps the last RING */
    uint32_t pad;
    uint32_t ring_eip[RING];
    uint32_t ring_kind[RING];
    uint64_t exits;       /* since the fold */
    uint64_t ns;          /* host time spent in them since the fold */
    block_clock *clock;
    intr_hook_fn python;  /* the VMM's interrupt hook (runtime/traps.py `on_intr`) */
    void *python_data;
    uc_reg_fn reg_read;
    uc_reg_fn reg_write;
    int32_t reg_eip, reg_cs, reg_eflags, pad2;
    int32_t *old_exception;  /* live fields of Unicorn's CPU state (runtime/latch.py) */
    int32_t *error_code;
    int32_t *is_int;
    uint8_t *skip_sync;      /* the EIP-sync flag runtime/pcsync.py clears */
    uint32_t *vflags;        /* the state block's virtual flags word (bt/layout.py) */
    int64_t time_base;       /* virtual ns (see above) */
    uint64_t ns_per_insn;
    uint64_t ns_per_exit;
    int32_t reg_eax, reg_edx;
} fast_exits;

static inline uint64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static fast_site *find(fast_exits *f, uint32_t eip)
{
    uint32_t i = ((eip ^ (eip >> 15)) * 0x9E3779B1u) & f->mask;
    for (;;) {
        fast_site *s = &f->sites[i];
        if (s->eip == eip)
            return s;
        if (s->eip == 0)
            return NULL;
        i = (i + 1) & f->mask;
    }
}

/* 1: the exit was done here; 0: nothing was changed, Python takes it. */
static int fast(fast_exits *f, void *uc)
{
    block_clock *c = f->clock;
    if (*f->is_int || *f->error_code != 0 || c->stepping)
        return 0;
    uint64_t t0 = now_ns();
    uint64_t eip = 0, cs = 0, eflags = 0;
    if (f->reg_read(uc, f->reg_eip, &eip) || f->reg_read(uc, f->reg_cs, &cs)
        || f->reg_read(uc, f->reg_eflags, &eflags))
        return 0;
    eip &= 0xFFFFFFFFu;
    if ((cs & 3) != 1 || (eflags & EFLAGS_VM) || eip == 0)
        return 0;
    fast_site *s = find(f, (uint32_t)eip);
    if (s == NULL || (s->kind == KIND_STI && f->irq_hint))
        return 0;
    uint8_t op[2] = {0, 0};
    uint32_t length = s->kind == KIND_RDTSC ? 2 : 1;
    if (c->vmem_read(uc, eip, (int)c->exec_prot, op, length) != 0)
        return 0;
    if (s->kind == KIND_RDTSC ? (op[0] != 0x0F || op[1] != 0x31) : op[0] != (s->kind == KIND_CLI ? 0xFA : 0xFB))
        return 0;
    /* The clock, as runtime/clock.py `BlockClock.fault` does it: the block ran up to and
     * including the faulting instruction, which counts as run. */
    uint64_t start = c->block;
    int inside = start != NO_BLOCK && start <= eip && eip < start + c->block_size;
    uint64_t between = 0;
    if (inside) {
        if (s->block == start) {
            between = s->between;
        } else {
            int64_t n = insns_between(c, uc, start, eip);
            if (n < 0)
                return 0;
            between = (uint64_t)n;
            s->block = start;
            s->between = between;
        }
    }
    uint64_t next = (eip + length) & 0xFFFFFFFFu;
    if (f->reg_write(uc, f->reg_eip, &next))
        return 0;
    /* Committed from here on. */
    if (start != NO_BLOCK) {
        if (inside)
            c->insns -= c->block_insns - between - 1;
        c->block = NO_BLOCK;
    }
    f->exits++;          /* before RDTSC reads the time: Python counts an exit first too */
    if (s->kind == KIND_CLI) {
        *f->vflags &= ~VIRTUAL_IF;
    } else if (s->kind == KIND_STI) {
        *f->vflags |= VIRTUAL_IF;
    } else {
        uint64_t now = (uint64_t)(f->time_base + (int64_t)(f->exits * f->ns_per_exit + c->insns * f->ns_per_insn));
        uint64_t eax = now & 0xFFFFFFFFu, edx = now >> 32;
        f->reg_write(uc, f->reg_eax, &eax);
        f->reg_write(uc, f->reg_edx, &edx);
    }
    *f->skip_sync = 0;
    *f->old_exception = -1;
    s->count++;
    if (!s->dirty) {
        s->dirty = 1;
        f->dirty[f->ndirty++] = (uint32_t)(s - f->sites);
    }
    f->ring_eip[f->ring_n % RING] = (uint32_t)eip;
    f->ring_kind[f->ring_n % RING] = s->kind;
    f->ring_n++;
    f->ns += now_ns() - t0;
    return 1;
}

static void intr_hook(void *uc, uint32_t intno, void *user_data)
{
    fast_exits *f = (fast_exits *)user_data;
    if (intno == VEC_GP && f->enabled && fast(f, uc))
        return;
    f->python(uc, intno, f->python_data);
}

void *fast_hook(void)
{
    return (void *)intr_hook;
}

size_t fast_state_size(void)
{
    return sizeof(fast_exits);
}
