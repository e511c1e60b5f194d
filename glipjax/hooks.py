"""What the training loop does around each step: the NaN/inf stop, performance figures (compile time, FLOPs,
memory, MFU), the preemption guard, the on-demand profiler and the metrics.jsonl writer."""
from __future__ import annotations

import json
import logging
import pathlib
import signal
import threading

import jax
import numpy as np
import orbax.checkpoint as ocp

from glipjax import perf


def check_finite(step: int, metrics: dict) -> dict[str, float]:
  """Host floats of a step's metrics; stops the run, naming the step and the cause, if any is NaN/inf."""
  values = {k: float(v) for k, v in metrics.items()}
  bad = sorted(k for k, v in values.items() if not np.isfinite(v))
  if bad:
    raise FloatingPointError(
        f"non-finite {', '.join(bad)} at step {step} ({', '.join(f'{k}={v:.4g}' for k, v in values.items())}); "
        "nothing from this step was saved. Lower optim.learning_rate or check the data of this step.")
  return values


def step_perf_stats(compiled, global_flops: float, config, *, compile_seconds: float) -> dict[str, float]:
  """Static facts of the compiled train step: compile time, FLOPs per device, memory. The MFU numerator is the
  matmul/conv count of the step's jaxpr (`global_flops`, scans multiplied out) split over the devices; XLA's own
  count (which sees a scan body once) is logged beside it."""
  stats = dict(compile_seconds=compile_seconds, flops_per_step_per_device=global_flops / jax.device_count(),
               xla_flops_per_step_per_device=float(perf.compiled_cost(compiled).get("flops", 0.0)))
  stats.update({f"memory_{k}": float(v) for k, v in perf.memory_summary(compiled).items()})
  device = jax.devices()[0]
  peak = perf.peak_flops_per_device(device.device_kind, config.model.dtype,
                                    config.train.peak_flops_per_device or None)
  if peak:
    stats["peak_flops_per_device"] = float(peak)
  return stats


def throughput_scalars(perf_stats: dict, step_seconds: float, config) -> dict[str, float]:
  out = dict(step_seconds=step_seconds, images_per_second=config.train.global_batch_size / max(step_seconds, 1e-9))
  flops = perf_stats.get("flops_per_step_per_device", 0.0)
  if flops:
    out["tflops_per_device"] = flops / max(step_seconds, 1e-9) / 1e12
  if perf_stats.get("peak_flops_per_device"):
    out["mfu"] = perf.mfu(flops, step_seconds, 1, perf_stats["peak_flops_per_device"])
  stats = jax.local_devices()[0].memory_stats() or {}  # None on CPU
  if "peak_bytes_in_use" in stats:
    out["device_peak_bytes_in_use"] = float(stats["peak_bytes_in_use"])
  return out


class PreemptionGuard:
  """SIGTERM (what schedulers and preemptible VMs send first) -> save at the next step and exit cleanly. With
  several processes JAX's preemption sync manager (via Orbax) picks a step at which all of them stop."""

  def __init__(self):
    self.requested, self._previous = False, None
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del frame
    logging.warning("received signal %d: saving at the next step, then exiting", signum)
    self.requested = True

  def should_stop(self, mngr: ocp.CheckpointManager, step: int) -> bool:
    return self.requested or (jax.process_count() > 1 and mngr.reached_preemption(step))

  def close(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


class Profiler:
  """A jax.profiler trace of `profile_num_steps` steps into <workdir>/profile, from `profile_start_step` or when
  a file <workdir>/PROFILE appears (checked every step; the file is removed when the trace starts)."""

  def __init__(self, workdir: pathlib.Path, train_cfg):
    self.out, self.trigger = workdir / "profile", workdir / "PROFILE"
    self.start, self.num, self.stop_at = train_cfg.profile_start_step, train_cfg.profile_num_steps, None

  def step(self, step: int) -> None:
    if self.stop_at is not None and step >= self.stop_at:
      self.close()
    if self.stop_at is None and (step == self.start or self.trigger.exists()):
      self.trigger.unlink(missing_ok=True)
      jax.profiler.start_trace(str(self.out))
      self.stop_at = step + max(self.num, 1)
      logging.info("profiling steps %d..%d into %s", step, self.stop_at - 1, self.out)

  def close(self) -> None:
    if self.stop_at is not None:
      jax.effects_barrier()
      jax.profiler.stop_trace()
      self.stop_at = None


class JsonlWriter:
  def __init__(self, path: pathlib.Path, enabled: bool):
    self.path, self.enabled = path, enabled

  def write(self, step: int, metrics: dict) -> None:
    if self.enabled:
      with self.path.open("a") as f:
        f.write(json.dumps({"step": int(step), **{k: float(v) for k, v in metrics.items()}}) + "\n")
