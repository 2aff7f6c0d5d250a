"""The vocabulary every layer shares, without torch: the typed config and the one stabilizer
registry (`config`), run outcomes, the run summary and metric and statistic names (`outcome`),
atomic writes (`files`)."""
