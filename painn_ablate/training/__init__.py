"""One run: the monitor's hooks (`monitor`), blow-up detection (`blowup`: criteria, spikes and episodes,
phase, early warning), the sinks that record a run (`sinks`), the trainer (`trainer`) and the
initialisation probe (`probe`)."""
