"""One run: the monitor's hooks (`monitor`), the sinks that record a run (`sinks`), the trainer
(`trainer`) and the initialisation probe (`probe`)."""
