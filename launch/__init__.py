"""Launchers: local multi-process (`local.py`), Cloud TPU VM pods (`tpu_pod.sh`), SLURM GPU clusters
(`slurm.sbatch`). The commands they run are built in `commands.py`."""
