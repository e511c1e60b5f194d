"""Efficiency features: scanned (stacked) BERT layers and Swin blocks keep HF / official parity and the torch
state-dict layout, rematerialisation leaves gradients unchanged, activation sharding constraints sit where the
logical names say (and vanish outside an `activation_rules` context), and bfloat16 compute runs end to end."""
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AxisType, Mesh

import glipjax  # noqa: F401
from configs.model import fixture_model
from glipjax import sharding
from glipjax.interop import hf
from glipjax.interop.official import IGNORE, export_official, import_official
from glipjax.interop.torch_layout import load_torch_state, torch_state_from_module
from glipjax.models import layers as L
from glipjax.models.bert import BertModel
from glipjax.models.dyhead import DyHeadTower
from glipjax.models.glip import GLIP
from glipjax.models.swin import SwinTransformer
from glipjax.ops import anchors as anchor_ops
from glipjax.ops.losses import glip_loss
from glipjax.tools.parity import fixture_batch


def _bert_cfg(layers=3):
  return hf.bert_config_from_hf(dict(vocab_size=120, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=32, type_vocab_size=2,
                                     layer_norm_eps=1e-12, hidden_dropout_prob=0.1,
                                     attention_probs_dropout_prob=0.1))


def _ids(b=2, t=10):
  rng = np.random.default_rng(0)
  mask = np.ones((b, t), np.int32)
  mask[1, 6:] = 0
  return jnp.asarray(rng.integers(5, 120, (b, t))), jnp.asarray(mask)


def test_scanned_bert_matches_hf_and_keeps_the_state_dict_layout():
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  torch.manual_seed(0)
  ref = transformers.BertModel(transformers.BertConfig(
      vocab_size=120, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
      max_position_embeddings=32), add_pooling_layer=False).eval()
  state = {k: v.numpy() for k, v in ref.state_dict().items()}
  ours = BertModel(_bert_cfg(), scan=True, rngs=nnx.Rngs(params=0, dropout=1))
  kernel = ours.encoder.layer.layers.attention.self.query.kernel
  assert kernel.shape == (3, 32, 32) and kernel.get_metadata()["out_sharding"] == ("layers", "embed", "heads")
  hf.load_bert_state(ours, state)
  back = torch_state_from_module(ours)
  assert set(back) == set(state) - {"embeddings.position_ids"}
  for k, v in back.items():
    np.testing.assert_array_equal(v, state[k], err_msg=k)
  ids, mask = _ids()
  with torch.no_grad():
    expected = ref(torch.tensor(np.asarray(ids)), attention_mask=torch.tensor(np.asarray(mask))).last_hidden_state
  np.testing.assert_allclose(np.asarray(jax.jit(lambda i, m: ours(i, m))(ids, mask)), expected.numpy(), atol=2e-5)
  # Dropout inside the scan: each layer its own stream, seeded by reseed (stacked keys need `match_shape`).
  run = nnx.jit(lambda m, i, a: m(i, a, deterministic=False))
  nnx.reseed(ours, dropout=3, policy="match_shape")
  a = run(ours, ids, mask)
  nnx.reseed(ours, dropout=3, policy="match_shape")
  np.testing.assert_array_equal(a, run(ours, ids, mask))
  assert float(jnp.abs(a - run(ours, ids, mask)).max()) > 1e-2  # the streams advanced


