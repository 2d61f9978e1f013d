"""Built-in patch rules, one module per instruction family (listed in patchmgr/registry.py)."""
