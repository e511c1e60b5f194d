"""Shared pieces of the benchmarks: configs with overrides, a synthetic training batch, the trainer's step lowered
and compiled exactly as `glipjax.train` does it, step timing, machine facts and the JSON results file."""
from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import functools
import importlib
import json
import os
import pathlib
import platform
import statistics
import sys
import time

import jax
import numpy as np

import glipjax  # noqa: F401  (flax config before any module is built)
from benchmarks import op_profile
from glipjax import config_utils, perf, runtime, sharding, trainer
from glipjax.data.batch import BatchSpec
from glipjax.data.buckets import Buckets

RESULTS_DIR = pathlib.Path(__file__).resolve().parent / "results"


def load_config(spec: str, overrides: dict | None = None):
  """'configs/glip_t.py:c' (or 'glip_t:c', 'tiny') -> the config, with dotted-key overrides applied."""
  path, _, arg = spec.partition(":")
  module = importlib.import_module("configs." + pathlib.Path(path).stem)
  config = module.get_config(arg) if arg else module.get_config()
  return config_utils.apply_overrides(config, overrides or {})


def add_config_args(parser: argparse.ArgumentParser, default_spec: str) -> None:
  parser.add_argument("--config", default=default_spec, help="config file[:arg], e.g. configs/glip_t.py:c; "
                      "override keys with --config.KEY=VALUE, e.g. --config.model.dtype=bfloat16")


