/* irqsave-pv: irqsave's workload, paravirtualised (see ../irqsave/irqsave_ops.S). */
#define PV 1
#include "../irqsave/irqsave.c"
