"""Results as pandas: loaders of run folders, studies and W&B runs (`loaders`), the trial tables (`tables`),
the statistics (`stats`) and the rule book of the pre-registered rules (`rules`).

The notebooks that use these live in the top-level `analysis/` folder."""
