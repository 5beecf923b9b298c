"""Helpers of bench/gpu_phases.py: model shapes, synthetic data, the measuring train entry, FLOPs, report."""
