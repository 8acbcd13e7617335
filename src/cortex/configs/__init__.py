"""Hydra config groups of the cortex CLIs (package data; a package so Hydra finds it as `pkg://cortex.configs`)."""
