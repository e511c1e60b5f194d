"""Meshes and sharding rules. The multi-device checks run this file as a script in a subprocess with 8 fake CPU
devices (the device count is fixed when JAX's backend starts, and the rest of the suite uses 1): data-parallel,
FSDP and FSDP+TP train steps must match the step of a 1-device process, with parameters and optimizer moments
sharded as `config.mesh.rules` say."""
import json
import math
import os
import pathlib
import re
import subprocess
import sys
import types

import jax
import numpy as np
import pytest
from jax.sharding import AbstractMesh, AxisType, PartitionSpec as P

from configs import base, glip_l, glip_t, tiny
from glipjax import config_utils, sharding

REPO = pathlib.Path(__file__).resolve().parents[1]

RULES = base.get_config().mesh.rules
MESHES = {"one": (1, 1, 1), "dp": (8, 1, 1), "fsdp": (1, 8, 1), "fsdp_tp": (1, 4, 2)}
# Parameters whose sharding the tests inspect (the first whose path matches), with their logical axes.
PROBES = {
    "bert_query": r"^params/language_backbone/.*attention/self/query/kernel",  # (embed, heads)
    "word_embeddings": r"^params/language_backbone/.*word_embeddings/embedding",  # (vocab, embed)
    "swin_fc1": r"^params/backbone/layers/0/.*mlp/fc1/kernel",                # (embed, mlp)
    "fusion_v_proj": r"^params/head/.*b_attn/attn/v_proj/kernel",             # (embed, heads)
    "dyconv": r"^params/head/.*DyConv/0/conv/kernel",                         # (.., conv_in, conv_out)
}


def abstract_mesh(shape):
  return AbstractMesh(tuple(shape), ("data", "fsdp", "tensor"), axis_types=(AxisType.Auto,) * 3)


