"""Performance facts for logging and benchmarks: peak FLOP/s per device kind, FLOPs and memory of compiled steps,
a measured matmul peak, and MFU.

FLOPs come from XLA's cost analysis of the compiled executable (per device: under SPMD every device runs the same
partitioned program). XLA counts the body of a while loop once, whatever its trip count, so a step with
`lax.scan` over layers or micro-batches is under-counted; `jaxpr_flops` gives the matmul/conv count with scans
multiplied out.
"""
from __future__ import annotations

import math
import time
from typing import Any

import jax
import jax.numpy as jnp
from jax.extend import core as jax_core

# Dense peak FLOP/s per device (one JAX device) from the vendors' data sheets, by compute dtype. "float32" is what
# a float32 matmul runs at under JAX's default precision: a single bf16 pass on TPU, TF32 tensor cores on
# NVIDIA Ampere and later. First matching substring of the lower-cased `device.device_kind` wins, so the more
# specific names come first.
PEAK_FLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("tpu v6 lite", dict(bfloat16=918e12, float32=918e12)),   # v6e (Trillium)
    ("tpu v6e", dict(bfloat16=918e12, float32=918e12)),
    ("tpu v5 lite", dict(bfloat16=197e12, float32=197e12)),   # v5e
    ("tpu v5e", dict(bfloat16=197e12, float32=197e12)),
    ("tpu v5p", dict(bfloat16=459e12, float32=459e12)),
    ("tpu v5", dict(bfloat16=459e12, float32=459e12)),        # v5p reports "TPU v5"
    ("tpu v4", dict(bfloat16=275e12, float32=275e12)),
    ("h100 pcie", dict(bfloat16=756e12, float16=756e12, float32=378e12)),
    ("h100 nvl", dict(bfloat16=835e12, float16=835e12, float32=418e12)),
    ("h100", dict(bfloat16=989e12, float16=989e12, float32=495e12)),   # SXM
    ("h200", dict(bfloat16=989e12, float16=989e12, float32=495e12)),
    ("a100", dict(bfloat16=312e12, float16=312e12, float32=156e12)),
)


def _dtype_name(dtype) -> str:
  return jnp.dtype(dtype).name


def peak_flops_per_device(device_kind: str, dtype="float32", override: float | None = None) -> float | None:
  """Peak dense FLOP/s of one device of `device_kind` computing in `dtype`; `override` (e.g. the config's
  `train.peak_flops_per_device`) wins when given. None for kinds not in the table (CPUs: measure with
  `measure_matmul_peak`)."""
  if override:
    return float(override)
  kind, name = device_kind.lower(), _dtype_name(dtype)
  for key, peaks in PEAK_FLOPS:
    if key in kind:
      return peaks.get(name)
  return None


def compiled_cost(compiled) -> dict[str, float]:
  """{flops, bytes_accessed, transcendentals} per device from XLA's cost analysis of a `jax.stages.Compiled`.
  cost_analysis() returns a dict (current JAX), a list of dicts, one per HLO module (older JAX), or None."""
  analysis = compiled.cost_analysis()
  if analysis is None:
    return {}
  entries = [analysis] if isinstance(analysis, dict) else list(analysis)
  out = {}
  for name, key in (("flops", "flops"), ("bytes_accessed", "bytes accessed"), ("transcendentals", "transcendentals")):
    values = [float(e[key]) for e in entries if e and key in e]
    if values:
      out[name] = sum(values)
  return out


def memory_summary(compiled) -> dict[str, int]:
  """Per-device bytes of a compiled executable (XLA buffer assignment): arguments, outputs, aliased (donated
  arguments reused as outputs), temporaries, generated code, and `total` = arguments + outputs - aliased +
  temporaries, the device memory the step needs."""
  stats = compiled.memory_analysis()
  if stats is None:
    return {}
  out = dict(argument_bytes=stats.argument_size_in_bytes, output_bytes=stats.output_size_in_bytes,
             alias_bytes=stats.alias_size_in_bytes, temp_bytes=stats.temp_size_in_bytes,
             generated_code_bytes=stats.generated_code_size_in_bytes)
  out["total_bytes"] = out["argument_bytes"] + out["output_bytes"] - out["alias_bytes"] + out["temp_bytes"]
  return {k: int(v) for k, v in out.items()}


