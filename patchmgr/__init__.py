"""The PATM-style patch manager: patch rules, patch memory, static and dynamic patching.
May import `bt`; never imports `runtime`."""
