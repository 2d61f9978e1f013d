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
} block_clock;

static inline uint32_t slot_of(uint64_t key, uint32_t mask)
{
    key ^= key >> 29;
    key *= 0xbf58476d1ce4e5b9ULL;
    key ^= key >> 32;
    return (uint32_t)key & mask;
}

static uint32_t look_up(block_clock *c, void *uc, uint64_t address, uint32_t size)
{
    uint64_t key = (address << 16) | (size & 0xFFFF);
    uint32_t i = slot_of(key, c->mask);
    for (;;) {
        uint64_t k = c->keys[i];
        if (k == key)
            return c->counts[i];
        if (k == 0)
            break;
        i = (i + 1) & c->mask;
    }
    uc_tb tb = {0, 0, 0};
    uint32_t n;
    c->misses++;
    if (c->ctl(uc, (int)c->request, address, &tb) == 0 && tb.pc == address && tb.icount) {
        n = tb.icount;
    } else {
        c->failed++;
        return 1;
    }
    if (c->used < c->mask - (c->mask >> 3)) {      /* keep 1/8 free: probes stay short */
        c->keys[i] = key;
        c->counts[i] = (uint16_t)n;
        c->used++;
        if (c->used > (c->mask >> 1))
            c->full = 1;
    }
    return n;
}

static void block_hook(void *uc, uint64_t address, uint32_t size, void *user_data)
{
    block_clock *c = (block_clock *)user_data;
    uint32_t n = look_up(c, uc, address, size);
    c->insns += n;
    c->block = address;
    c->block_insns = n;
    c->block_size = size;
    if (c->insns >= c->limit && !c->stopped) {
        c->stopped = 1;
        c->stop(uc);
    }
}

static PyObject *hook_address(PyObject *self, PyObject *args)
{
    (void)self;
    (void)args;
    return PyLong_FromVoidPtr((void *)block_hook);
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
