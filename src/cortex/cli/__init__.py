"""cortex.cli"""
