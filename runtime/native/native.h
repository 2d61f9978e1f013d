/* What runtime/native/blockclock.c and fastexit.c share: the block clock's state (its Python
 * twin is runtime/clock.py `_State`, field for field) and the Unicorn and Capstone entry points
 * both call through pointers the Python side fills in (neither library is linked). */
#ifndef RING1_NATIVE_H
#define RING1_NATIVE_H

#include <stddef.h>
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

/* No block entered (`block_clock.block`). */
#define NO_BLOCK UINT64_MAX

/* Guest instructions in [start, end) of one block, decoded with Capstone; -1 if the bytes
 * cannot be read or decoded (blockclock.c). */
int64_t insns_between(block_clock *c, void *uc, uint64_t start, uint64_t end);

/* The fast exits' hook and state size (fastexit.c). */
void *fast_hook(void);
size_t fast_state_size(void);

#endif
