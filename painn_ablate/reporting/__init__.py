"""Documents and views: figures (`plots`), the W&B workspace (`dashboard`), the reproduction of the
two findings (`reproduce`), the registry of raw run folders (`registry`) and runs.md's findings (`findings`)."""
