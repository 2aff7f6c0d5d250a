"""painn-ablate: ablation experiments on the training stabilizers of PaiNN on N-body dynamics.

Layers, each importing only from those below it (pyproject.toml's import-linter contract checks it):

    cli          the command line
    reporting    plots, dashboard, reproduce, the run registry, runs.md's findings
    analysis     loaders, trial tables, statistics and rules
    sweep        the sweep-file format, the Optuna and W&B engines, reading studies
    training     monitor, blow-up detection (blowup), sinks, trainer, probe
    model        PaiNN and its stabilizers
    data         simulators and data sets
    core         config and stabilizer registry, outcomes and names, files (no torch)
"""

__version__ = "0.1.0"
