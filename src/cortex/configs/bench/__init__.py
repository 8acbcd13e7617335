"""Hydra configs of cortex-bench."""
