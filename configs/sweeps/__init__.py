"""Ablation sweeps: each file holds `get_config()` (the base) and `get_sweep()` (the runs' overrides); see
glipjax/sweeps.py and `python -m launch.sweep`."""
