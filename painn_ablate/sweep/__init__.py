"""Sweeps: the W&B sweep-file format and what every engine shares (`spec`, no Optuna), the frontier walk
(`walk`), a trial's outcome in words (`words`), the dry run's time estimate (`dry_run`), Optuna storages
(`storage`) and a study's progress (`progress`), the Optuna engine (`optuna_engine`), W&B's engine
(`wandb_engine`), and reading studies back (`studies`)."""
