/* Processes: each has its own page directory (the kernel's mappings plus one user
 * page table), its own kernel stack and a saved kernel ESP. A switch loads the
 * next process's CR3, points the TSS's esp0 at the top of its kernel stack (the
 * stack the CPU switches to when ring 3 is interrupted) and swaps kernel stacks
 * (swtch.S). The kernel itself is never preempted: it runs with interrupts off and
 * gives the CPU up only when it sleeps; the timer takes the CPU from ring 3 code.
 * procs[0] is the idle context: the boot stack and the kernel's page directory. */
#include "minios.h"

struct proc *current;
volatile u32 ticks;
static struct proc procs[NPROC];
static u32 next_pid = 1;
static u32 *shared;                     /* the page SYS_SHARED maps; never freed */
static int init_done;                   /* pid 1 has exited, with init_status */
static s32 init_status;

#define IDLE (&procs[0])
#define PT_INDEX(va) (((va) - USER_BASE) >> 12)
#define EFLAGS_IF 0x200
#define EFLAGS_RESERVED 0x2

void proc_init(void)
{
    IDLE->state = P_RUNNABLE;
    IDLE->pgdir = kernel_pgdir();
    strncpy_z(IDLE->name, "idle", sizeof(IDLE->name));
    current = IDLE;
}

/* Round robin over procs[1..]; the idle context only when nobody else can run. */
static struct proc *pick(void)
{
    u32 base = (u32)(current - procs), i;

    for (i = 1; i <= NPROC; i++) {
        struct proc *p = &procs[(base + i) % NPROC];

        if (p != IDLE && p->state == P_RUNNABLE)
            return p;
    }
    return IDLE;
}

/* The caller has set current->state; run whoever is next. */
static void schedule(void)
{
    struct proc *prev = current, *next = pick();

    if (next == prev)
        return;
    current = next;
    if (next != IDLE)                   /* the idle context never runs ring 3 code */
        tss.esp0 = (u32)next->kstack + PAGE_SIZE;
    load_cr3(next->pgdir);
    swtch(&prev->ctx_esp, next->ctx_esp);
}

void yield(void)
{
    schedule();                         /* current stays P_RUNNABLE */
}

/* Wait until wakeup(chan); callers re-check their condition in a loop. The idle
 * context never sleeps: it halts until the next interrupt instead. */
void sleep_on(void *chan)
{
    if (current == IDLE) {
        idle_wait();
        return;
    }
    current->chan = chan;
    current->state = P_SLEEPING;
    schedule();
    current->chan = NULL;
}

void wakeup(void *chan)
{
    u32 i;

    for (i = 1; i < NPROC; i++)
        if (procs[i].state == P_SLEEPING && procs[i].chan == chan)
            procs[i].state = P_RUNNABLE;
}

void timer_tick(struct frame *f)
{
    ticks++;
    lapic_eoi();
    wakeup((void *)&ticks);
    /* Preemption: only ring-3 code loses the CPU to the timer. */
    if ((f->cs & 3) == 3 && pick() != current) {
        current->preempts++;
        schedule();
    }
}

int proc_any_alive(void)
{
    u32 i;

    for (i = 1; i < NPROC; i++)
        if (procs[i].state != P_FREE)
            return 1;
    return 0;
}

int proc_runnable(void)
{
    return pick() != IDLE;
}

static void free_memory(struct proc *p)
{
    u32 i;

    if (p->user_pt) {
        for (i = 0; i < 1024; i++)
            if (p->user_pt[i] & PTE_P && i != PT_INDEX(USER_SHARED))
                page_free((void *)(p->user_pt[i] & ~(PAGE_SIZE - 1)));
        page_free(p->user_pt);
    }
    if (p->pgdir)
        page_free(p->pgdir);
    if (p->kstack)
        page_free(p->kstack);
    memset(p, 0, sizeof(*p));           /* P_FREE */
}

/* Zombies nobody will wait for (their parent exited first). */
void proc_reap_orphans(void)
{
    u32 i;

    for (i = 1; i < NPROC; i++)
        if (procs[i].state == P_ZOMBIE && !procs[i].parent && &procs[i] != current)
            free_memory(&procs[i]);
}

static void map_user(struct proc *p, u32 va, void *page)
{
    p->user_pt[PT_INDEX(va)] = (u32)page | PTE_U | PTE_W | PTE_P;
}

/* Bytes of the program image, from the module in memory or from the disk. */
static int image_read(const struct image_src *src, u32 offset, void *buf, u32 n)
{
    if (src->mem) {
        memcpy(buf, src->mem + offset, n);
        return 0;
    }
    return fs_read(src->file, offset, buf, n) == (int)n ? 0 : -1;
}

/* The kernel stack as if the process had been interrupted in ring 3 at its entry
 * point and had then switched away: swtch pops four callee-saved registers (zero)
 * and returns to user_entry, which pops the frame and IRETs to ring 3. */
static void first_entry(struct proc *p, u32 eip, u32 esp)
{
    struct frame *f;
    u32 *sp;

    p->kstack = page_alloc();
    f = (struct frame *)(p->kstack + PAGE_SIZE) - 1;
    f->ds = f->es = USER_DS | 3;
    f->eip = eip;
    f->cs = USER_CS | 3;
    f->eflags = EFLAGS_IF | EFLAGS_RESERVED;
    f->user_esp = esp;
    f->user_ss = USER_DS | 3;
    sp = (u32 *)f;
    *--sp = (u32)user_entry;
    sp -= 4;                            /* ebp, ebx, esi, edi */
    p->ctx_esp = (u32)sp;
}

