"""Hydra configs of cortex-design (a package, so the console script finds them as `pkg://cortex.configs.design`)."""
