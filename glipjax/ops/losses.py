"""GLIP's ATSS training losses: token-level sigmoid focal loss on the grounding logits, GIoU weighted by
centerness targets, and centerness BCE (fixture README §4.9); optionally MDETR's contrastive alignment loss and
a CLIP-style image-text contrastive loss on pooled features.

Normalisers: under `jax.jit` the batch arrays are *global* arrays, so every sum here runs over the whole mesh.
That is exactly the official cross-device normalisation (losses summed per GPU and divided by the positives
averaged over GPUs, then gradients averaged by DDP, equals global sum / global positives).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp

from glipjax.ops import boxes as box_ops
from glipjax.ops.atss import atss_assign


def atss_targets(anchors, level_counts, batch):
  """Per-anchor targets for a batch: matched index [B,A], positives [B,A], token targets [B,A,T], box targets
  (encoded deltas) [B,A,4]. Negatives get the [NoObj] token target: a one-hot at the last position T-1."""
  anchors = jnp.asarray(anchors)
  match = jax.vmap(lambda g, m: atss_assign(anchors, level_counts, g, m))(batch["boxes"], batch["box_mask"])
  pos = match >= 0
  idx = jnp.maximum(match, 0)
  t = batch["positive_map"].shape[-1]
  no_obj = jax.nn.one_hot(t - 1, t, dtype=batch["positive_map"].dtype)
  tokens = jnp.take_along_axis(batch["positive_map"], idx[..., None], axis=1)
  tokens = jnp.where(pos[..., None], tokens, no_obj)
  gt = jnp.take_along_axis(batch["boxes"], idx[..., None], axis=1)
  # Official negatives are encoded against GT 0 as well; padded GTs would give log(0), so fall back to the anchor.
  gt_ok = jnp.take_along_axis(batch["box_mask"], idx, axis=1)
  gt = jnp.where(gt_ok[..., None], gt, anchors[None])
  return dict(match=match, positive=pos, token_targets=tokens, box_targets=box_ops.encode(gt, anchors[None]))


def centerness_targets(gt_xyxy: jnp.ndarray, anchors: jnp.ndarray) -> jnp.ndarray:
  cx, cy = (anchors[..., 0] + anchors[..., 2]) / 2, (anchors[..., 1] + anchors[..., 3]) / 2
  l, t = cx - gt_xyxy[..., 0], cy - gt_xyxy[..., 1]
  r, b = gt_xyxy[..., 2] - cx, gt_xyxy[..., 3] - cy
  lr = jnp.minimum(l, r) / jnp.maximum(jnp.maximum(l, r), 1e-12)
  tb = jnp.minimum(t, b) / jnp.maximum(jnp.maximum(t, b), 1e-12)
  return jnp.sqrt(jnp.clip(lr * tb, 0.0, None))  # clip: only positives (centre inside the box) are used


def sigmoid_focal_loss(logits, targets, alpha: float, gamma: float):
  p = jax.nn.sigmoid(logits)
  ce = jnp.maximum(logits, 0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))
  p_t = p * targets + (1 - p) * (1 - targets)
  return (alpha * targets + (1 - alpha) * (1 - targets)) * ce * (1 - p_t) ** gamma


_NEG = -1e9  # a masked logit: exp() underflows to 0 in float32


def contrastive_align_loss(logits, positive_map, text_mask, num_pos):
  """MDETR's contrastive alignment loss (GLIP's USE_CONTRASTIVE_ALIGN_LOSS). `logits` [B,A,T] (region-token
  cosines over the temperature), `positive_map` [B,A,T] (an anchor's tokens; all zero for negative anchors),
  `text_mask` [B,T]. Region->token: each anchor with positives, -mean of its positive logits + logsumexp over the
  prompt's tokens; token->region: each token with positives, -mean over its positive anchors + logsumexp over the
  image's anchors. Their mean, summed and divided by the positives (MDETR's num_boxes)."""
  valid = text_mask[:, None, :] > 0
  logits = jnp.where(valid, logits, _NEG)
  positive = (positive_map > 0) & valid
  pos_logits = jnp.where(positive, logits, 0.0)

  def one_way(axis):
    has_pos = positive.any(axis)
    term = -pos_logits.sum(axis) / jnp.maximum(positive.sum(axis), 1) + jax.nn.logsumexp(logits, axis)
    return jnp.where(has_pos, term, 0.0).sum()

  return (one_way(2) + one_way(1)) / 2 / jnp.maximum(num_pos, 1.0)


def image_text_contrastive_loss(image_embedding, text_embedding, input_ids, temperature: float):
  """CLIP/ALIGN-style symmetric InfoNCE between pooled image and prompt embeddings [B,C] over the batch. Rows
  with the same prompt (equal `input_ids`) are all positives of each other, so that a repeated prompt ('red
  circle.') is not pushed away from its own image's twin."""
  normalize = lambda x: x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
  logits = normalize(image_embedding) @ normalize(text_embedding).T / temperature            # [B images, B texts]
  same = (input_ids[:, None, :] == input_ids[None, :, :]).all(-1)
  targets = same / same.sum(1, keepdims=True)
  i2t = -(targets * jax.nn.log_softmax(logits, 1)).sum(1).mean()
  t2i = -(targets * jax.nn.log_softmax(logits.T, 1)).sum(1).mean()
  return (i2t + t2i) / 2


def glip_loss(outputs: Mapping[str, jnp.ndarray], batch: Mapping[str, jnp.ndarray], anchors,
              level_counts: Sequence[int], *, focal_alpha: float = 0.25, focal_gamma: float = 2.0,
              reg_loss_weight: float = 2.0, token_loss: bool = True, contrastive_align_weight: float = 1.0,
              image_text_weight: float = 0.0, image_text_temperature: float = 0.07):
  """Returns (total_loss, metrics). `outputs` from GLIP; `batch` needs boxes [B,G,4], box_mask [B,G],
  positive_map [B,G,T] and attention_mask [B,T]. `token_loss`: the token sigmoid focal loss on
  `dot_product_logits` (off for a contrastive-only head); `contrastive_logits` in the outputs add the contrastive
  alignment loss x `contrastive_align_weight`; `image_embedding`/`text_embedding` the image-text contrastive
  loss x `image_text_weight` (needs `input_ids` in the batch)."""
  anchors = jnp.asarray(anchors)
  tg = jax.tree.map(jax.lax.stop_gradient, atss_targets(anchors, level_counts, batch))
  pos = tg["positive"]
  num_pos = pos.sum()
  norm = jnp.maximum(num_pos.astype(jnp.float32), 1.0)
  extra = {}

  text_mask = (batch["attention_mask"] > 0)[:, None, :]
  loss_token = 0.0
  if token_loss:
    focal = sigmoid_focal_loss(outputs["dot_product_logits"], tg["token_targets"], focal_alpha, focal_gamma)
    loss_token = jnp.where(text_mask, focal, 0.0).sum() / norm
    extra["loss_dot_product_token"] = loss_token
  if "contrastive_logits" in outputs:
    targets = jnp.where(pos[..., None], tg["token_targets"], 0.0)  # negatives: no token (no [NoObj] target)
    extra["loss_contrastive_align"] = contrastive_align_loss(outputs["contrastive_logits"], targets,
                                                             batch["attention_mask"], norm)
    loss_token = loss_token + contrastive_align_weight * extra["loss_contrastive_align"]
  if image_text_weight > 0:
    extra["loss_image_text"] = image_text_contrastive_loss(outputs["image_embedding"], outputs["text_embedding"],
                                                           batch["input_ids"], image_text_temperature)
    loss_token = loss_token + image_text_weight * extra["loss_image_text"]

  gt_xyxy = box_ops.decode(tg["box_targets"], anchors[None])
  ctr = jnp.where(pos, centerness_targets(gt_xyxy, anchors[None]), 0.0)
  pred_xyxy = box_ops.decode(outputs["box_regression"], anchors[None])
  giou = box_ops.giou_loss(pred_xyxy, gt_xyxy)
  ctr_sum = ctr.sum()
  loss_reg = jnp.where(ctr_sum > 0, (giou * ctr).sum() / jnp.maximum(ctr_sum, 1e-12), 0.0) * reg_loss_weight

  logit_c = outputs["centerness"]
  bce = jnp.maximum(logit_c, 0) - logit_c * ctr + jnp.log1p(jnp.exp(-jnp.abs(logit_c)))
  loss_ctr = jnp.where(pos, bce, 0.0).sum() / norm

  total = loss_token + loss_reg + loss_ctr
  return total, dict(extra, loss_reg=loss_reg, loss_centerness=loss_ctr, num_pos=num_pos)
