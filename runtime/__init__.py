"""The VMM: runs a guest kernel in ring 1 on Unicorn with trap-and-emulate and patches.
May import `bt` and `patchmgr`."""
