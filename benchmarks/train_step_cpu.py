"""GLIP-T(C) train step on this CPU: step time, FLOPs per step (matmuls + convolutions of the step's jaxpr, scans
multiplied out; XLA's cost analysis beside it), achieved FLOP/s, and that as a fraction of this machine's float32
matmul peak measured in the same run (goal >= 35%).

  .venv/bin/python -m benchmarks.train_step_cpu [--steps 3] [--config.data.canvas=(384,384) ...]

Defaults keep a step within seconds on 2 cores: batch 1, a 320x320 canvas, 64-token prompts; every module of
GLIP-T(C) at full width. The matmul peak is the best of 2048^3 float32 products taken before and after the
steps. One more step runs under `jax.profiler` (trace in runs/benchmarks/traces/); the results break its time
down by op kind and by the glipjax source file that emitted each op (benchmarks/op_profile.py).
"""
from __future__ import annotations

import argparse

import jax

from benchmarks import common
from glipjax import perf

DEFAULTS = {"train.global_batch_size": 1, "data.canvas": (320, 320), "data.aspect_buckets": (),
            "model.max_query_len": 64}


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  common.add_config_args(parser, "configs/glip_t.py:c")
  parser.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up step)")
  parser.add_argument("--matmul-n", type=int, default=2048)
  parser.add_argument("--no-profile", action="store_true", help="skip the traced step and its op breakdown")
  args = common.parse_args(parser, argv)
  overrides = common.overrides_from_args(args, DEFAULTS)
  config = common.load_config(args.config, overrides)
  if jax.default_backend() != "cpu":
    raise SystemExit(f"this benchmark measures the CPU; the default backend is {jax.default_backend()} "
                     "(run with JAX_PLATFORMS=cpu)")

  peak_before = perf.measure_matmul_peak(args.matmul_n)
  print(f"matmul peak {peak_before / 1e9:.1f} GFLOP/s", flush=True)
  profile_dir = None if args.no_profile else "runs/benchmarks/traces/train_step_cpu"
  out, _ = common.measure_train_step(config, args.steps, jaxpr_flops=True, profile_dir=profile_dir)
  peak_after = perf.measure_matmul_peak(args.matmul_n)
  peak = max(peak_before, peak_after)
  # Model FLOPs as MFU counts them: the matmuls and convolutions of the official formulation's jaxpr, scanned
  # layers multiplied out (`common.model_flops`); what the step executes and XLA's cost analysis (which sees a
  # scan body once and adds elementwise work) are reported beside.
  seconds, flops = out["step_seconds_median"], out["model_flops_per_step"]
  achieved = flops / seconds
  results = dict(
      config=args.config, overrides={k: str(v) for k, v in overrides.items()}, **out,
      achieved_flops_per_second=achieved, matmul_peak_flops_per_second=peak,
      matmul_peak_before_after=[peak_before, peak_after], fraction_of_matmul_peak=achieved / peak,
      fraction_of_matmul_peak_xla_count=out["flops_per_step_per_device_xla"] / seconds / peak,
      fraction_of_matmul_peak_executed=out["matmul_conv_flops_per_step_jaxpr"] / seconds / peak,
      goal_fraction=0.35, images_per_second=config.train.global_batch_size / seconds)
  common.write_results("train_step_cpu", results)
  print(f"step {seconds:.2f} s, {flops / 1e9:.1f} GFLOP of model matmuls/convs "
        f"({out['matmul_conv_flops_per_step_jaxpr'] / 1e9:.1f} executed) = {achieved / 1e9:.1f} GFLOP/s = "
        f"{achieved / peak:.1%} of the measured matmul peak {peak / 1e9:.1f} GFLOP/s (goal >= 35%)")
  return results


if __name__ == "__main__":
  main()
