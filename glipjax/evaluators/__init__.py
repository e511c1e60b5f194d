"""Evaluators: the dataset-wide predict loop (`common.py`) and one module per protocol family."""
