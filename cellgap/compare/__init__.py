"""`cellgap compare`: the paper's encoder comparison as one batch job with a report.

For each (data set, encoder, layer set) a feature store is built once or reused (found by its
manifest); for each seed a decoder is trained from it, the test split predicted and scored; the
report gathers mean and std over seeds, costs, plots and a gallery. Modules: `config` (the YAML),
`grid` (jobs), `stores` (store reuse), `runs` (one training run), `runner` (local, pool or dask),
`report` and `plots` (the artefacts), `cli`.
"""
