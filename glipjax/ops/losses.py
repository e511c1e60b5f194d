"""GLIP's ATSS training losses: token-level sigmoid focal loss on the grounding logits, GIoU weighted by
centerness targets, and centerness BCE (fixture README §4.9).

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


def glip_loss(outputs: Mapping[str, jnp.ndarray], batch: Mapping[str, jnp.ndarray], anchors,
              level_counts: Sequence[int], *, focal_alpha: float = 0.25, focal_gamma: float = 2.0,
              reg_loss_weight: float = 2.0):
  """Returns (total_loss, metrics). `outputs` from GLIP; `batch` needs boxes [B,G,4], box_mask [B,G],
  positive_map [B,G,T] and attention_mask [B,T]."""
  anchors = jnp.asarray(anchors)
  tg = jax.tree.map(jax.lax.stop_gradient, atss_targets(anchors, level_counts, batch))
  pos = tg["positive"]
  num_pos = pos.sum()
  norm = jnp.maximum(num_pos.astype(jnp.float32), 1.0)

  text_mask = (batch["attention_mask"] > 0)[:, None, :]
  focal = sigmoid_focal_loss(outputs["dot_product_logits"], tg["token_targets"], focal_alpha, focal_gamma)
  loss_token = jnp.where(text_mask, focal, 0.0).sum() / norm

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
  return total, dict(loss_dot_product_token=loss_token, loss_reg=loss_reg, loss_centerness=loss_ctr,
                     num_pos=num_pos)
