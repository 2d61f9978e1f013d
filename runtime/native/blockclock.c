/* The block clock: guest instructions counted per translated block, in C.
 *
 * Why: ring1's virtual time counts guest instructions, so that timer interrupts arrive
 * after the same instruction in every run. Unicorn's own instruction count
 * (`emu_start(count=N)`) calls a helper before every instruction, which made exit-free
 * guest code about 20 times slower than without it (runtime/README.md has the figures).
 * This hook runs once per translated block instead: it adds the block's instruction
 * count, looked up by (address, size) in an open-addressing table and filled on a miss
 * from Unicorn's own translation block (`uc_ctl(UC_CTL_TB_REQUEST_CACHE)`, which finds
 * the block being entered), and asks Unicorn to stop once the slice's budget is spent.
 * The block then runs to its end: slices end on block boundaries, which are the same
 * in every run. Exits in the middle of a block are settled by the run loop
 * (runtime/clock.py), which knows where the CPU stopped.
 *
 * The module's Python side only tells where `block_hook` is; the state is a struct the
 * Python side allocates (runtime/clock.py `_State`, same layout).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

typedef struct {
    uint64_t pc;
    uint16_t icount;
    uint16_t size;
} uc_tb;

typedef int (*uc_ctl_fn)(void *uc, int control, ...);
typedef int (*uc_emu_stop_fn)(void *uc);
typedef int (*uc_vmem_read_fn)(void *uc, uint64_t address, int prot, void *bytes, size_t size);
typedef size_t (*cs_disasm_fn)(size_t handle, const uint8_t *code, size_t size, uint64_t address,
                               size_t count, void **insn);
typedef void (*cs_free_fn)(void *insn, size_t count);

/* Table entry flags. */
#define CHECKED 1   /* decoded: HAS_IO is known */
#define HAS_IO 2    /* holds an IN/OUT/INS/OUTS (or could not be decoded) */
#define EXACT 4     /* the run loop made its translation stop exactly (a code hook on it) */

typedef struct {
    uint64_t insns;        /* instructions of the blocks entered so far */
    uint64_t limit;        /* ask Unicorn to stop once insns reaches this */
    uint64_t block;        /* the block entered last: address (~0: none) */
    uint32_t block_insns;  /* its instruction count */
    uint32_t block_size;   /* its size in bytes */
    uint32_t stopped;      /* 1: this hook asked Unicorn to stop (the budget was spent) */
    uint32_t misses;       /* table misses (blocks first seen) */
    uint32_t failed;       /* misses Unicorn could not answer (counted as 1 instruction) */
    uint32_t used;         /* table entries in use */
    uint32_t mask;         /* table size - 1 (a power of two) */
    uint32_t full;         /* 1: the table is over half full, the Python side grows it */
    uc_ctl_fn ctl;
    uc_emu_stop_fn stop;
    int64_t request;       /* the encoded uc_ctl control word for TB_REQUEST_CACHE */
    uint64_t *keys;        /* (address << 16) | size; 0: empty */
    uint16_t *counts;
    uint64_t entered;      /* blocks entered so far (tells one entry of a block from the next) */
    uint32_t exec_prot;    /* UC_PROT_EXEC */
    uint32_t insn_size;    /* sizeof(cs_insn) */
    uc_vmem_read_fn vmem_read;
    uint8_t *flags;        /* per table entry: CHECKED | HAS_IO | EXACT */
    uint64_t exact_at;     /* a block with I/O to make exact before it runs (0: none) */
    uint32_t exact_size;
    uint32_t pad;
    uint64_t cs_handle;    /* a Capstone handle, x86-32, no details */
    cs_disasm_fn disasm;
    cs_free_fn cs_free;
    uint32_t io_ids[8];    /* Capstone ids of IN, OUT, INSB/W/D, OUTSB/W/D */
    uint32_t stepping;     /* 1: this slice runs `step_left` instructions exactly */
    uint32_t step_left;
    uint64_t stepped;      /* instructions run while stepping */
} block_clock;

static inline uint32_t slot_of(uint64_t key, uint32_t mask)
{
    key ^= key >> 29;
    key *= 0xbf58476d1ce4e5b9ULL;
    key ^= key >> 32;
    return (uint32_t)key & mask;
}

static uint32_t look_up(block_clock *c, void *uc, uint64_t address, uint32_t size, uint32_t *slot)
{
    uint64_t key = (address << 16) | (size & 0xFFFF);
    uint32_t i = slot_of(key, c->mask);
    for (;;) {
        uint64_t k = c->keys[i];
        if (k == key) {
            *slot = i;
            return c->counts[i];
        }
        if (k == 0)
            break;
        i = (i + 1) & c->mask;
    }
    uc_tb tb = {0, 0, 0};
    uint32_t n;
    c->misses++;
    *slot = UINT32_MAX;
    if (c->ctl(uc, (int)c->request, address, &tb) == 0 && tb.pc == address && tb.icount) {
        n = tb.icount;
    } else {
        c->failed++;
        return 1;
    }
    if (c->used < c->mask - (c->mask >> 3)) {      /* keep 1/8 free: probes stay short */
        c->keys[i] = key;
        c->counts[i] = (uint16_t)n;
        c->flags[i] = 0;
        c->used++;
        *slot = i;
        if (c->used > (c->mask >> 1))
            c->full = 1;
    }
    return n;
}

