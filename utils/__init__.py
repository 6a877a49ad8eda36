"""The library beside `models/` and `policies/`: a flat ground floor (errors, registry, config, io, cli,
distributed, paths, seed) and one sub-package per stage (sparsity, data, checkpoints, linear, runs, deploy,
sparsify, studies, analysis). README's repository map says what each holds and may import."""