def test_scanned_swin_matches_hf_on_odd_depths_and_sizes():
  """Depth 3: one scanned (unshifted, shifted) pair + a trailing unshifted block; 45 x 70 pads every window."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  torch.manual_seed(0)
  ref = transformers.SwinBackbone(transformers.SwinConfig(
      patch_size=4, embed_dim=16, depths=[1, 3, 2, 1], num_heads=[1, 2, 2, 4], window_size=7,
      out_features=["stage1", "stage2", "stage3", "stage4"])).eval()
  with torch.no_grad():  # random (non-zero) bias tables and norms, so every term is exercised
    for name, p in ref.named_parameters():
      if "relative_position_bias_table" in name or "norm" in name:
        p.add_(torch.randn_like(p) * 0.5)
  state = hf.swin_state_from_hf({k: v.numpy() for k, v in ref.state_dict().items()
                                 if "hidden_states_norms.stage1." not in k})
  cfg = fixture_model(dict(_FIXTURE_HP)).swin
  cfg.update(embed_dim=16, depths=(1, 3, 2, 1), num_heads=(1, 2, 2, 4))
  ours = SwinTransformer(cfg, scan=True, rngs=nnx.Rngs(0))
  load_torch_state(ours, state)
  assert ours.layers[1].blocks.length == 3
  back = torch_state_from_module(ours)
  assert set(back) == set(state)
  for k, v in back.items():
    np.testing.assert_array_equal(v, state[k], err_msg=k)
  images = np.random.default_rng(0).normal(size=(2, 3, 45, 70)).astype(np.float32)
  with torch.no_grad():
    out = ref(torch.tensor(images), output_hidden_states=True)
  got = jax.jit(lambda x: ours(x))(jnp.asarray(images.transpose(0, 2, 3, 1)))
  expected = [out.hidden_states[1].numpy().transpose(0, 2, 3, 1)]  # stage 1 before downsampling, NCHW
  expected += [f.numpy().transpose(0, 2, 3, 1) for f in out.feature_maps[1:]]
  for i, (g, e) in enumerate(zip(got, expected)):
    np.testing.assert_allclose(np.asarray(g), e, atol=3e-5, err_msg=f"stage{i + 2}")


_FIXTURE_HP = dict(swin_embed_dim=24, swin_depths=[1, 1, 2, 1], swin_num_heads=[1, 2, 4, 8], swin_window_size=7,
                   swin_mlp_ratio=4, channels=64, dyhead_num_convs=2, gn_groups=16, max_query_len=16,
                   bert=dict(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                             intermediate_size=128, max_position_embeddings=512, type_vocab_size=2,
                             layer_norm_eps=1e-12))


def _fixture_cfg(reference_dir, **model):
  cfg = fixture_model(json.loads((reference_dir / "config.json").read_text())["tiny_hparams"])
  cfg.update(model)
  return cfg


def test_scanned_glip_imports_exports_and_matches_the_official_fixture(reference_dir):
  weights = dict(np.load(reference_dir / "weights.npz"))
  model = nnx.eval_shape(lambda: GLIP(_fixture_cfg(reference_dir, scan_layers=True), rngs=nnx.Rngs(0)))
  import_official(model, weights)
  back = export_official(model)
  expected = {k: v for k, v in weights.items() if not any(re.search(p, k) for p in IGNORE)}
  assert set(back) == set(expected)
  for k, v in expected.items():
    np.testing.assert_array_equal(back[k], v, err_msg=k)
  inputs, outputs = np.load(reference_dir / "inputs.npz"), np.load(reference_dir / "outputs.npz")
  stages = jax.jit(lambda x: model.backbone(x))(jnp.asarray(inputs["images"].transpose(0, 2, 3, 1)))
  for i, s in enumerate(stages):
    np.testing.assert_allclose(np.asarray(s), outputs[f"backbone_stage{i + 2}"].transpose(0, 2, 3, 1), atol=1e-4)
  lang = jax.jit(lambda i, m: model.encode_text(i, m))(inputs["input_ids"], inputs["attention_mask"])
  np.testing.assert_allclose(np.asarray(lang), outputs["lang_hidden"], atol=1e-5)
  # The DyHead tower runs as one scanned [VLFuse, BERT layer, DyConv] repeat; the head outputs still match.
  assert model.head.dyhead_tower.dyhead_tower.layers[2].offset.kernel.shape[0] == 2
  out = jax.jit(lambda x, i, m: model(x, i, m))(jnp.asarray(inputs["images"].transpose(0, 2, 3, 1)),
                                                 inputs["input_ids"], inputs["attention_mask"])
  levels = range(len(model.head.scales))
  logits = np.concatenate([outputs[f"dot_product_logits_l{l}"] for l in levels], axis=1)
  np.testing.assert_allclose(np.asarray(out["dot_product_logits"]), logits, atol=1e-4 * np.abs(logits).max())
  ctr = np.concatenate([outputs[f"centerness_l{l}"].reshape(len(logits), -1) for l in levels], axis=1)
  np.testing.assert_allclose(np.asarray(out["centerness"]), ctr, atol=1e-4)
  with pytest.raises(ValueError, match="scan_layers=False"):
    jax.eval_shape(lambda x, i, m: model(x, i, m, capture=True), jnp.asarray(inputs["images"].transpose(0, 2, 3, 1)),
                   inputs["input_ids"], inputs["attention_mask"])


def _grads(module, loss):
  graphdef, params, rest = nnx.split(module, nnx.Param, ...)
  return jax.jit(jax.grad(lambda p: loss(nnx.merge(graphdef, p, rest))))(params)


def _close(a, b):
  """Gradients equal up to float32 reordering: max error 1e-5 of each tensor's largest entry, plus 1e-6 of the
  largest gradient of the model for tensors whose true gradient is zero and whose computed one is rounding noise
  (attention key biases under the softmax, conv biases before a GroupNorm)."""
  scale = max(float(np.abs(np.asarray(y)).max()) for y in jax.tree.leaves(b))
  def one(x, y):
    assert np.abs(np.asarray(x) - np.asarray(y)).max() <= 1e-5 * np.abs(np.asarray(y)).max() + 1e-6 * scale
  jax.tree.map(one, a, b)


def test_remat_leaves_bert_gradients_unchanged():
  """Same weights: plain, scanned + full remat, plain + dots_saveable (recomputation reorders float sums only)."""
  ids, mask = _ids()
  plain = BertModel(_bert_cfg(), rngs=nnx.Rngs(0))
  state = torch_state_from_module(plain)
  loss = lambda m: jnp.sum(jnp.sin(m(ids, mask)))
  grads = torch_state_from_module(nnx.merge(nnx.graphdef(plain), _grads(plain, loss), nnx.state(plain, nnx.Not(nnx.Param))))
  for scan, policy in ((True, "full"), (False, "dots_saveable")):
    model = BertModel(_bert_cfg(), scan=scan, remat=policy, rngs=nnx.Rngs(1))
    load_torch_state(model, state)
    g = _grads(model, loss)
    _close(torch_state_from_module(nnx.merge(nnx.graphdef(model), g, nnx.state(model, nnx.Not(nnx.Param)))), grads)
  with pytest.raises(ValueError, match="model.remat"):
    BertModel(_bert_cfg(), remat="sometimes", rngs=nnx.Rngs(0))


def _tiny_tower_case(num_layers):
  """A 16-channel DyHead tower config over two levels, and a loss of its outputs for given weights."""
  cfg = fixture_model(dict(_FIXTURE_HP))
  cfg.dyhead.update(num_layers=num_layers, channels=16, group_norm_groups=4, fusion_embed_dim=16, fusion_heads=2)
  cfg.language.update(hidden_size=16, num_heads=2, intermediate_size=32)
  rng = np.random.default_rng(0)
  visual = [jnp.asarray(rng.normal(size=(1, s, s, 16)), jnp.float32) for s in (4, 2)]
  lang, mask = jnp.asarray(rng.normal(size=(1, 5, 16)), jnp.float32), jnp.asarray([[1, 1, 1, 0, 0]])
  return cfg, lambda m: sum(jnp.sum(jnp.sin(o)) for o in jax.tree.leaves(m(visual, lang, mask)))


@pytest.mark.slow  # deformable-conv gradient compiles (194 s at load ~12); the BERT test covers remat_call + scan
def test_remat_leaves_tower_gradients_unchanged():
  """VLFuse, tower BERT layer and DyConv each rematerialised."""
  cfg, loss = _tiny_tower_case(num_layers=1)
  grads = {}
  for policy in ("none", "full"):
    cfg.update(remat=policy)
    grads[policy] = _grads(DyHeadTower(cfg, rngs=nnx.Rngs(0)), loss)
  _close(grads["full"], grads["none"])


@pytest.mark.slow  # ~50 s: two tower gradients, one through the interpreted Pallas kernels
def test_scanned_rematerialised_tower_has_the_same_gradients_with_the_pallas_dcn():
  """The Pallas DCN's custom VJP inside lax.scan and jax.checkpoint: the tower's gradients equal the XLA DCN's."""
  cfg, loss = _tiny_tower_case(num_layers=2)
  cfg.update(scan_layers=True, remat="full")
  grads = {}
  for impl in ("xla", "pallas"):
    cfg.dyhead.dcn_impl = impl
    grads[impl] = _grads(DyHeadTower(cfg, rngs=nnx.Rngs(0)), loss)
  _close(grads["pallas"], grads["xla"])


