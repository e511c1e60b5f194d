"""Multi-process start-up: one call before any JAX device use, the same on a laptop, a GPU cluster or a TPU pod.

`initialize()` picks, in this order:
  1. an explicit coordinator: flags `--coordinator/--num_processes/--process_id` or the environment variables
     GLIPJAX_COORDINATOR (host:port), GLIPJAX_NUM_PROCESSES, GLIPJAX_PROCESS_ID (what `launch/local.py` sets);
  2. a SLURM job step with more than one task (`srun`): JAX reads coordinator, count and rank from SLURM;
  3. a Cloud TPU VM: JAX reads the pod's workers from the TPU metadata;
  4. otherwise a plain single process: nothing to do.
GLIPJAX_LOCAL_DEVICE_IDS ("0,1,2,3") restricts a process to those local accelerators; under SLURM JAX otherwise
gives each task the one GPU numbered by its local rank (one process per GPU).
"""
from __future__ import annotations

import logging
import os

import jax

ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID = "GLIPJAX_COORDINATOR", "GLIPJAX_NUM_PROCESSES", "GLIPJAX_PROCESS_ID"
ENV_LOCAL_DEVICE_IDS = "GLIPJAX_LOCAL_DEVICE_IDS"


def _env_int(name: str) -> int | None:
  value = os.environ.get(name, "").strip()
  return int(value) if value else None


def _on_cloud_tpu() -> bool:
  from jax._src import hardware_utils  # the PCI scan JAX's own TPU start-up uses; touches no backend
  return hardware_utils.num_available_tpu_chips_and_device_id()[0] > 0


def cluster_kind(coordinator: str | None = None, num_processes: int | None = None,
                 process_id: int | None = None) -> tuple[str, dict]:
  """('explicit' | 'slurm' | 'tpu' | 'single', kwargs for jax.distributed.initialize) from arguments and env."""
  explicit = dict(coordinator_address=coordinator or os.environ.get(ENV_COORDINATOR) or None,
                  num_processes=num_processes if num_processes is not None else _env_int(ENV_NUM_PROCESSES),
                  process_id=process_id if process_id is not None else _env_int(ENV_PROCESS_ID))
  kwargs = {}
  if os.environ.get(ENV_LOCAL_DEVICE_IDS, "").strip():
    kwargs["local_device_ids"] = [int(i) for i in os.environ[ENV_LOCAL_DEVICE_IDS].split(",")]
  if any(v is not None for v in explicit.values()):
    missing = [k for k, v in explicit.items() if v is None]
    if missing:
      raise ValueError(f"an explicit multi-process start needs coordinator, num_processes and process_id; "
                       f"missing {missing} (flags --coordinator/--num_processes/--process_id or "
                       f"{ENV_COORDINATOR}/{ENV_NUM_PROCESSES}/{ENV_PROCESS_ID})")
    return "explicit", dict(explicit, **kwargs)
  if "SLURM_JOB_ID" in os.environ and "SLURM_PROCID" in os.environ and _env_int("SLURM_NTASKS") not in (None, 1):
    return "slurm", dict(cluster_detection_method="slurm", **kwargs)
  if _on_cloud_tpu():
    return "tpu", kwargs
  return "single", {}


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> str:
  """Starts jax.distributed as the environment asks (module docstring); returns the kind of start."""
  kind, kwargs = cluster_kind(coordinator, num_processes, process_id)
  if kind == "single" or jax.distributed.is_initialized():
    return kind
  jax.distributed.initialize(**kwargs)  # CPU processes talk through gloo, JAX's default CPU collectives
  logging.info("jax.distributed (%s): process %d of %d, %d local / %d global devices", kind, jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  return kind


def define_flags() -> None:
  """--coordinator/--num_processes/--process_id for absl programs (defined only when run as a program)."""
  from absl import flags
  flags.DEFINE_string("coordinator", None, f"host:port of process 0 (or ${ENV_COORDINATOR})")
  flags.DEFINE_integer("num_processes", None, f"number of processes (or ${ENV_NUM_PROCESSES})")
  flags.DEFINE_integer("process_id", None, f"this process's rank (or ${ENV_PROCESS_ID})")


def initialize_from_flags() -> str:
  from absl import flags
  f = flags.FLAGS
  return initialize(f.coordinator, f.num_processes, f.process_id)


def process_rows(batch_sharding, global_batch_size: int) -> tuple[int, int]:
  """[start, stop) rows of every global batch that this process's devices hold under `batch_sharding`: what it
  must read so that `jax.make_array_from_process_local_data` assembles the global batch."""
  shape = (global_batch_size,)
  rows = {(s[0].start or 0, s[0].stop if s[0].stop is not None else global_batch_size)
          for s in batch_sharding.addressable_devices_indices_map(shape).values()}
  start, stop = min(r[0] for r in rows), max(r[1] for r in rows)
  covered = set()
  for a, b in rows:
    covered.update(range(a, b))
  if covered != set(range(start, stop)):
    raise ValueError(f"process {jax.process_index()} holds non-contiguous batch rows {sorted(rows)}; order the "
                     "mesh devices by process (jax.devices() order) so each process holds one contiguous slice")
  return start, stop


def barrier(name: str) -> None:
  """All processes wait here (no-op for one process), e.g. until process 0 has written shared files."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)
