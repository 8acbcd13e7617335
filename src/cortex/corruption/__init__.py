"""cortex.corruption"""