/* Whether the block holds an I/O instruction, decoded with Capstone (once per block; a block
 * that cannot be read or decoded counts as one: it is only made exact). */
static int does_io(block_clock *c, void *uc, uint64_t address, uint32_t size)
{
    uint8_t code[4096];
    void *insns = NULL;
    if (size > sizeof code || c->vmem_read(uc, address, (int)c->exec_prot, code, size) != 0)
        return 1;
    size_t n = c->disasm((size_t)c->cs_handle, code, size, address, 0, &insns);
    if (n == 0)
        return 1;
    int found = 0;
    for (size_t i = 0; i < n && !found; i++) {
        uint32_t id = *(const uint32_t *)((const uint8_t *)insns + i * c->insn_size);
        for (int k = 0; k < 8; k++)
            if (id == c->io_ids[k])
                found = 1;
    }
    c->cs_free(insns, n);
    return found;
}

static void block_hook(void *uc, uint64_t address, uint32_t size, void *user_data)
{
    block_clock *c = (block_clock *)user_data;
    c->block = address;
    c->block_size = size;
    c->entered++;
    uint32_t slot;
    if (c->insns >= c->limit) {
        /* The budget is spent: Unicorn stops before this block runs (unicorn 2.1.4), so it
         * is not counted. A block that starts within the budget runs whole, so every slice
         * makes progress however small its budget. */
        c->block_insns = 0;
        if (!c->stopped) {
            c->stopped = 1;
            c->stop(uc);
        }
        return;
    }
    uint32_t n = look_up(c, uc, address, size, &slot);
    if (c->stepping) {
        /* Exact instructions only: a block that is not exact yet is made so first; an exact
         * one is counted instruction by instruction by its code hook. */
        c->block_insns = 0;
        if (slot == UINT32_MAX || !(c->flags[slot] & EXACT) || c->step_left == 0) {
            if (slot != UINT32_MAX && !(c->flags[slot] & EXACT)) {
                c->exact_at = address;
                c->exact_size = size;
            }
            if (!c->stopped) {
                c->stopped = 1;
                c->stop(uc);
            }
        }
        return;
    }
    if (slot != UINT32_MAX && !(c->flags[slot] & EXACT)) {
        if (!(c->flags[slot] & CHECKED))
            c->flags[slot] |= CHECKED | (does_io(c, uc, address, size) ? HAS_IO : 0);
        if (c->flags[slot] & HAS_IO) {
            /* A block with an I/O instruction: the VMM may have to stop exactly after (or
             * before) one (a denied access from user mode, an interrupt it made deliverable,
             * the guest's isa-debug-exit), which a block that runs on to its end would not
             * allow. Not run now: the run loop gives it a code hook, whose per-instruction
             * exit check makes it exact, then resumes here. Such blocks exit anyway. */
            c->block_insns = 0;
            c->exact_at = address;
            c->exact_size = size;
            if (!c->stopped) {
                c->stopped = 1;
                c->stop(uc);
            }
            return;
        }
    }
    c->insns += n;
    c->block_insns = n;
}

/* The code hook of an exact block: its presence makes Unicorn sync EIP and check for a stop
 * after it, before every instruction of its range. While stepping it also lets just
 * `step_left` instructions run. */
static void exact_hook(void *uc, uint64_t address, uint32_t size, void *user_data)
{
    block_clock *c = (block_clock *)user_data;
    (void)address;
    (void)size;
    if (!c->stepping)
        return;
    if (c->step_left == 0) {
        if (!c->stopped) {
            c->stopped = 1;
            c->stop(uc);
        }
        return;
    }
    c->step_left--;
    c->stepped++;
}

static PyObject *hook_address(PyObject *self, PyObject *args)
{
    (void)self;
    (void)args;
    return PyLong_FromVoidPtr((void *)block_hook);
}

static PyObject *exact_hook_address(PyObject *self, PyObject *args)
{
    (void)self;
    (void)args;
    return PyLong_FromVoidPtr((void *)exact_hook);
}

static PyObject *state_size(PyObject *self, PyObject *args)
{
    (void)self;
    (void)args;
    return PyLong_FromSize_t(sizeof(block_clock));
}

static PyMethodDef methods[] = {
    {"hook_address", hook_address, METH_NOARGS, "Address of the C block hook (a uc_cb_hookcode_t)."},
    {"state_size", state_size, METH_NOARGS, "sizeof the state struct the hook takes as user data."},
    {"exact_hook_address", exact_hook_address, METH_NOARGS, "Address of the no-op C code hook."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_blockclock", "ring1's per-block guest instruction counter.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__blockclock(void)
{
    return PyModule_Create(&module);
}
