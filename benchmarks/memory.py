"""Per-device memory of the GLIP-T and GLIP-L train steps on 8 fake CPU devices: replicated (8,1,1) vs FSDP
(1,8,1) vs FSDP+TP (1,4,2) over the mesh axes (data, fsdp, tensor). Goal: FSDP params + optimizer state per
device <= 0.135 x replicated.

  .venv/bin/python -m benchmarks.memory [--configs configs/glip_t.py:c configs/glip_l.py] [--no-compile]

State bytes are the shard sizes of the trainer's sharded abstract state (`jax.eval_shape`, shardings from the
config's `mesh.rules`, so this follows whatever rules configs/base.py holds when rerun); nothing is allocated.
With compilation (the default) XLA's memory analysis of the partitioned step adds argument/output/temp bytes.
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("JAX_NUM_CPU_DEVICES", "8")  # before jax starts its backend

import jax  # noqa: E402

from benchmarks import common  # noqa: E402
from glipjax import perf  # noqa: E402

MESHES = {"replicated": (8, 1, 1), "fsdp": (1, 8, 1), "fsdp_tp": (1, 4, 2)}
DEFAULTS = {"train.global_batch_size": 8}


def state_bytes(abstract_state: dict) -> dict[str, int]:
  """Per-device bytes of each part of the train state, and params + optimizer state (+ EMA params) together."""
  out = {f"{k}_bytes": perf.bytes_per_device(v) for k, v in abstract_state.items() if k != "step"}
  out["params_and_optimizer_bytes"] = sum(out.values())
  return out


def measure(spec: str, mesh_shape: tuple, overrides: dict, compile_step: bool) -> dict:
  config = common.load_config(spec, {**overrides, "mesh.shape": mesh_shape})
  step = common.TrainStep(config)
  state = step.abstract_args()[0]
  out = dict(mesh_shape=mesh_shape, **state_bytes(state))
  if compile_step:
    with step.context():
      out.update(step.lower_and_compile())
      out.update({f"compiled_{k}": v for k, v in perf.memory_summary(step.compiled).items()})
  return out


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--configs", nargs="+", default=["configs/glip_t.py:c", "configs/glip_l.py"])
  parser.add_argument("--meshes", nargs="+", default=list(MESHES), choices=list(MESHES))
  parser.add_argument("--no-compile", action="store_true", help="state bytes only (seconds instead of minutes)")
  args = common.parse_args(parser, argv)
  if len(jax.devices()) != 8:
    raise SystemExit(f"needs 8 devices, found {len(jax.devices())} (JAX_NUM_CPU_DEVICES=8 on a CPU machine)")
  overrides = common.overrides_from_args(args, DEFAULTS)
  results = dict(overrides={k: str(v) for k, v in overrides.items()}, models={})
  for spec in args.configs:
    rows = {}
    for name in args.meshes:
      rows[name] = measure(spec, MESHES[name], overrides, not args.no_compile)
      gib = rows[name]["params_and_optimizer_bytes"] / 2**30
      extra = (f", compiled total {rows[name]['compiled_total_bytes'] / 2**30:.2f} GiB"
               if "compiled_total_bytes" in rows[name] else "")
      print(f"{spec} {name} {MESHES[name]}: params+optimizer {gib:.3f} GiB/device{extra}", flush=True)
    base = rows.get("replicated", {}).get("params_and_optimizer_bytes")
    for name, row in rows.items():
      if base:
        row["params_and_optimizer_vs_replicated"] = row["params_and_optimizer_bytes"] / base
    results["models"][spec] = rows
    if base and "fsdp" in rows:
      print(f"{spec}: FSDP / replicated params+optimizer bytes per device = "
            f"{rows['fsdp']['params_and_optimizer_vs_replicated']:.4f} (goal <= 0.135)")
  results["goal_fsdp_vs_replicated"] = 0.135
  common.write_results("memory", results)
  return results


if __name__ == "__main__":
  main()
