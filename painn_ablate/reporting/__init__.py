"""Documents and views: figures (`plots`), the W&B workspace (`dashboard`), the reproduction of the
two findings (`reproduce`), the registry of raw run folders (`registry`), runs.md's findings (`findings`) and what the command
line prints (`text`)."""
