"""Results as pandas: loaders of run folders, studies and W&B runs (`loaders`), and the
trial tables, their statistics and the pre-registered rules (`tables`).

The notebooks that use these live in the top-level `analysis/` folder."""
