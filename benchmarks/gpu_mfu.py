"""GLIP-T(C) train-step MFU in bf16 on a GPU: bfloat16 compute (`model.dtype`), float32 master weights and
optimizer state, FLOPs per device from XLA's cost analysis, peak from glipjax/perf.py's table for the device
kind (or `--config.train.peak_flops_per_device=...`). Goal >= 40%.

  .venv/bin/python -m benchmarks.gpu_mfu [--per-device-batch 4] [--steps 10]
  .venv/bin/python -m benchmarks.gpu_mfu --cpu-smoke     # the same code path on CPU: tiny model, measured peak

Defaults: 4 images per GPU (official: batch 64 on 16 GPUs), the 800x1344 canvas, 256-token prompts, data
parallel over all local devices. On a machine without a GPU it exits with a message unless --cpu-smoke is given,
which runs configs/tiny.py in bf16 and takes the peak from a measured bf16 matmul (no table entry for CPUs).
"""
from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from benchmarks import common
from glipjax import perf

DEFAULTS = {"model.dtype": "bfloat16", "model.param_dtype": "float32", "data.canvas": (800, 1344),
            "data.aspect_buckets": ()}


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  common.add_config_args(parser, "configs/glip_t.py:c")
  parser.add_argument("--per-device-batch", type=int, default=4)
  parser.add_argument("--steps", type=int, default=10, help="timed steps (after one warm-up step)")
  parser.add_argument("--cpu-smoke", action="store_true", help="run the logic on CPU with configs/tiny.py")
  args = common.parse_args(parser, argv)
  if jax.default_backend() != "gpu" and not args.cpu_smoke:
    raise SystemExit(f"gpu_mfu needs a GPU; this machine's JAX backend is {jax.default_backend()!r} "
                     f"({jax.devices()[0].device_kind}). Run it on a GPU host, or pass --cpu-smoke to exercise "
                     "the code path on CPU with the tiny config.")
  spec, defaults = args.config, dict(DEFAULTS)
  if args.cpu_smoke:
    spec = "configs/tiny.py"
    defaults.pop("data.canvas")
  num_devices = len(jax.devices())
  defaults["train.global_batch_size"] = args.per_device_batch * num_devices
  overrides = common.overrides_from_args(args, defaults)
  config = common.load_config(spec, overrides)

  kind = jax.devices()[0].device_kind
  peak = perf.peak_flops_per_device(kind, config.model.dtype, config.train.peak_flops_per_device or None)
  peak_source = "override" if config.train.peak_flops_per_device else "table"
  if peak is None:  # a CPU (smoke run): the practical peak of this machine at the compute dtype
    peak, peak_source = perf.measure_matmul_peak(1024, jnp.dtype(config.model.dtype)), "measured matmul"
  out, _ = common.measure_train_step(config, args.steps, jaxpr_flops=True)
  seconds, flops = out["step_seconds_median"], out["flops_per_step_per_device_xla"]
  results = dict(
      config=spec, overrides={k: str(v) for k, v in overrides.items()}, device_kind=kind, num_devices=num_devices,
      **out, peak_flops_per_device=peak, peak_source=peak_source,
      tflops_per_device=flops / seconds / 1e12, mfu=perf.mfu(flops, seconds, 1, peak),
      mfu_matmul_conv_only=perf.mfu(out["matmul_conv_flops_per_step_jaxpr"], seconds, num_devices, peak),
      mfu_model_matmul_conv=perf.mfu(out["model_flops_per_step"], seconds, num_devices, peak),
      images_per_second=config.train.global_batch_size / seconds, goal_mfu=0.40)
  common.write_results("gpu_mfu_cpu_smoke" if args.cpu_smoke else "gpu_mfu", results)
  print(f"{kind} x{num_devices}: step {seconds * 1e3:.1f} ms, {results['tflops_per_device']:.2f} TFLOP/s per "
        f"device, MFU {results['mfu']:.1%} of {peak / 1e12:.1f} TFLOP/s ({peak_source}; goal >= 40%)")
  return results


if __name__ == "__main__":
  main()
