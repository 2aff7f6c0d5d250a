"""painn-ablate: ablation experiments on the training stabilizers of PaiNN on N-body dynamics.

Modules, each importing only from those before it:
config -> data -> model -> monitor -> tracking -> train -> sweep -> wandb_sweep -> analysis -> reproduce -> report -> cli
"""

__version__ = "0.1.0"
