"""Campaigns (`bt campaign`): many kernels x many configurations, one report (docs/campaign.md).

A campaign is planned, run and reported in steps kept apart:

- `manifest` reads and checks the TOML manifest; `matrix` holds the table of dimensions
  (patching mode, hot threshold, disabled rules...) and turns the matrix into configurations;
- `plan` turns kernels x configurations x repeats into cells, each keyed by `identity`
  (content hashes, run options, the ring1 build);
- `cell` runs one cell on a worker from content, not paths; `executors` sends cells to local
  worker processes or to a Dask cluster; `runner` reuses stored cells, runs the others and
  stores each as it finishes (`store`: one file per cell, written atomically);
- `model` builds the report from the stored runs, measuring each configuration against its
  kernel's baseline with `runtime.report`'s comparison; `text`, `jsonout` and `html` render it.
"""
