"""GLIP assembly: official parameter counts and state-dict layout (abstract), logical axes, a tiny forward pass,
and official checkpoint import/export (strictness, prefixes, file formats, clear errors)."""
import json
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import glipjax  # noqa: F401
from configs import glip_l, glip_t
from configs.model import glip_model
from glipjax import summary
from glipjax.interop.official import export_official, import_official, load_official_checkpoint
from glipjax.models.glip import GLIP

# Official counts (fixture README §5, state_dict_shapes_summary.json): parameters, buffers excluded.
OFFICIAL = {
    "glip_t_c": dict(total=231_780_222, backbone=27_520_506, fpn=3_295_232, language_backbone=108_891_648,
                     head=92_072_836),
    "glip_l": dict(total=430_422_384, backbone=195_200_820, fpn=3_639_296, language_backbone=108_891_648,
                   head=122_690_620),
}
REPO = pathlib.Path(__file__).resolve().parents[1]
SHAPES_JSON = {"glip_t_c": "state_dict_shapes_glip_t.json", "glip_l": "state_dict_shapes_glip_l.json"}


@pytest.fixture(scope="module", params=sorted(OFFICIAL))
def abstract(request):
  return request.param, summary.abstract_model(glip_model(request.param))


def test_param_counts_match_official(abstract):
  variant, model = abstract
  counts = summary.param_counts(model)
  assert {k: counts[k] for k in OFFICIAL[variant]} == OFFICIAL[variant]
  assert 0 < counts["head.dyhead_tower"] < counts["head"]


def test_export_layout_matches_official_state_dict(abstract, reference_dir):
  """Every official key with its exact shape and dtype, buffers included, and nothing else: what
  `load_state_dict(strict=True)` of the official model needs."""
  variant, model = abstract
  official = json.loads((reference_dir.parent / SHAPES_JSON[variant]).read_text())
  expected = {k: (tuple(v["shape"]), v["dtype"]) for k, v in official.items()}
  ours = {k: (v.shape, str(v.dtype)) for k, v in export_official(model, glip_model(variant)).items()}
  assert sorted(set(expected) - set(ours)) == [] and sorted(set(ours) - set(expected)) == []
  assert {k: s for k, s in ours.items() if s != expected[k]} == {}


@pytest.mark.parametrize("variant", ["glip_t_a", "glip_t_b"])
def test_export_layout_of_the_other_glip_t_variants(variant, reference_dir):
  """GLIP-T(B) is GLIP-T(C)'s architecture (they differ in data); GLIP-T(A)'s tower is the DyConvs alone, so its
  official keys are GLIP-T(C)'s without the VLFuse / BERT tower layers and with DyConv i at index i."""
  official = json.loads((reference_dir.parent / SHAPES_JSON["glip_t_c"]).read_text())
  expected = {}
  for k, v in official.items():
    m = re.match(r"rpn\.head\.dyhead_tower\.(\d+)\.(.*)", k)
    if variant == "glip_t_a" and m:
      if int(m.group(1)) % 3 != 2:
        continue
      k = f"rpn.head.dyhead_tower.{int(m.group(1)) // 3}.{m.group(2)}"
    expected[k] = (tuple(v["shape"]), v["dtype"])
  model = summary.abstract_model(glip_model(variant))
  ours = {k: (v.shape, str(v.dtype)) for k, v in export_official(model, glip_model(variant)).items()}
  assert sorted(set(expected) - set(ours)) == [] and sorted(set(ours) - set(expected)) == []
  assert {k: s for k, s in ours.items() if s != expected[k]} == {}


def test_every_param_has_logical_axes():
  model = summary.abstract_model(glip_model("tiny"))
  bad = []
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    axes = var.get_metadata().get("out_sharding")
    if axes is None or len(axes) != len(var.shape):
      bad.append((".".join(map(str, path)), axes, var.shape))
  assert bad == []


def _tiny_inputs(cfg, b=2, h=64, w=96, t=8):
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.normal(size=(b, h, w, 3)), jnp.float32)
  ids = jnp.asarray(rng.integers(1, cfg.language.vocab_size, (b, t)))
  mask = jnp.asarray([[1] * t, [1] * 5 + [0] * (t - 5)])
  return images, ids, mask


