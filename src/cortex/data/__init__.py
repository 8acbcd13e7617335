"""cortex.data"""
