"""cortex.design"""
