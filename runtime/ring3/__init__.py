"""Ring 3 for comparison (issue 13): the guest kernel deprivileged to real CPL 3.

`bt run --guest-ring 3 [--ring3 split|flat]` runs the same kernels as ring 1 does, with the
guest kernel at CPL 3 as kqemu and early ring-3 designs did, so that what ring 1 saves can be
measured rather than asserted. `mode.py`: the virtual CPL, the transitions the VMM makes
itself, the IRET sites, the paging views; `vtlb.py`: the kernel view's shadow page tables.
Segments are compressed to DPL 3 instead of 1 (runtime/segments.py `compress`).
"""
