"""Sweeps: the W&B sweep-file format and what every engine does with a run (`spec`, no Optuna),
the Optuna engine (`optuna_engine`), W&B's engine (`wandb_engine`), and reading studies back (`studies`)."""