def fake_devices(n, per_process, slices=None):
  """Stand-ins carrying what mesh construction reads (process/slice index, platform)."""
  devs = []
  for i in range(n):
    d = types.SimpleNamespace(id=i, process_index=i // per_process, platform="cpu", device_kind="cpu")
    if slices:
      d.slice_index = i // (n // slices)
    devs.append(d)
  return devs


def mesh_config(shape, dcn_shape=(1, 1, 1)):
  c = base.get_config().mesh
  c.shape, c.dcn_shape = shape, dcn_shape
  return c


def test_logical_to_spec_maps_rules_without_reusing_or_unevenly_splitting_axes():
  m = abstract_mesh((2, 4, 2))
  assert sharding.logical_to_spec(("embed", "heads"), (64, 64), m, RULES) == P("fsdp", "tensor")
  assert sharding.logical_to_spec((None, None, "conv_in", "conv_out"), (3, 3, 8, 6), m, RULES) == \
      P(None, None, "fsdp", "tensor")
  # A tuple rule shards over the product of its axes; activations: the batch takes fsdp, so embed cannot.
  assert sharding.logical_to_spec(("batch", "length", "embed"), (16, 5, 64), m, RULES) == \
      P(("data", "fsdp"), None, None)
  # Batch 2 only takes "data"; then "embed" may use the free fsdp axis. Uneven splits are never made.
  assert sharding.logical_to_spec(("batch", "length", "embed"), (2, 5, 64), m, RULES) == P("data", None, "fsdp")
  assert sharding.logical_to_spec(("vocab", "embed"), (1001, 6), m, RULES) == P(None, None)
  assert sharding.logical_to_spec(("norm",), (64,), m, RULES) == P(None)
  assert sharding.logical_to_spec(None, (4, 4), m, RULES) == P(None, None)
  # Size-1 axes are left out, so FSDP-only meshes give plain specs.
  assert sharding.logical_to_spec(("embed", "heads"), (64, 64), abstract_mesh((1, 8, 1)), RULES) == P("fsdp", None)
  with pytest.raises(ValueError, match="do not match"):
    sharding.logical_to_spec(("embed",), (4, 4), m, RULES)
  with pytest.raises(ValueError, match="twice"):
    sharding.logical_to_spec(("embed",), (4,), m, RULES + (("embed", "tensor"),))


def test_mesh_from_config_resolves_the_rest_and_rejects_shapes_that_do_not_fit():
  devs = fake_devices(8, per_process=8)
  assert sharding.device_grid(mesh_config((-1, 1, 1)), devs).shape == (8, 1, 1)
  assert sharding.device_grid(mesh_config((1, -1, 2)), devs).shape == (1, 4, 2)
  grid = sharding.device_grid(mesh_config((2, 2, 2)), devs)
  assert [d.id for d in grid.ravel()] == list(range(8))  # jax.devices() order
  for bad in ((3, -1, 1), (16, 1, 1), (-1, -1, 1), (0, 8, 1)):
    with pytest.raises(ValueError, match=r"mesh\.shape"):
      sharding.device_grid(mesh_config(bad), devs)
  with pytest.raises(ValueError, match="one entry per axis"):
    sharding.device_grid(mesh_config((8, 1)), devs)
  mesh = sharding.make_mesh(mesh_config((-1, 1, 1)))  # this process's real device(s)
  assert mesh.shape == {"data": jax.device_count(), "fsdp": 1, "tensor": 1}
  assert mesh.axis_types == (AxisType.Auto,) * 3


def test_hybrid_mesh_keeps_each_process_or_slice_in_one_block():
  # 2 hosts x 4 devices: data-parallel across hosts (dcn), FSDP x TP inside each host.
  grid = sharding.device_grid(mesh_config((1, 2, 2), dcn_shape=(2, 1, 1)), fake_devices(8, per_process=4))
  assert grid.shape == (2, 2, 2)
  assert [{d.process_index for d in grid[i].ravel()} for i in range(2)] == [{0}, {1}]
  grid = sharding.device_grid(mesh_config((-1, 1, 1), dcn_shape=(1, -1, 1)), fake_devices(8, per_process=4))
  assert grid.shape == (4, 2, 1) and {d.process_index for d in grid[:, 0].ravel()} == {0}
  # TPU slices take precedence over processes: 4 slices of 2 devices, one process.
  grid = sharding.device_grid(mesh_config((2, 1, 1), dcn_shape=(1, 4, 1)), fake_devices(8, per_process=8, slices=4))
  assert grid.shape == (2, 4, 1)
  assert [{d.slice_index for d in grid[:, j, 0]} for j in range(4)] == [{0}, {1}, {2}, {3}]
  with pytest.raises(ValueError, match=r"mesh\.dcn_shape .* 2 processes"):
    sharding.device_grid(mesh_config((-1, 1, 1), dcn_shape=(4, 1, 1)), fake_devices(8, per_process=4))
  with pytest.raises(ValueError, match=r"mesh\.shape .* 4 devices of each"):
    sharding.device_grid(mesh_config((8, 1, 1), dcn_shape=(2, 1, 1)), fake_devices(8, per_process=4))


def test_rules_are_checked_against_the_mesh():
  c = mesh_config((-1, 1, 1))
  c.rules = RULES + (("kv", "model"),)
  with pytest.raises(ValueError, match="'kv' to \\['model'\\]"):
    sharding.make_mesh(c)
  c = mesh_config((-1, 1, 1))
  c.batch_axes = ("data",)
  with pytest.raises(ValueError, match="disagree"):
    sharding.make_mesh(c)


def test_constrain_is_a_no_op_outside_activation_rules():
  x = np.ones((4, 3), np.float32)
  assert sharding.constrain(x, ("batch", "embed")) is x
  mesh = sharding.make_mesh(mesh_config((-1, 1, 1)))
  with jax.set_mesh(mesh), sharding.activation_rules(RULES):
    y = jax.jit(lambda a: sharding.constrain(a * 2, ("batch", "embed")))(x)
  np.testing.assert_array_equal(y, 2 * x)


# ---------------------------------------------------------------------------------------------------------------
# Train steps on 8 fake devices vs 1 device.

def small_config(shape=(-1, 1, 1)):
  """Smaller than tiny (one layer per tower, 64x64 canvas): compiling the train step is most of the test time."""
  return config_utils.apply_overrides(tiny.get_config(), {
      "data.canvas": (64, 64), "model.max_query_len": 16, "model.swin.depths": (1, 1, 1, 1),
      "model.language.num_layers": 1, "model.dyhead.num_layers": 1, "train.global_batch_size": 8,
      "optim.warmup_steps": 1, "mesh.shape": shape, "model.dyhead.fusion": True,
      "train.mode": "full"})  # every parameter trains: every one has sharded moments


def synthetic_batch(config) -> dict:
  """A batch in the pipeline's layout (glipjax/data/batch.py), prompts of random lengths, 1..4 boxes each."""
  from glipjax.data.batch import BatchSpec
  rng = np.random.default_rng(0)
  b, t, g = config.train.global_batch_size, config.model.max_query_len, 4
  spec = BatchSpec(tuple(config.data.canvas), g, config.data.max_phrases, t)
  batch = spec.zeros(b)
  lengths = rng.integers(6, t + 1, b)
  attention_mask = (np.arange(t) < lengths[:, None]).astype(np.int32)
  xy = rng.uniform(0, 40, (b, g, 2))
  for i in range(b):
    for j in range(g):
      batch["positive_map"][i, j, 1 + j % (lengths[i] - 2)] = 1.0
  input_ids = rng.integers(1, config.model.language.vocab_size, (b, t)) * attention_mask
  batch.update(image=rng.integers(0, 256, (b, *spec.canvas, 3), dtype=np.uint8),
               image_hw=np.broadcast_to(np.int32(spec.canvas), (b, 2)).copy(), input_ids=input_ids.astype(np.int32),
               attention_mask=attention_mask,
               boxes=np.concatenate([xy, xy + rng.uniform(8, 24, (b, g, 2))], -1).astype(np.float32),
               box_mask=np.arange(g)[None] < rng.integers(1, g + 1, (b, 1)))
  return batch


def flat(tree) -> dict:
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  return {jax.tree_util.keystr(k, simple=True, separator="/"): v for k, v in leaves}


def run_steps(shape, num_steps=2):
  """Init + `num_steps` train steps on `shape`; returns (metrics per step, init params, final state as numpy,
  a report of how the state is sharded)."""
  from glipjax import runtime, trainer
  config = small_config(shape)
  setup = runtime.build(config)
  with jax.set_mesh(setup.mesh), sharding.activation_rules(config.mesh.rules):
    batch_sharding = sharding.batch_sharding(setup.mesh, config.mesh.batch_axes)
    batch = sharding.global_batch(synthetic_batch(config), batch_sharding)
    state, rest = setup.init()
    init_params = {k: np.asarray(v) for k, v in flat(state["params"]).items()}
    layout = {"init": sharding_mismatches(state, setup.state_shardings)}
    step = trainer.make_train_step(setup)
    metrics = []
    for _ in range(num_steps):
      state, m = step(state, rest, batch, jax.random.key(0))
      metrics.append({k: float(v) for k, v in m.items()})
    layout["after_step"] = sharding_mismatches(state, setup.state_shardings)
  leaves = flat(state)
  layout["probes"] = {}
  for name, pattern in PROBES.items():
    key = next(k for k in leaves if re.search(pattern, k))
    param = leaves[key]
    layout["probes"][name] = dict(
        spec=str(param.sharding.spec), shape=param.shape, shard=param.addressable_shards[0].data.shape,
        moments=[(k, v.addressable_shards[0].data.shape) for k, v in leaves.items()
                 if k.startswith("opt_state") and k.endswith(key.removeprefix("params"))])
  layout["bytes_per_device"] = sum(v.addressable_shards[0].data.nbytes for v in leaves.values())
  layout["bytes_total"] = sum(v.nbytes for v in leaves.values())
  return metrics, init_params, {k: np.asarray(v) for k, v in leaves.items()}, layout


def sharding_mismatches(state, shardings) -> list[str]:
  want = flat(shardings)
  return [k for k, v in flat(state).items() if not v.sharding.is_equivalent_to(want[k], v.ndim)]


def state_bytes_fraction(config_module, shape, arg=None) -> float:
  """Per-device / replicated bytes of parameters + optimizer state, from shapes and shardings only."""
  from glipjax import runtime, trainer
  config = config_module.get_config(arg) if arg else config_module.get_config()
  config = config_utils.apply_overrides(config, {"mesh.shape": shape})
  setup = runtime.build(config)
  per_device = total = 0
  for a, s in zip(jax.tree.leaves(setup.abstract_state), jax.tree.leaves(setup.state_shardings)):
    per_device += math.prod(s.shard_shape(a.shape)) * a.dtype.itemsize
    total += math.prod(a.shape) * a.dtype.itemsize
  return per_device / total


def worker(out_dir: pathlib.Path, meshes: list[str]) -> None:
  """Runs the named meshes' train steps and writes their metrics, parameters and layouts into `out_dir`."""
  report = {}
  for name in meshes:
    metrics, init_params, final, layout = run_steps(MESHES[name])
    np.savez(out_dir / f"{name}_init.npz", **init_params)
    np.savez(out_dir / f"{name}_final.npz", **final)
    report[name] = dict(metrics=metrics, layout=layout)
  if "fsdp_tp" in meshes:
    report["fraction"] = {name: state_bytes_fraction(module, MESHES["fsdp"], arg)
                          for name, module, arg in (("glip_t", glip_t, "c"), ("glip_l", glip_l, None))}
    # An activation constraint by logical names lands where the rules say.
    with jax.set_mesh(sharding.make_mesh(mesh_config(MESHES["fsdp_tp"]))), sharding.activation_rules(RULES):
      y = jax.jit(lambda x: sharding.constrain(x + 1, ("batch", "length", "heads")))(np.zeros((8, 3, 4), np.float32))
    report["constrained_spec"] = str(y.sharding.spec)
  (out_dir / "report.json").write_text(json.dumps(report))


def start_worker(out_dir: pathlib.Path, num_devices: int, meshes: list[str]) -> subprocess.Popen:
  """A fresh process, since the device count is fixed when JAX starts. It inherits XLA_FLAGS from
  tests/conftest.py (LLVM -O0 on both sides of the comparison: the checks here are about layouts and values)."""
  env = dict(os.environ, JAX_NUM_CPU_DEVICES=str(num_devices), PYTHONPATH=str(REPO))
  return subprocess.Popen([sys.executable, __file__, str(out_dir), *meshes], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish_worker(proc: subprocess.Popen, out_dir: pathlib.Path) -> dict:
  try:
    log, _ = proc.communicate(timeout=900)
  finally:
    proc.kill()
  assert proc.returncode == 0, log[-5000:]
  return json.loads((out_dir / "report.json").read_text())


def load(out_dir: pathlib.Path, report: dict, mesh: str):
  return report[mesh], np.load(out_dir / f"{mesh}_init.npz"), np.load(out_dir / f"{mesh}_final.npz")


@pytest.fixture(scope="module")
def workers(tmp_path_factory):
  """The 1-device reference, FSDP x TP, and DP then FSDP, in three processes side by side (an XLA compile is
  mostly single-threaded, so the 8-device steps compile while the reference does)."""
  dirs = {name: tmp_path_factory.mktemp(name) for name in ("one", "fsdp_tp", "dp_fsdp")}
  procs = {"one": start_worker(dirs["one"], 1, ["one"]), "fsdp_tp": start_worker(dirs["fsdp_tp"], 8, ["fsdp_tp"]),
           "dp_fsdp": start_worker(dirs["dp_fsdp"], 8, ["dp", "fsdp"])}
  try:
    return {name: (dirs[name], finish_worker(proc, dirs[name])) for name, proc in procs.items()}
  finally:
    for proc in procs.values():
      proc.kill()


@pytest.fixture(scope="module")
def one_device_and_fsdp_tp(workers):
  (ref_dir, ref_report), (out, report) = workers["one"], workers["fsdp_tp"]
  return load(ref_dir, ref_report, "one"), out, report


@pytest.fixture(scope="module")
def dp_and_fsdp(workers):
  return workers["dp_fsdp"]


@pytest.mark.parametrize("mesh", ["dp", "fsdp", "fsdp_tp"])
def test_sharded_train_steps_match_one_device(one_device_and_fsdp_tp, request, mesh):
  (ref, ref_init, ref_final), out, report = one_device_and_fsdp_tp
  if mesh != "fsdp_tp":
    out, report = request.getfixturevalue("dp_and_fsdp")
  got, init, final = load(out, report, mesh)
  # Same RNG whatever the layout (partitionable threefry): the sharded initial parameters are the same numbers.
  assert init.files == ref_init.files
  for k in ref_init.files:
    np.testing.assert_array_equal(init[k], ref_init[k], err_msg=k)
  # Losses, metrics and gradient norms of both steps (the second sees the first update; dropout is on): sums
  # split over devices are reassociated, float32 rounding ~1e-7 per add, so agreement to 1e-5 relative.
  assert len(got["metrics"]) == len(ref["metrics"]) == 2
  for step, want in zip(got["metrics"], ref["metrics"]):
    assert step.keys() == want.keys()
    for k in want:
      np.testing.assert_allclose(step[k], want[k], rtol=1e-5, atol=1e-7, err_msg=k)
  # Adam moments after two steps are linear (mu) and quadratic (nu) in the gradients: equal up to float32
  # rounding relative to the tensor's scale, or to the largest moment for tensors whose gradient is itself
  # rounding noise (attention key biases, which softmax ignores, have gradients ~1e-12 instead of 0).
  for kind in ("mu", "nu"):
    keys = [k for k in ref_final.files if k.startswith("opt_state") and f"/{kind}/" in k]
    assert len(keys) > 100
    largest = max(np.abs(ref_final[k]).max() for k in keys)
    for k in keys:
      want = ref_final[k]
      np.testing.assert_allclose(final[k], want, rtol=1e-4, atol=1e-4 * np.abs(want).max() + 1e-6 * largest,
                                 err_msg=k)
  # Parameters: Adam moves each by ~lr * m/sqrt(v) (lr 2e-6, then 2e-3), so coordinates with noise gradients may
  # move apart by up to ~lr; allow 5% of that (seen: 2.4e-5), and ask weight matrices to agree almost everywhere.
  for k in ref_final.files:
    if k.startswith("params"):
      want = ref_final[k]
      assert np.abs(final[k] - want).max() <= 1e-4, k
      if want.ndim >= 2:
        assert np.isclose(final[k], want, rtol=1e-5, atol=1e-6).mean() >= 0.999, k

def check_layout(layout, mesh):
  assert layout["init"] == [] and layout["after_step"] == [], (mesh, layout)  # as param_shardings says


def test_parameters_and_moments_are_sharded_as_the_rules_say(one_device_and_fsdp_tp):
  _, _, report = one_device_and_fsdp_tp
  layout = report["fsdp_tp"]["layout"]
  check_layout(layout, "fsdp_tp")
  # fsdp=4, tensor=2: embed and conv_in over fsdp; heads, mlp, vocab and conv_out over tensor.
  expected = {"bert_query": ("P('fsdp', 'tensor')", [64, 64], [16, 32]),
              "word_embeddings": ("P('tensor', 'fsdp')", [1000, 64], [500, 16]),
              "swin_fc1": ("P('fsdp', 'tensor')", [24, 96], [6, 48]),
              "fusion_v_proj": ("P('fsdp', 'tensor')", [64, 256], [16, 128]),
              "dyconv": ("P(None, None, 'fsdp', 'tensor')", [3, 3, 64, 64], [3, 3, 16, 32])}
  for name, (spec, shape, shard) in expected.items():
    p = layout["probes"][name]
    assert (p["spec"], p["shape"], p["shard"]) == (spec, shape, shard), (name, p)
    assert [m[1] for m in p["moments"]] == [shard, shard], (name, p["moments"])  # Adam mu and nu
  assert layout["bytes_per_device"] < 0.2 * layout["bytes_total"]
  assert report["constrained_spec"] == "P('fsdp', None, 'tensor')"


def test_dp_replicates_and_fsdp_splits_eight_ways(dp_and_fsdp):
  _, report = dp_and_fsdp
  dp, fsdp = report["dp"]["layout"], report["fsdp"]["layout"]
  check_layout(dp, "dp")
  check_layout(fsdp, "fsdp")
  assert dp["probes"]["bert_query"]["shard"] == [64, 64] and dp["bytes_per_device"] == dp["bytes_total"]
  assert fsdp["probes"]["bert_query"]["shard"] == [8, 64] and fsdp["probes"]["dyconv"]["shard"] == [3, 3, 8, 64]
  assert fsdp["bytes_per_device"] <= 0.135 * fsdp["bytes_total"]


def test_fsdp_state_bytes_per_device_for_glip_t_and_l(one_device_and_fsdp_tp):
  """The benchmark goal: FSDP parameters + optimizer state per device <= 0.135 x replicated on 8 devices."""
  fraction = one_device_and_fsdp_tp[2]["fraction"]
  assert fraction["glip_t"] <= 0.135 and fraction["glip_l"] <= 0.135, fraction


if __name__ == "__main__":
  worker(pathlib.Path(sys.argv[1]), sys.argv[2:])