def test_activation_constraints_only_under_rules():
  model = BertModel(_bert_cfg(2), rngs=nnx.Rngs(0))
  ids, mask = _ids()
  count = lambda: str(jax.make_jaxpr(lambda i, m: model(i, m))(ids, mask)).count("sharding_constraint")
  assert count() == 0
  mesh = Mesh(np.asarray(jax.devices()[:1]), ("data",), axis_types=(AxisType.Auto,))
  with jax.set_mesh(mesh), sharding.activation_rules([("batch", "data")]):
    assert count() == 1 + 2 * 2  # embeddings, then attention and output of each layer


def test_bfloat16_forward_and_loss_are_close_to_float32(reference_dir):
  """bfloat16 compute, float32 master weights, against the official float32 outputs and losses of the fixture."""
  weights = dict(np.load(reference_dir / "weights.npz"))
  inputs, outputs = np.load(reference_dir / "inputs.npz"), np.load(reference_dir / "outputs.npz")
  loss_npz = np.load(reference_dir / "loss.npz")
  images = jnp.asarray(inputs["images"].transpose(0, 2, 3, 1))
  batch = fixture_batch(loss_npz, inputs["input_ids"], inputs["attention_mask"])
  cfg = _fixture_cfg(reference_dir, dtype="bfloat16", scan_layers=True)
  shapes = anchor_ops.level_shapes(images.shape[1:3], cfg.anchors.strides)
  anchors = anchor_ops.generate_anchors(shapes, cfg.anchors.strides, cfg.anchors.sizes)
  model = nnx.eval_shape(lambda: GLIP(cfg, rngs=nnx.Rngs(0)))
  import_official(model, weights)
  assert model.backbone.patch_embed.proj.kernel.dtype == jnp.float32  # float32 master weights

  def forward(images, ids, mask):
    out = model(images, ids, mask)
    return out, glip_loss(out, batch, anchors, anchor_ops.level_counts(shapes))[1]
  out, losses = jax.jit(forward)(images, inputs["input_ids"], inputs["attention_mask"])
  for k in ("dot_product_logits", "box_regression", "centerness"):
    assert out[k].dtype == jnp.float32 and np.isfinite(np.asarray(out[k])).all(), k
  n = 0
  for lvl in range(len(shapes)):
    expected = outputs[f"dot_product_logits_l{lvl}"]
    got = np.asarray(out["dot_product_logits"][:, n:n + expected.shape[1]])
    n += expected.shape[1]
    assert np.abs(got - expected).max() < 0.05 * np.abs(expected).max(), lvl
  for k in ("loss_reg", "loss_centerness", "loss_dot_product_token"):
    assert abs(float(losses[k]) - float(loss_npz[k])) <= 0.02 * abs(float(loss_npz[k])), k