def _check_forward(cfg, graphdef, state):
  images, ids, mask = _tiny_inputs(cfg)
  (b, h, w, _), t = images.shape, ids.shape[1]
  out = jax.jit(lambda s: nnx.merge(graphdef, s)(images, ids, mask, capture=True))(state)
  levels = [(-(-h // s), -(-w // s)) for s in cfg.anchors.strides]
  a = sum(hh * ww for hh, ww in levels)
  assert out["dot_product_logits"].shape == (b, a, t)
  assert out["box_regression"].shape == (b, a, 4)
  assert out["centerness"].shape == (b, a)
  for k in ("dot_product_logits", "box_regression", "centerness"):
    assert np.isfinite(np.asarray(out[k])).all(), k
  inter = out["intermediates"]
  for lvl, (hh, ww) in enumerate(levels):
    assert inter[f"fpn_p{lvl + 3}"].shape == (b, hh, ww, cfg.fpn.out_channels)
    assert inter[f"box_regression_l{lvl}"].shape == (b, hh, ww, 4)
  # Flattening is level-major, row-major within a level: the last P3 anchor is P3's bottom-right location.
  n3 = levels[0][0] * levels[0][1]
  np.testing.assert_array_equal(out["box_regression"][:, n3 - 1], inter["box_regression_l0"][:, -1, -1])
  np.testing.assert_array_equal(out["box_regression"][:, n3], inter["box_regression_l1"][:, 0, 0])
  return out


def test_tiny_forward_shapes_and_finite():
  """Random weights filled into the abstract model (eager init of every parameter is slow on 2 cores)."""
  cfg = glip_model("tiny")
  graphdef, params, rest = nnx.split(summary.abstract_model(cfg), nnx.Param, ...)
  rng = np.random.default_rng(1)
  params = jax.tree.map(lambda s: jnp.asarray(0.05 * rng.standard_normal(s.shape), s.dtype), params)
  rest = jax.tree.map(lambda s: jax.random.key(0) if jax.dtypes.issubdtype(s.dtype, jax.dtypes.prng_key)
                      else jnp.zeros(s.shape, s.dtype), rest)
  _check_forward(cfg, graphdef, nnx.merge_state(params, rest))


@pytest.mark.slow
def test_tiny_init_and_forward():
  cfg = glip_model("tiny")
  model = GLIP(cfg, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  _check_forward(cfg, graphdef, state)
  # Head initialisation: bias0 = cls_logits bias = -log((1 - p) / p) with prior 0.01, unit scales, log_scale 0.
  np.testing.assert_allclose(model.head.bias0[...], -np.log(99.0), rtol=1e-6)
  np.testing.assert_allclose(model.head.cls_logits.bias[...], -np.log(99.0), rtol=1e-6)
  assert [float(s.scale[0]) for s in model.head.scales] == [1.0] * 5 and float(model.head.log_scale[0]) == 0.0


def test_configs_select_variants():
  assert glip_t.get_config("a").model.dyhead.fusion is False
  c = glip_t.get_config("c")
  assert c.model.variant == "glip_t_c" and c.optim.weight_decay == 1e-4
  with pytest.raises(ValueError):
    glip_t.get_config("x")
  cl = glip_l.get_config()
  assert cl.model.swin.embed_dim == 192 and cl.model.dyhead.num_layers == 8 and cl.optim.weight_decay == 0.01


def test_summary_cli():
  """The real command line: config file with its arg, a `--config.` override, the `total_params=` last line."""
  res = subprocess.run([sys.executable, "-m", "glipjax.summary", "--config", "configs/glip_t.py:a",
                        "--config.model.dyhead.num_layers=1"], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert res.returncode == 0, res.stderr
  lines = res.stdout.strip().splitlines()
  assert "variant=glip_t_a" in lines[0] and lines[-1].startswith("total_params=")
  rows = {l.split()[0]: int(l.split()[1].replace(",", "")) for l in lines[2:-2]}
  assert int(lines[-1].split("=")[1]) == sum(rows[k] for k in ("backbone", "fpn", "language_backbone", "head"))
  assert rows["backbone"] == OFFICIAL["glip_t_c"]["backbone"] and rows["head"] < OFFICIAL["glip_t_c"]["head"]


# ---- official checkpoint import ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fixture_weights(reference_dir):
  return load_official_checkpoint(reference_dir / "weights.npz")


def _fixture_config(reference_dir):
  from configs.model import fixture_model
  return fixture_model(json.loads((reference_dir / "config.json").read_text())["tiny_hparams"])


def _fixture_model(reference_dir):
  cfg = _fixture_config(reference_dir)
  return nnx.eval_shape(lambda: GLIP(cfg, rngs=nnx.Rngs(0)))


def test_import_export_round_trip(reference_dir, fixture_weights):
  """official fixture -> glipjax -> official, bit for bit, buffers included."""
  model, cfg = _fixture_model(reference_dir), _fixture_config(reference_dir)
  ddp = {"module." + k: v for k, v in fixture_weights.items()}  # DDP-trained checkpoints prefix `module.`
  import_official(model, ddp, cfg)
  back = export_official(model, cfg)
  assert set(back) == set(fixture_weights)
  for k, v in fixture_weights.items():
    assert back[k].dtype == v.dtype, k
    np.testing.assert_array_equal(back[k], v, err_msg=k)
  # A torch (out, in) Linear weight lands transposed.
  np.testing.assert_array_equal(np.asarray(model.head.dot_product_projection_text.kernel[...]),
                                fixture_weights["rpn.head.dot_product_projection_text.weight"].T)


def test_import_errors(reference_dir, fixture_weights):
  missing = dict(fixture_weights)
  del missing["rpn.head.bias0"]
  with pytest.raises(KeyError, match="not found"):
    import_official(_fixture_model(reference_dir), missing)
  with pytest.raises(KeyError, match="no submodule"):
    import_official(_fixture_model(reference_dir), {**fixture_weights, "rpn.head.extra.weight": np.zeros(3)})
  bad = dict(fixture_weights, **{"rpn.head.bbox_pred.weight": np.zeros((4, 64, 3, 3), np.float32)})
  with pytest.raises(ValueError, match="shape"):
    import_official(_fixture_model(reference_dir), bad)
  other_window = _fixture_config(reference_dir)
  other_window.swin.window_size += 1
  with pytest.raises(ValueError, match="relative_position_index.*window_size"):
    import_official(_fixture_model(reference_dir), fixture_weights, other_window)


def test_checkpoint_files(tmp_path, fixture_weights):
  corrupt = tmp_path / "bad.pth"
  corrupt.write_bytes(b"not a checkpoint")
  with pytest.raises(ValueError, match="corrupt"):
    load_official_checkpoint(corrupt)
  (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 truncated")
  with pytest.raises(ValueError, match="corrupt"):
    load_official_checkpoint(tmp_path / "bad.npz")
  with pytest.raises(FileNotFoundError):
    load_official_checkpoint(tmp_path / "absent.pth")
  torch = pytest.importorskip("torch")
  small = {k: v for k, v in fixture_weights.items() if k.startswith("rpn.head.") and "tower" not in k}
  ckpt = {"model": {"module." + k: torch.from_numpy(v) for k, v in small.items()},
          "model_ema": {"module." + k: torch.from_numpy(v + 1) for k, v in small.items()}, "iteration": 7}
  torch.save(ckpt, tmp_path / "ckpt.pth")
  got = load_official_checkpoint(tmp_path / "ckpt.pth")
  np.testing.assert_array_equal(got["module.rpn.head.bias0"], small["rpn.head.bias0"])
  ema = load_official_checkpoint(tmp_path / "ckpt.pth", use_ema=True)
  np.testing.assert_array_equal(ema["module.rpn.head.bias0"], small["rpn.head.bias0"] + 1)
  torch.save({"model": ckpt["model"]}, tmp_path / "no_ema.pth")
  with pytest.raises(KeyError, match="model_ema"):
    load_official_checkpoint(tmp_path / "no_ema.pth", use_ema=True)


def test_initial_distributions_are_the_official_ones(reference_dir):
  """Training from scratch starts where the official model starts: every tensor of a freshly initialised glipjax
  model is drawn from the distribution of the official fixture's (its random init, seed 1234, same shapes) —
  PyTorch's defaults in Swin, the tower BERT layers, DyReLU, the text projection and the DCN offset convs;
  U(+-1/sqrt(fan_in)) DCN weights; kaiming-uniform(a=1) FPN; N(0, 0.02) BERT; xavier fusion; N(0, 0.01) head.
  Constant tensors (norms, biases set to 0, layer scales, the prior bias) must be equal; random ones pass a
  two-sample Kolmogorov-Smirnov test (which tells uniform from normal and a wrong scale)."""
  import scipy.stats
  cfg = _fixture_config(reference_dir)
  ours = export_official(GLIP(cfg, rngs=nnx.Rngs(0)), cfg)
  official = np.load(reference_dir / "weights.npz")
  mismatched = []
  for key in official.files:
    a, b = ours[key].astype(np.float64).ravel(), official[key].astype(np.float64).ravel()
    if np.all(b == b[0]):
      if not np.array_equal(a, b):
        mismatched.append(f"{key}: expected constant {b[0]}")
    elif (p := scipy.stats.ks_2samp(a, b).pvalue) < 1e-3:
      mismatched.append(f"{key}: KS p={p:.1e}, std {a.std():.3g} vs official {b.std():.3g}")
  assert not mismatched, "\n".join(mismatched)
