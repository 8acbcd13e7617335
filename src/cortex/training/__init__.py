"""cortex.training"""
