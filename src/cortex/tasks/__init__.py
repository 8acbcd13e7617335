"""cortex.tasks"""