def test_conv3x3_as_matmul_equals_the_conv_in_values_and_gradients():
  conv = L.Conv(6, 27, 3, padding=((1, 1), (1, 1)), bias_init=nnx.initializers.normal(1.0), rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(conv)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 7, 5, 6))
  loss = lambda apply: lambda state, x: jnp.sum(jnp.sin(apply(nnx.merge(graphdef, state), x)))
  direct, as_matmul = loss(lambda m, x: m(x)), loss(L.conv3x3_as_matmul)
  np.testing.assert_allclose(as_matmul(state, x), direct(state, x), rtol=1e-5)
  grads = [jax.grad(f, argnums=(0, 1))(state, x) for f in (direct, as_matmul)]
  for a, b in zip(*map(jax.tree.leaves, grads)):
    np.testing.assert_allclose(a, b, atol=1e-4)
  with pytest.raises(ValueError, match="3x3, stride-1, padding-1"):
    L.conv3x3_as_matmul(L.Conv(6, 4, 3, strides=2, padding=((1, 1), (1, 1)), rngs=nnx.Rngs(0)), x)


def test_folded_vl_attention_equals_the_official_order_in_values_and_gradients():
  from glipjax.models.dyhead import BiMultiHeadAttention
  attn = BiMultiHeadAttention(16, 12, 32, 4, 0.1, 50000.0, dtype=jnp.float32, param_dtype=jnp.float32,
                              rngs=nnx.Rngs(0))
  for name in ("v_proj", "l_proj", "values_v_proj", "values_l_proj", "out_v_proj", "out_l_proj"):
    lin = getattr(attn, name)  # non-zero biases, so the folded bias terms are exercised
    lin.bias[...] = jax.random.normal(jax.random.PRNGKey(len(name)), lin.bias.shape)
  graphdef, state, rest = nnx.split(attn, nnx.Param, ...)
  keys = jax.random.split(jax.random.PRNGKey(1), 2)
  v, l = jax.random.normal(keys[0], (2, 23, 16)), jax.random.normal(keys[1], (2, 5, 12))
  lang_mask = jnp.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])

  def run(state, v, l, fold):
    m = nnx.merge(graphdef, state, rest)
    m.fold_visual = fold
    return m(v, l, lang_mask, deterministic=True)
  for a, b in zip(run(state, v, l, True), run(state, v, l, False)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  loss = lambda fold: lambda s, v, l: sum(jnp.sum(jnp.sin(o)) for o in run(s, v, l, fold))
  grads = [jax.tree.leaves(jax.grad(loss(fold), argnums=(0, 1, 2))(state, v, l)) for fold in (True, False)]
  for a, b in zip(*grads):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
