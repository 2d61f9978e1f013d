"""Before/after comparison reports (`bt compare`).

The report is built in three steps kept apart, as pyelftools keeps parsing apart
from its `describe_*` text output:

- `record`: what one run measured (`RunRecord`), and the adapter from the VMM's
  own statistics to it, so only the adapter follows changes in the runtime;
- `model`: the frozen `Comparison` built from the runs of each kernel;
- `text`, `jsonout`, `html`: renderers that read the model and compute nothing new.

`runner` runs kernels in worker processes for the CLI (`bt/cli/compare.py`).
"""
