"""Emulated PC devices on the I/O-port bus, one module per device (Firecracker's
devices/legacy is the model): each claims port ranges and implements the small
`Device` protocol of `base`. `standard.build_standard_bus` wires the PC set."""