def bytes_per_device(tree) -> int:
  """Bytes one device holds of a pytree of sharded arrays or `jax.ShapeDtypeStruct`s with shardings (e.g. the
  trainer's abstract state): the sum over leaves of the shard size. Leaves without a sharding count in full."""
  total = 0
  for leaf in jax.tree.leaves(tree):
    sharding = getattr(leaf, "sharding", None)
    shape = sharding.shard_shape(leaf.shape) if sharding is not None else leaf.shape
    total += math.prod(shape) * jnp.dtype(leaf.dtype).itemsize
  return total


def measure_matmul_peak(n: int = 2048, dtype=jnp.float32, *, matmuls_per_call: int = 4, repeats: int = 5,
                        device=None) -> float:
  """Best FLOP/s of chained n x n matmuls on `device` (default: the first device): the practical matmul peak of
  this machine, e.g. for CPUs that have no table entry. Several matmuls per call amortise dispatch on fast
  accelerators."""
  device = device or jax.devices()[0]
  a = jax.device_put(jax.random.normal(jax.random.key(0), (n, n), dtype) / math.sqrt(n), device)

  @jax.jit
  def chain(a, c):
    for _ in range(matmuls_per_call):  # each product feeds the next, so none can be skipped
      c = a @ c
    return c

  c = chain(a, a).block_until_ready()  # compile + warm up
  best = math.inf
  for _ in range(repeats):
    t0 = time.perf_counter()
    c = chain(a, c).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return 2.0 * n**3 * matmuls_per_call / best


def mfu(flops_per_step: float, step_seconds: float, num_devices: int, peak_flops_per_device: float) -> float:
  """Model FLOPs utilisation: FLOPs of one step summed over `num_devices` devices (pass per-device FLOPs with
  num_devices=1) divided by what those devices could do at peak in the step's time."""
  return float(flops_per_step) / (float(step_seconds) * num_devices * float(peak_flops_per_device))


def _eqn_flops(eqn) -> float:
  name = eqn.primitive.name
  if name == "dot_general":
    lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
    (_, rhs_contract), (_, rhs_batch) = eqn.params["dimension_numbers"]
    rhs_free = [d for i, d in enumerate(rhs) if i not in rhs_contract and i not in rhs_batch]
    return 2.0 * math.prod(lhs) * math.prod(rhs_free)
  if name == "conv_general_dilated":
    rhs = eqn.invars[1].aval.shape
    rhs_spec = eqn.params["dimension_numbers"].rhs_spec  # (out features, in features, *spatial)
    per_output = math.prod(d for i, d in enumerate(rhs) if i != rhs_spec[0])  # in features x kernel window
    return 2.0 * math.prod(eqn.outvars[0].aval.shape) * per_output
  counts = [_jaxpr_flops(j) for j in jax_core.jaxprs_in_params(eqn.params)]
  if name == "cond":
    return max(counts, default=0.0)  # one branch runs
  if name == "scan":
    return eqn.params["length"] * sum(counts)
  return sum(counts)  # pjit, remat, custom_jvp/vjp, while (trip count unknown: counted once)


def _jaxpr_flops(jaxpr) -> float:
  return sum(_eqn_flops(e) for e in jaxpr.eqns)


def jaxpr_flops(fn, *args, **kwargs) -> float:
  """Matmul and convolution FLOPs of `fn(*args, **kwargs)` from its jaxpr (abstract args are fine): global, i.e.
  summed over all devices, with `scan` bodies multiplied by their length and recomputation under `jax.checkpoint`
  included (what the hardware executes). Elementwise ops are not counted, so an unrolled graph gives a little less
  than XLA's cost analysis."""
  return _jaxpr_flops(jax.make_jaxpr(fn)(*args, **kwargs).jaxpr)
