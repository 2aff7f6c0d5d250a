"""painn-ablate: ablation experiments on the training stabilizers of PaiNN on N-body dynamics.

Modules, each importing only from those before it:
files -> config -> outcome -> simulate -> data -> model -> monitor -> tracking -> train -> probe ->
sweep_file -> sweep -> wandb_sweep -> studies -> analysis -> experiments -> plots -> dashboard -> reproduce ->
report -> findings -> cli
"""

__version__ = "0.1.0"
