"""The alignment-loss family against hand-computed cases, the heads that feed them, and negative captions."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import model as model_lib
from glipjax.data import prompting
from glipjax.data import synthetic
from glipjax.models.glip import GLIP
from glipjax.ops import losses


def test_contrastive_align_loss_matches_the_hand_computed_value():
  # One image, 3 anchors, 4 tokens of which the last is padding (its huge logit must not count).
  logits = jnp.array([[[1.0, 0.0, 3.0, 9.0], [0.0, 2.0, 1.0, 9.0], [0.5, 0.5, 0.5, 9.0]]])
  positive = jnp.zeros((1, 3, 4)).at[0, 0, 0].set(1).at[0, 0, 1].set(1).at[0, 1, 1].set(1)  # anchor 2: negative
  mask = jnp.array([[1, 1, 1, 0]])
  lse = lambda *xs: math.log(sum(math.exp(x) for x in xs))
  box_to_token = (-(1.0 + 0.0) / 2 + lse(1, 0, 3)) + (-2.0 + lse(0, 2, 1))
  token_to_box = (-1.0 + lse(1, 0, 0.5)) + (-(0.0 + 2.0) / 2 + lse(0, 2, 0.5))   # tokens 0 and 1; token 2 has none
  expected = (box_to_token + token_to_box) / 2 / 2.0                              # 2 positive anchors
  got = losses.contrastive_align_loss(logits, positive, mask, jnp.float32(2.0))
  assert float(got) == pytest.approx(expected, rel=1e-6)


def test_image_text_contrastive_loss_matches_the_hand_computed_value_and_shares_repeated_prompts():
  image = jnp.array([[2.0, 0.0], [0.0, 3.0]])
  text = jnp.array([[1.0, 0.0], [1.0, 1.0]])
  ids = jnp.array([[5, 6], [7, 8]])
  c = 1 / math.sqrt(2)
  logits = np.array([[1.0, c], [0.0, c]]) / 0.5   # cosine(image i, text j) / temperature
  ce = lambda row, i: -(row[i] - math.log(sum(math.exp(v) for v in row)))
  i2t = (ce(logits[0], 0) + ce(logits[1], 1)) / 2
  t2i = (ce(logits[:, 0], 0) + ce(logits[:, 1], 1)) / 2
  got = losses.image_text_contrastive_loss(image, text, ids, 0.5)
  assert float(got) == pytest.approx((i2t + t2i) / 2, rel=1e-6)
  # The same prompt twice: each image has both texts as positives (half the target mass each).
  same = jnp.array([[5, 6], [5, 6]])
  soft = lambda row: -0.5 * sum(row[j] - math.log(sum(math.exp(v) for v in row)) for j in range(2))
  expected = (soft(logits[0]) + soft(logits[1]) + soft(logits[:, 0]) + soft(logits[:, 1])) / 4
  assert float(losses.image_text_contrastive_loss(image, text, same, 0.5)) == pytest.approx(expected, rel=1e-6)


def _tiny(alignment):
  m = model_lib.glip_model("tiny")
  m.head.alignment = alignment
  m.dyhead.fusion = False
  return GLIP(m, rngs=nnx.Rngs(0))


def test_heads_give_contrastive_logits_and_pooled_embeddings():
  images, ids, mask = jnp.zeros((2, 64, 64, 3)), jnp.ones((2, 8), jnp.int32), jnp.ones((2, 8), jnp.int32)
  both = _tiny("both")(images, ids, mask, pooled=True)
  a = both["dot_product_logits"].shape[1]
  assert both["contrastive_logits"].shape == (2, a, 8)
  assert both["image_embedding"].shape == both["text_embedding"].shape == (2, 64)
  # cosines over the initial temperature 0.07
  assert float(jnp.abs(both["contrastive_logits"]).max()) <= 1 / math.exp(-2.659) + 1e-3
  assert not np.allclose(both["dot_product_logits"], both["contrastive_logits"])
  alone = _tiny("contrastive")(images, ids, mask)
  np.testing.assert_array_equal(alone["dot_product_logits"], alone["contrastive_logits"])  # what scores detections
  assert "image_embedding" not in alone
  assert not hasattr(_tiny("dot_product").head, "contrastive_align_projection_text")  # GLIP's default: no extra head
  with pytest.raises(ValueError, match="model.head.alignment"):
    _tiny("cosine")


def test_glip_loss_terms_follow_the_options():
  rng = np.random.default_rng(0)
  b, t = 2, 6
  anchors = jnp.array([[x, y, x + 16, y + 16] for y in range(0, 64, 8) for x in range(0, 64, 8)], jnp.float32)
  batch = dict(boxes=jnp.array([[[8, 8, 30, 30], [0, 0, 1, 1]], [[20, 24, 50, 60], [0, 0, 1, 1]]], jnp.float32),
               box_mask=jnp.array([[True, False], [True, False]]),
               positive_map=jnp.zeros((b, 2, t)).at[:, 0, 1].set(1.0),
               attention_mask=jnp.array([[1, 1, 1, 0, 0, 0]] * b), input_ids=jnp.arange(b * t).reshape(b, t))
  a = anchors.shape[0]
  outputs = dict(dot_product_logits=jnp.asarray(rng.normal(size=(b, a, t)), jnp.float32),
                 box_regression=jnp.zeros((b, a, 4)), centerness=jnp.zeros((b, a)),
                 contrastive_logits=jnp.asarray(rng.normal(size=(b, a, t)), jnp.float32),
                 image_embedding=jnp.asarray(rng.normal(size=(b, 4)), jnp.float32),
                 text_embedding=jnp.asarray(rng.normal(size=(b, 4)), jnp.float32))
  plain = {k: outputs[k] for k in ("dot_product_logits", "box_regression", "centerness")}
  total, m = losses.glip_loss(plain, batch, anchors, [a])
  assert set(m) == {"loss_dot_product_token", "loss_reg", "loss_centerness", "num_pos"}
  assert float(total) == pytest.approx(float(m["loss_dot_product_token"] + m["loss_reg"] + m["loss_centerness"]))
  total, m = losses.glip_loss(outputs, batch, anchors, [a], token_loss=False, contrastive_align_weight=0.5,
                              image_text_weight=0.25)
  assert "loss_dot_product_token" not in m
  assert float(total) == pytest.approx(float(0.5 * m["loss_contrastive_align"] + 0.25 * m["loss_image_text"] +
                                             m["loss_reg"] + m["loss_centerness"]), rel=1e-6)
  assert all(np.isfinite(float(v)) for v in m.values())


def test_captions_get_negative_phrases_naming_absent_categories():
  names = synthetic.category_names()
  caption = "red circle. blue squares."
  record = dict(caption=caption, phrase_spans=np.array([[0, 10], [12, 24]]), box_phrase=np.array([0, 1, 1]),
                labels=np.array([1, 8, 8]))   # red circle, blue square x2
  for seed in range(20):
    p = prompting.caption_with_negatives(record, names, np.random.default_rng(seed), max_negatives=3)
    assert p.caption.startswith(caption + " ")
    phrases = [p.caption[b:e] for b, e in p.spans]
    assert phrases[:2] == ["red circle", "blue squares"]
    assert 1 <= len(phrases) - 2 <= 3
    assert all(n in names and n not in ("red circle", "blue square") for n in phrases[2:])
    np.testing.assert_array_equal(p.box_phrase, [0, 1, 1])   # the negatives ground no box
    assert list(p.span_phrase) == list(range(len(phrases)))
  capped = prompting.caption_with_negatives(record, names, np.random.default_rng(0), max_negatives=3, max_phrases=3)
  assert len(capped.spans) == 3
  prompter = prompting.TrainPrompter(names, detection_prob=0.0, max_negatives=5, caption_negatives=2)
  assert prompter(record, np.random.default_rng(1)).caption != caption
