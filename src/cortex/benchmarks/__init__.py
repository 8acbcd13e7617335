"""cortex.benchmarks"""
