/* irqsave-pv: the flag operations as plain memory operations on pv_vflags. */
#define PV 1
#include "../irqsave/irqsave_ops.S"
