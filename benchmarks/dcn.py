"""The modulated deformable conv alone, forward and forward+backward, for GLIP-T(C)'s pyramid levels: the XLA
formulation (`glipjax/models/dcn.py`) against the Pallas/Triton kernel (`dcn_pallas.py`) on GPU.

  .venv/bin/python -m benchmarks.dcn [--canvas 800 1344] [--batch 1] [--channels 256] [--impl xla pallas]

Off GPU the Pallas kernel runs in the interpreter, which measures nothing useful: only "xla" is timed there
unless --impl names pallas explicitly. Offsets are drawn at the scale trained DyHeads show (a few pixels), so
the gathers are as scattered as in training; the times are medians over --repeats calls after one warm-up.
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import glipjax  # noqa: F401  (default XLA flags)
from benchmarks import common
from glipjax.models.dyhead import DEFORM_CONVS

STRIDES = (8, 16, 32, 64, 128)


def _time(fn, args, repeats):
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--canvas", type=int, nargs=2, default=(320, 320))
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--channels", type=int, default=256)
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--impl", nargs="+", choices=("xla", "pallas"), default=None,
                      help="default: both on GPU, xla elsewhere")
  args = parser.parse_args(argv)
  impls = args.impl or (["xla", "pallas"] if jax.default_backend() == "gpu" else ["xla"])
  dtype, c = jnp.dtype(args.dtype), args.channels
  levels = []
  for stride in STRIDES:
    h, w = -(-args.canvas[0] // stride), -(-args.canvas[1] // stride)
    k = jax.random.split(jax.random.PRNGKey(stride), 4)
    inputs = (jax.random.normal(k[0], (args.batch, h, w, c), dtype),
              jax.random.normal(k[1], (args.batch, h, w, 18), dtype) * 2,
              jax.nn.sigmoid(jax.random.normal(k[2], (args.batch, h, w, 9), dtype)),
              jax.random.normal(k[3], (3, 3, c, c), dtype) * 0.02, jnp.zeros((c,), dtype))
    row = dict(level=f"P{int(np.log2(stride))}", hw=(h, w))
    for impl in impls:
      conv = DEFORM_CONVS[impl]
      loss = lambda *a, conv=conv: jnp.sum(conv(*a).astype(jnp.float32) ** 2)
      row[f"{impl}_forward_ms"] = 1e3 * _time(jax.jit(conv), inputs, args.repeats)
      row[f"{impl}_forward_backward_ms"] = 1e3 * _time(jax.jit(jax.grad(loss, argnums=range(5))), inputs,
                                                       args.repeats)
    levels.append(row)
    print(row, flush=True)
  totals = {f"{impl}_{part}_ms": sum(r[f"{impl}_{part}_ms"] for r in levels)
            for impl in impls for part in ("forward", "forward_backward")}
  if len(impls) == 2:
    totals["pallas_over_xla_forward_backward"] = (totals["pallas_forward_backward_ms"] /
                                                  totals["xla_forward_backward_ms"])
  results = dict(canvas=list(args.canvas), batch=args.batch, channels=c, dtype=args.dtype, levels=levels, **totals)
  common.write_results(f"dcn_{jax.default_backend()}", results)
  return results


if __name__ == "__main__":
  main()
