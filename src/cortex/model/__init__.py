"""cortex.model"""