static int load(struct proc *p, const struct image_src *src, const char *args)
{
    struct program_header h;
    u32 va, off, args_len = strlen(args) + 1;
    char *stack_top;

    if (src->size < sizeof(h) || image_read(src, 0, &h, sizeof(h)))
        return -1;
    if (h.magic != PROGRAM_MAGIC || h.file_size > src->size || h.file_size < sizeof(h)
        || h.mem_size < h.file_size || h.mem_size > USER_IMAGE_MAX
        || h.entry < USER_BASE + sizeof(h) || h.entry >= USER_BASE + h.file_size
        || args_len > USER_ARGS_MAX)
        return -1;

    p->pgdir = pgdir_new();
    p->user_pt = page_alloc();
    p->pgdir[USER_BASE >> 22] = (u32)p->user_pt | PTE_U | PTE_W | PTE_P;   /* the PTEs decide */
    for (va = USER_BASE; va < USER_BASE + h.mem_size; va += PAGE_SIZE)
        map_user(p, va, page_alloc());  /* zeroed: .bss needs nothing more */
    for (off = 0; off < h.file_size; off += PAGE_SIZE) {
        u32 n = h.file_size - off < PAGE_SIZE ? h.file_size - off : PAGE_SIZE;
        void *page = (void *)(p->user_pt[PT_INDEX(USER_BASE + off)] & ~(PAGE_SIZE - 1));

        if (image_read(src, off, page, n))    /* the kernel sees pages at their physical address */
            return -1;
    }
    for (va = USER_STACK_TOP - USER_STACK_PAGES * PAGE_SIZE; va < USER_STACK_TOP; va += PAGE_SIZE)
        map_user(p, va, page_alloc());

    /* The argument string at the top of the stack and, below it, its address:
     * the argument of main(args) when crt0 calls it. */
    stack_top = (char *)(p->user_pt[PT_INDEX(USER_STACK_TOP - 1)] & ~(PAGE_SIZE - 1)) + PAGE_SIZE;
    memcpy(stack_top - USER_ARGS_MAX, args, args_len);
    *(u32 *)(stack_top - USER_ARGS_MAX - 4) = USER_STACK_TOP - USER_ARGS_MAX;

    first_entry(p, h.entry, USER_STACK_TOP - USER_ARGS_MAX - 4);
    return 0;
}

/* A new process running `src`; returns its pid, or -1 (bad image, no slot). */
int proc_spawn(const char *name, const struct image_src *src, const char *args, struct proc *parent)
{
    struct proc *p = NULL;
    u32 i;

    for (i = 1; i < NPROC && !p; i++)
        if (procs[i].state == P_FREE)
            p = &procs[i];
    if (!p)
        return -1;
    p->state = P_LOADING;               /* the slot is taken while the disk is read */
    if (load(p, src, args)) {
        free_memory(p);
        return -1;
    }
    strncpy_z(p->name, name, sizeof(p->name));
    p->pid = next_pid++;
    p->parent = parent;
    p->state = P_RUNNABLE;
    return (int)p->pid;
}

NORETURN void proc_exit(s32 status)
{
    struct proc *p = current;
    u32 i;

    if (p == IDLE)
        panic("the idle context exited", (u32)status);
    for (i = 1; i < NPROC; i++)
        if (procs[i].parent == p)
            procs[i].parent = NULL;     /* orphans: reaped by the idle loop */
    if (p->pid == 1) {
        init_done = 1;
        init_status = status;
    }
    p->status = status;
    p->state = P_ZOMBIE;
    if (p->parent)
        wakeup(p->parent);
    schedule();
    panic("a zombie ran", p->pid);
}

/* Waits for the end of a child; returns its exit status, -1 if pid is not a child. */
s32 proc_wait(u32 pid)
{
    struct proc *c = NULL;
    s32 status;
    u32 i;

    for (i = 1; i < NPROC; i++)
        if (procs[i].state != P_FREE && procs[i].pid == pid && procs[i].parent == current)
            c = &procs[i];
    if (!c)
        return -1;
    while (c->state != P_ZOMBIE)
        sleep_on(current);
    status = c->status;
    free_memory(c);
    return status;
}

/* Is [addr, addr + n) mapped for the current process's ring 3? */
int user_range(u32 addr, u32 n)
{
    u32 va;

    if (current == IDLE || addr < USER_BASE || addr >= USER_STACK_TOP || n > USER_STACK_TOP - addr)
        return 0;
    for (va = addr & ~(PAGE_SIZE - 1); va < addr + n; va += PAGE_SIZE)
        if (!(current->user_pt[PT_INDEX(va)] & PTE_P))
            return 0;
    return 1;
}

u32 map_shared(void)
{
    if (!shared)
        shared = page_alloc();
    map_user(current, USER_SHARED, shared);
    return USER_SHARED;
}

u32 shared_pages(void)
{
    return shared ? 1 : 0;
}

int init_exited(s32 *status)
{
    *status = init_status;
    return init_done;
}
