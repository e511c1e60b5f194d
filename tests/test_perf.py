"""glipjax.perf: peak table lookup, XLA cost/memory summaries, matmul peak, MFU."""
import types

import jax
import jax.numpy as jnp
import pytest

import glipjax
from glipjax import perf


@pytest.mark.parametrize("kind,dtype,expected", [
    ("TPU v4", "bfloat16", 275e12),
    ("TPU v5 lite", jnp.bfloat16, 197e12),
    ("TPU v5", "bfloat16", 459e12),
    ("TPU v6 lite", "float32", 918e12),
    ("NVIDIA H100 80GB HBM3", "bfloat16", 989e12),
    ("NVIDIA H100 PCIe", "bfloat16", 756e12),
    ("NVIDIA H200", jnp.float32, 495e12),
    ("NVIDIA A100-SXM4-80GB", "float32", 156e12),
])
def test_peak_table(kind, dtype, expected):
  assert perf.peak_flops_per_device(kind, dtype) == expected


def test_peak_unknown_and_override():
  assert perf.peak_flops_per_device("cpu", "float32") is None
  assert perf.peak_flops_per_device("cpu", "float32", 3e11) == 3e11
  assert perf.peak_flops_per_device("TPU v4", "bfloat16", 1e12) == 1e12  # the config's value wins
  assert perf.peak_flops_per_device("TPU v4", "int8") is None


class _FakeCompiled:
  def __init__(self, analysis):
    self.analysis = analysis

  def cost_analysis(self):
    return self.analysis


def test_compiled_cost_shapes():
  n, k, m = 32, 48, 16
  compiled = jax.jit(lambda a, b: a @ b).lower(jnp.ones((n, k)), jnp.ones((k, m))).compile()
  cost = perf.compiled_cost(compiled)
  assert cost["flops"] == 2 * n * k * m
  assert cost["bytes_accessed"] >= 4 * (n * k + k * m + n * m)
  # Older JAX: a list with one dict per module; None where the backend has no cost model.
  assert perf.compiled_cost(_FakeCompiled([{"flops": 2.0, "bytes accessed": 8.0}, {"flops": 3.0}])) == dict(
      flops=5.0, bytes_accessed=8.0)
  assert perf.compiled_cost(_FakeCompiled(None)) == {}


def test_memory_summary_counts_donation():
  x = jnp.ones((64, 64))
  plain = perf.memory_summary(jax.jit(lambda a: a * 2).lower(x).compile())
  donated = perf.memory_summary(jax.jit(lambda a: a * 2, donate_argnums=0).lower(x).compile())
  nbytes = 64 * 64 * 4
  assert plain["argument_bytes"] == plain["output_bytes"] == nbytes
  assert plain["alias_bytes"] == 0 and plain["total_bytes"] >= 2 * nbytes
  assert donated["alias_bytes"] == nbytes and donated["total_bytes"] == plain["total_bytes"] - nbytes


def test_measure_matmul_peak_and_mfu():
  peak = perf.measure_matmul_peak(128, matmuls_per_call=2, repeats=2)
  assert 1e7 < peak < 1e15
  assert perf.mfu(2e12, 2.0, 4, 1e12) == pytest.approx(0.25)
  assert perf.mfu(1e12, 1.0, 1, 1e12) == pytest.approx(1.0)


def test_jaxpr_flops_multiplies_scans_where_xla_does_not():
  n, trips = 16, 8
  a = jnp.ones((n, n))
  loop = lambda a: jax.lax.fori_loop(0, trips, lambda i, c: a @ c, a)
  assert perf.jaxpr_flops(loop, a) == trips * 2 * n**3
  xla = perf.compiled_cost(jax.jit(loop).lower(a).compile())["flops"]
  assert xla == pytest.approx(2 * n**3, rel=1e-3)  # body counted once (+ the loop counter)
  # Backward of a remat'd matmul: forward, its recomputation, and two gradient matmuls; one cond branch.
  g = jax.grad(lambda x: jax.checkpoint(lambda y: jnp.sin(y @ y))(x).sum())
  assert perf.jaxpr_flops(g, a) == 4 * 2 * n**3
  branch = lambda p, x: jax.lax.cond(p, lambda x: x @ x @ x, lambda x: x @ x, x)
  assert perf.jaxpr_flops(branch, True, jax.ShapeDtypeStruct((n, n), jnp.float32)) == 2 * 2 * n**3


def test_jaxpr_flops_conv_matches_xla():
  x = jnp.ones((2, 3, 20, 20))
  w = jnp.ones((8, 3, 3, 3))
  conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (2, 2), "SAME")
  expected = 2 * (2 * 8 * 10 * 10) * (3 * 3 * 3)
  assert perf.jaxpr_flops(conv, x, w) == expected
  # Grouped conv and the weight-gradient conv (batch contracted) follow the same rule.
  wg = jnp.ones((6, 1, 3, 3))
  grouped = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", feature_group_count=3)
  assert perf.jaxpr_flops(grouped, x, wg) == 2 * (2 * 6 * 20 * 20) * 9
  dw = jax.grad(lambda w: conv(x, w).sum())
  assert perf.jaxpr_flops(dw, w) == 2 * expected  # forward (make_jaxpr keeps it) + weight gradient


def test_bytes_per_device_of_sharded_abstract_tree():
  mesh = jax.sharding.Mesh(jax.devices()[:1], ("fsdp",))
  sharded = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("fsdp"))
  tree = dict(w=jax.ShapeDtypeStruct((8, 4), jnp.float32, sharding=sharded), b=jax.ShapeDtypeStruct((4,), jnp.bfloat16))
  assert perf.bytes_per_device(tree) == 8 * 4 * 4 + 4 * 2
  assert perf.bytes_per_device([jnp.ones((3, 2), jnp.int8)]) == 6

  class RowsOverFour:  # what NamedSharding.shard_shape gives for P("fsdp") on 4 devices
    def shard_shape(self, shape):
      return (shape[0] // 4, *shape[1:])

  leaf = types.SimpleNamespace(shape=(8, 4), dtype=jnp.float32, sharding=RowsOverFour())
  assert perf.bytes_per_device([leaf]) == 2 * 4 * 4


def test_op_profile_attributes_trace_time_to_op_kinds_and_sources(tmp_path):
  from benchmarks import op_profile
  a = jnp.ones((384, 384))
  fn = lambda a: jnp.tanh(a @ a @ a).sum() + jnp.take(a, jnp.arange(64) * 3, axis=0).sum()
  compiled = jax.jit(fn).lower(a).compile()
  compiled(a).block_until_ready()
  with jax.profiler.trace(str(tmp_path), create_perfetto_trace=True):
    compiled(a).block_until_ready()
  summary = op_profile.summarize(tmp_path, compiled.as_text())
  assert next(iter(summary["by_kind"])) == "dot"  # the two matmuls dominate
  assert summary["top_ops"][0]["kind"] == "dot" and summary["top_ops"][0]["source"] == "test_perf.py"
  assert sum(v["seconds"] for v in summary["by_kind"].values()) == pytest.approx(summary["op_seconds_total"], abs=1e-3)


def test_default_cpu_xla_flags_respect_the_users_own():
  flag = "--xla_cpu_experimental_ynn_fusion_type"
  assert glipjax._with_default_flags("") == f"{flag}=-reduce"
  assert glipjax._with_default_flags("--xla_force_host_platform_device_count=8") == \
      f"--xla_force_host_platform_device_count=8 {flag}=-reduce"
  assert glipjax._with_default_flags(f"{flag}=dot") == f"{flag}=dot"