def parse_args(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
  """The parser's arguments plus `args.overrides`: the `--config.KEY=VALUE` overrides (glipjax.train's syntax)."""
  try:
    rest, overrides = config_utils.split_config_flags(sys.argv[1:] if argv is None else list(argv))
  except ValueError as e:
    parser.error(str(e))
  args = parser.parse_args(rest)
  args.overrides = overrides
  return args


def overrides_from_args(args, defaults: dict | None = None) -> dict:
  """The benchmark's own defaults, then the command line's --config.KEY=VALUE (parsed by the key's type)."""
  return dict(defaults or {}, **getattr(args, "overrides", {}))


def benchmark_canvas(config) -> tuple[int, int]:
  """The canvas a step benchmark runs at: the largest training bucket, else `data.canvas`."""
  buckets = Buckets.from_config(config.data)
  if buckets is None:
    return tuple(config.data.canvas)
  return max(buckets.train_shapes(), key=lambda hw: hw[0] * hw[1])


def synthetic_batch(config, batch_size: int, *, num_boxes: int = 4, seed: int = 0,
                    canvas: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
  """A training batch as the pipeline lays it out (glipjax/data/batch.py) at `canvas` (default
  `benchmark_canvas`), random content: full-canvas images, half-filled prompts, `num_boxes` boxes each naming
  one token. Step cost does not depend on the values, so timing needs no dataset."""
  rng = np.random.default_rng(seed)
  spec = BatchSpec.from_config(config, canvas or benchmark_canvas(config))
  batch = spec.zeros(batch_size)
  (h, w), nb, t = spec.canvas, spec.max_boxes, spec.max_query_len
  live = max(3, t // 2)
  xy = rng.uniform(0, 0.6, (batch_size, nb, 2)) * (w, h)
  wh = rng.uniform(0.05, 0.4, (batch_size, nb, 2)) * (w, h)
  batch["positive_map"][:, np.arange(nb), 1 + np.arange(nb) % (live - 2)] = 1.0
  batch.update(
      image=rng.integers(0, 256, (batch_size, h, w, 3), dtype=np.uint8),
      image_hw=np.broadcast_to(np.int32([h, w]), (batch_size, 2)).copy(),
      input_ids=rng.integers(1, config.model.language.vocab_size, (batch_size, t)).astype(np.int32),
      attention_mask=np.broadcast_to(np.arange(t) < live, (batch_size, t)).astype(np.int32),
      boxes=np.concatenate([xy, xy + wh], -1).astype(np.float32),
      box_mask=np.broadcast_to(np.arange(nb) < min(num_boxes, nb), (batch_size, nb)).copy())
  return batch


class TrainStep:
  """The trainer's setup (`runtime.build`) and jitted step (`trainer.make_train_step`) for `config`, lowered against
  abstract sharded arguments: nothing is allocated until `run()`, which feeds `synthetic_batch`. Use inside
  `with step.context():`."""

  def __init__(self, config):
    self.config = config
    one = synthetic_batch(config, 1)
    self.batch_shapes = {k: (config.train.global_batch_size, *v.shape[1:]) for k, v in one.items()}
    self.batch_dtypes = {k: v.dtype for k, v in one.items()}
    self.setup = runtime.build(config)
    self.batch_sharding = sharding.batch_sharding(self.setup.mesh, config.mesh.batch_axes)
    self.rng = jax.random.key(config.seed)
    self.jitted = None

  @contextlib.contextmanager
  def context(self):
    """The trainer's tracing context: its mesh and the activation sharding rules."""
    with jax.set_mesh(self.setup.mesh), sharding.activation_rules(self.config.mesh.rules):
      yield

  @functools.cache
  def abstract_args(self):
    """(state, rest, batch, rng) as sharded ShapeDtypeStructs (the rng is concrete: a key is tiny)."""
    state, rest = jax.eval_shape(self.setup.init)
    batch = {k: jax.ShapeDtypeStruct(shape, self.batch_dtypes[k], sharding=self.batch_sharding)
             for k, shape in self.batch_shapes.items()}
    return state, rest, batch, self.rng

  def lower_and_compile(self) -> dict[str, float]:
    """Lowers and compiles the step; returns the wall and process CPU seconds of each."""
    self.jitted = trainer.make_train_step(self.setup)
    args = self.abstract_args()  # tracing `init` for the argument shapes is not part of lowering the step
    t0, c0 = time.perf_counter(), time.process_time()
    self.lowered = self.jitted.lower(*args)
    t1, c1 = time.perf_counter(), time.process_time()
    self.compiled = self.lowered.compile()
    t2, c2 = time.perf_counter(), time.process_time()
    # CPU seconds of this process next to wall seconds: on a shared machine the wall time depends on the load.
    return dict(lower_seconds=t1 - t0, compile_seconds=t2 - t1, lower_cpu_seconds=c1 - c0,
                compile_cpu_seconds=c2 - c1)

  def run(self, num_steps: int, warmup: int = 1, trace_dir: str | None = None) -> list[float]:
    """Initialises the state and runs `warmup` + `num_steps` steps on the same batch; seconds of each timed step.
    With `trace_dir`, one more step runs under the profiler (perfetto trace for `op_profile.summarize`)."""
    state, rest = self.setup.init()
    batch = sharding.global_batch(synthetic_batch(self.config, self.config.train.global_batch_size),
                                  self.batch_sharding)

    def one_step(state):
      t0 = time.perf_counter()
      state, metrics = self.compiled(state, rest, batch, self.rng)
      jax.block_until_ready(metrics)
      return state, metrics, time.perf_counter() - t0

    times = []
    for i in range(warmup + num_steps):
      state, metrics, seconds = one_step(state)
      if i >= warmup:
        times.append(seconds)
    if trace_dir:
      with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
        state, metrics, _ = one_step(state)
    self.last_metrics = {k: float(v) for k, v in metrics.items()}
    del state
    return times


def model_flops(config, executed_flops: float) -> float:
  """Matmul + conv FLOPs of one step of the model as officially formulated, as MFU counts them: glipjax computes
  VLFuse with its visual projections folded into the text side (`model.dyhead.fusion_fold_visual`, the same
  function with far fewer FLOPs), a shortcut that must not lower the model's FLOP count. Traced, not compiled."""
  if not (config.model.dyhead.get("fusion", False) and config.model.dyhead.get("fusion_fold_visual", False)):
    return executed_flops
  official = copy.deepcopy(config)
  official.model.dyhead.fusion_fold_visual = False
  step = TrainStep(official)
  with step.context():
    return perf.jaxpr_flops(trainer.make_train_step(step.setup), *step.abstract_args())


def measure_train_step(config, num_steps: int, *, jaxpr_flops: bool = False,
                       profile_dir: str | None = None) -> tuple[dict, TrainStep]:
  """Compiles the trainer's step for `config` on a synthetic batch and times `num_steps` steps (0: compile only).
  Returns compile times, XLA FLOPs and memory per device, and step times (median over the timed steps); with
  `profile_dir`, also where one more (traced) step spends its time (`op_profile`)."""
  step = TrainStep(config)
  with step.context():
    out = step.lower_and_compile()
    print(f"lowered in {out['lower_seconds']:.1f} s, compiled in {out['compile_seconds']:.1f} s", flush=True)
    cost = perf.compiled_cost(step.compiled)
    out.update(flops_per_step_per_device_xla=cost.get("flops"), bytes_accessed_per_device=cost.get("bytes_accessed"))
    out.update({f"memory_{k}": v for k, v in perf.memory_summary(step.compiled).items()})
    if jaxpr_flops:  # scan-aware matmul + conv count, all devices together
      out["matmul_conv_flops_per_step_jaxpr"] = perf.jaxpr_flops(step.jitted, *step.abstract_args())
      out["model_flops_per_step"] = model_flops(config, out["matmul_conv_flops_per_step_jaxpr"])
    if num_steps:
      times = step.run(num_steps, trace_dir=profile_dir)
      out.update(step_seconds_median=statistics.median(times), step_seconds_min=min(times), step_times=times,
                 loss=step.last_metrics.get("loss"))
      print(f"steps: {', '.join(f'{t:.2f}' for t in times)} s", flush=True)
      if profile_dir:
        out["profile"] = op_profile.summarize(profile_dir, step.compiled.as_text())
  return out, step




def machine() -> dict:
  """Where and under what load the numbers were taken (the CPU is shared: load average next to every timing)."""
  load = os.getloadavg()
  return dict(date_utc=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              host_cpus=os.cpu_count(), load_avg_1_5_15=[round(x, 2) for x in load],
              processor=platform.processor() or platform.machine(), jax=jax.__version__,
              backend=jax.default_backend(), devices=len(jax.devices()), device_kind=jax.devices()[0].device_kind)


def write_results(name: str, results: dict) -> pathlib.Path:
  """Prints the results and writes them (with machine facts) to benchmarks/results/<name>.json."""
  results = dict(benchmark=name, **results, machine=machine())
  RESULTS_DIR.mkdir(parents=True, exist_ok=True)
  path = RESULTS_DIR / f"{name}.json"
  path.write_text(json.dumps(results, indent=2, default=float) + "\n")
  print(json.dumps(results, indent=2, default=float))
  print(f"wrote {path}")
  return path
