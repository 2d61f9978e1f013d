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

#include "native.h"

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

int64_t insns_between(block_clock *c, void *uc, uint64_t start, uint64_t end)
{
    uint8_t code[4096];
    void *insns = NULL;
    if (end < start || end - start > sizeof code)
        return -1;
    if (end == start)
        return 0;
    if (c->vmem_read(uc, start, (int)c->exec_prot, code, (size_t)(end - start)) != 0)
        return -1;
    size_t n = c->disasm((size_t)c->cs_handle, code, (size_t)(end - start), start, 0, &insns);
    if (insns != NULL)
        c->cs_free(insns, n);
    return (int64_t)n;
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

/* A block hook that does nothing: `bt bench trap` measures what Unicorn itself costs per
 * block once any block hook is installed, the floor of every exact per-block count. */
static void noop_block_hook(void *uc, uint64_t address, uint32_t size, void *user_data)
{
    (void)uc;
    (void)address;
    (void)size;
    (void)user_data;
}

static PyObject *noop_hook_address(PyObject *self, PyObject *args)
{
    (void)self;
    (void)args;
    return PyLong_FromVoidPtr((void *)noop_block_hook);
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

static PyObject *fast_hook_address(PyObject *self, PyObject *args)
{
    (void)self;
    (void)args;
    return PyLong_FromVoidPtr(fast_hook());
}

static PyObject *fast_size(PyObject *self, PyObject *args)
{
    (void)self;
    (void)args;
    return PyLong_FromSize_t(fast_state_size());
}

static PyMethodDef methods[] = {
    {"hook_address", hook_address, METH_NOARGS, "Address of the C block hook (a uc_cb_hookcode_t)."},
    {"state_size", state_size, METH_NOARGS, "sizeof the state struct the hook takes as user data."},
    {"exact_hook_address", exact_hook_address, METH_NOARGS, "Address of the no-op C code hook."},
    {"noop_hook_address", noop_hook_address, METH_NOARGS, "Address of a block hook that does nothing."},
    {"fast_hook_address", fast_hook_address, METH_NOARGS,
     "Address of the C interrupt hook of the fast exits (a uc_cb_hookintr_t)."},
    {"fast_state_size", fast_size, METH_NOARGS, "sizeof the fast exits' state struct."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_native", "ring1's native hooks: the block clock and the fast exits.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__native(void)
{
    return PyModule_Create(&module);
}
