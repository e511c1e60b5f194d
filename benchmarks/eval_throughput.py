"""Evaluation throughput on this machine: images/s of the evaluators' compiled inference step (the model and the
post-processing - anchor decoding, per-phrase scores, NMS, top-k - as `glipjax.evaluators.common.make_predict_fn`
builds it for `glipjax.evaluate`, `predict` and in-training evaluation) at the config's evaluation canvas and
`eval.global_batch_size`, from randomly initialised parameters (the cost does not depend on the values).

  .venv/bin/python -m benchmarks.eval_throughput [--cases tiny,glip_t] [--steps 3] [--glip_t_batch 1]

Cases: `tiny` (configs/tiny.py, its 128x128 canvas, eval batch 16) and `glip_t` (configs/glip_t.py:c at the
larger of its two 800-short-side evaluation canvases, 800x1088). Reported: compile seconds, seconds per batch
(median of `--steps` after one warm-up) and images/s. The input pipeline's rate is `benchmarks.input_pipeline`'s;
scoring's is `benchmarks.scoring`'s.
"""
from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np

from benchmarks import common
from glipjax import runtime, sharding
from glipjax.data.batch import BatchSpec
from glipjax.data.buckets import Buckets
from glipjax.evaluators.common import make_predict_fn

CASES = {"tiny": ("tiny", {}), "glip_t": ("glip_t:c", {})}


def eval_canvas(config) -> tuple[int, int]:
  buckets = Buckets.from_config(config.data)
  if buckets is None:
    return tuple(config.data.canvas)
  return max(buckets.eval_shapes(), key=lambda hw: hw[0] * hw[1])


def eval_batch(config, batch_size: int, canvas) -> dict[str, np.ndarray]:
  """The model inputs of an evaluation batch: random images, half-filled prompts of 4 phrases, every row real."""
  batch = common.synthetic_batch(config, batch_size, canvas=canvas)
  spec = BatchSpec.from_config(config, canvas)
  zeros = spec.zeros(batch_size, train=False)
  t, p = spec.max_query_len, zeros["phrase_map"].shape[1]
  live = max(3, t // 2)
  phrase_map = np.zeros_like(zeros["phrase_map"])
  for i in range(min(4, p)):
    phrase_map[:, i, 1 + i % (live - 2)] = 1.0
  return dict(image=batch["image"], image_hw=batch["image_hw"], input_ids=batch["input_ids"],
              attention_mask=batch["attention_mask"], phrase_map=phrase_map,
              phrase_mask=np.broadcast_to(np.arange(p) < min(4, p), (batch_size, p)).copy())


def measure(name: str, spec: str, batch_size: int | None, steps: int) -> dict:
  config = common.load_config(spec)
  batch_size = batch_size or config.eval.global_batch_size
  canvas = eval_canvas(config)
  setup = runtime.build(config)
  with jax.set_mesh(setup.mesh):
    # Parameters alone: XLA drops the optimizer moments' initialisation from this program.
    params = jax.jit(lambda: setup.init()[0]["params"])()
    rest = setup.init_rest()
    batch = sharding.global_batch(eval_batch(config, batch_size, canvas),
                                  sharding.batch_sharding(setup.mesh, config.mesh.batch_axes))
    predict = make_predict_fn(setup.graphdef, config)
    t0 = time.perf_counter()
    compiled = predict.lower(params, rest, batch).compile()
    compile_seconds = time.perf_counter() - t0
    times = []
    for i in range(1 + steps):
      t0 = time.perf_counter()
      jax.block_until_ready(compiled(params, rest, batch))
      if i:
        times.append(time.perf_counter() - t0)
  seconds = statistics.median(times)
  out = dict(config=spec, canvas=list(canvas), batch_size=batch_size, compile_seconds=compile_seconds,
             seconds_per_batch=seconds, batch_times=times, images_per_s=batch_size / seconds)
  print(f"{name}: {canvas[0]}x{canvas[1]}, batch {batch_size}: compiled in {compile_seconds:.1f} s, "
        f"{seconds:.3f} s per batch = {batch_size / seconds:.2f} images/s", flush=True)
  return out


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--cases", default="tiny,glip_t", help=f"comma list of {sorted(CASES)}")
  parser.add_argument("--steps", type=int, default=3, help="timed batches per case (after one warm-up)")
  parser.add_argument("--glip_t_batch", type=int, default=1, help="GLIP-T eval batch (CPU memory)")
  args = parser.parse_args(argv)
  results = {}
  for name in args.cases.split(","):
    if name not in CASES:
      raise SystemExit(f"unknown case {name!r}; choose from {sorted(CASES)}")
    results[name] = measure(name, CASES[name][0], args.glip_t_batch if name == "glip_t" else None, args.steps)
  common.write_results("eval_throughput", results)
  return results


if __name__ == "__main__":
  main()
