"""Swin backbone: equals the official GLIP body on the reference fixture and HF `transformers` SwinBackbone with the
same weights (odd image sizes, shifted windows on padded grids); stochastic depth is seeded and off in eval."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import glipjax  # noqa: F401
from configs.model import fixture_model, glip_model
from glipjax.interop import hf
from glipjax.interop.torch_layout import load_torch_state
from glipjax.models import swin
from glipjax.models.swin import SwinTransformer


def _tiny_cfg(**overrides):
  cfg = glip_model("tiny").swin
  cfg.update(embed_dim=16, depths=(1, 2, 2, 1), num_heads=(1, 2, 2, 4), out_indices=(1, 2, 3), **overrides)
  return cfg


def test_matches_official_fixture(reference_dir):
  hp = json.loads((reference_dir / "config.json").read_text())["tiny_hparams"]
  model = SwinTransformer(fixture_model(hp).swin, rngs=nnx.Rngs(0))
  load_torch_state(model, np.load(reference_dir / "weights.npz"), prefix="backbone.body.",
                   ignore=(r"relative_position_index$",))
  images = np.load(reference_dir / "inputs.npz")["images"].transpose(0, 2, 3, 1)
  expected = np.load(reference_dir / "outputs.npz")
  got = jax.jit(lambda x: model(x))(jnp.asarray(images))
  for i, g in enumerate(got):
    e = expected[f"backbone_stage{i + 2}"].transpose(0, 2, 3, 1)
    assert g.shape == e.shape
    np.testing.assert_allclose(np.asarray(g), e, atol=1e-4, rtol=1e-4, err_msg=f"stage{i + 2}")


def test_matches_hf_swin_backbone_on_odd_image_size():
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  torch.manual_seed(0)
  cfg = transformers.SwinConfig(patch_size=4, embed_dim=16, depths=[1, 2, 2, 1], num_heads=[1, 2, 2, 4],
                                window_size=7, out_features=["stage1", "stage2", "stage3", "stage4"])
  ref = transformers.SwinBackbone(cfg).eval()
  with torch.no_grad():  # random (non-zero) bias tables and norms, so every term is exercised
    for name, p in ref.named_parameters():
      if "relative_position_bias_table" in name or "norm" in name:
        p.add_(torch.randn_like(p) * 0.5)
  # HF normalises every out_feature; the official body's stage 2 has none (norm0 = Identity): drop it.
  state = {k: v.numpy() for k, v in ref.state_dict().items() if "hidden_states_norms.stage1." not in k}
  ours = SwinTransformer(_tiny_cfg(), rngs=nnx.Rngs(0))
  load_torch_state(ours, hf.swin_state_from_hf(state))
  # 101 x 93: not multiples of 4; stages 26x24, 13x12, 7x6, 4x3 -> window padding, odd PatchMerging, and a
  # shifted block on a grid smaller than a window (SwinBackbone partitions anyway, as the official code does).
  images = np.random.default_rng(0).normal(size=(2, 3, 101, 93)).astype(np.float32)
  with torch.no_grad():
    out = ref(torch.tensor(images), output_hidden_states=True)
  got = ours(jnp.asarray(images.transpose(0, 2, 3, 1)))
  # stage 2 un-normalised: HF's hidden state of stage 1 before downsampling (index 0 is the embedding), NCHW.
  expected = [out.hidden_states[1].numpy().transpose(0, 2, 3, 1)]
  expected += [f.numpy().transpose(0, 2, 3, 1) for f in out.feature_maps[1:]]
  for i, (g, e) in enumerate(zip(got, expected)):
    np.testing.assert_allclose(np.asarray(g), e, atol=3e-5, err_msg=f"stage{i + 2}")


def test_shift_mask_and_relative_index_are_the_official_constants():
  idx = swin.relative_position_index(3)
  assert idx.shape == (9, 9) and idx[0, 0] == 12 and idx[0, 8] == 0 and idx[8, 0] == 24
  mask = swin._shift_mask(6, 6, 3, 1)
  assert mask.shape == (4, 9, 9)
  assert not mask[0].any()  # the top-left window holds one region only
  assert set(np.unique(mask[3])) == {0.0, -100.0}


def test_drop_path_is_seeded_and_off_when_deterministic():
  model = SwinTransformer(_tiny_cfg(drop_path_rate=0.5), rngs=nnx.Rngs(params=0, dropout=1))
  x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 36, 28, 3)), jnp.float32)
  run = nnx.jit(lambda m, x, deterministic: m(x, deterministic=deterministic)[-1], static_argnums=2)
  eval_a, eval_b = model(x)[-1], run(model, x, True)
  np.testing.assert_allclose(eval_a, eval_b, atol=2e-5)  # eager vs jit rounding
  nnx.reseed(model, dropout=7)
  train_a = run(model, x, False)
  nnx.reseed(model, dropout=7)
  train_b = run(model, x, False)
  np.testing.assert_array_equal(train_a, train_b)
  assert float(jnp.abs(train_a - eval_a).max()) > 1e-3
  assert np.isfinite(np.asarray(train_a)).all()


def test_rates_increase_linearly_to_drop_path_rate():
  model = SwinTransformer(_tiny_cfg(drop_path_rate=0.3), rngs=nnx.Rngs(0))
  rates = [b.drop_path_rate for layer in model.layers for b in layer.blocks]
  np.testing.assert_allclose(rates, np.linspace(0, 0.3, 6))


def test_any_image_size_gives_ceil_strides_and_gradients():
  model = SwinTransformer(_tiny_cfg(), rngs=nnx.Rngs(0))
  x = jnp.ones((1, 45, 70, 3))
  shapes = [o.shape for o in model(x)]
  assert shapes == [(1, 12, 18, 16), (1, 6, 9, 32), (1, 3, 5, 64), (1, 2, 3, 128)]
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  grads = jax.jit(jax.grad(lambda p: sum(jnp.mean(o ** 2) for o in nnx.merge(graphdef, p, rest)(x))))(params)
  norms = [float(jnp.linalg.norm(g)) for g in jax.tree.leaves(grads)]
  assert all(np.isfinite(norms)) and sum(n > 0 for n in norms) == len(norms)
