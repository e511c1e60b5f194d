"""ATSS assignment (Zhang et al. 2020) on padded ground truth, as GLIP's ATSSLossComputation.prepare_targets."""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from glipjax.ops.boxes import pairwise_iou


def atss_assign(anchors: jnp.ndarray, level_counts: Sequence[int], gt_boxes: jnp.ndarray, gt_mask: jnp.ndarray,
                topk: int = 9) -> jnp.ndarray:
  """Matched GT index per anchor [A] (-1 = negative) for one image.

  Per level, the `topk` anchors with the closest centres are candidates for each GT; a candidate is positive if
  its IoU >= mean + std (unbiased) of that GT's candidate IoUs and its centre lies inside the GT (margin 0.01).
  An anchor positive for several GTs takes the one with the highest IoU. Padded GTs (mask False) never match.
  """
  num_anchors = anchors.shape[0]
  ious = pairwise_iou(anchors, gt_boxes)                                              # [A, G]
  a_ctr = (anchors[:, :2] + anchors[:, 2:]) / 2.0
  g_ctr = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2.0
  dist = jnp.sqrt(((a_ctr[:, None] - g_ctr[None]) ** 2).sum(-1))                   # [A, G]
  cands, start = [], 0
  for n in level_counts:
    k = min(topk, n)
    _, idx = jax.lax.top_k(-dist[start:start + n].T, k)                                # [G, k] nearest first
    cands.append(idx + start)
    start += n
  cand = jnp.concatenate(cands, axis=1)                                               # [G, K]
  cand_iou = jnp.take_along_axis(ious.T, cand, axis=1)
  thresh = cand_iou.mean(1) + jnp.std(cand_iou, axis=1, ddof=1)
  is_pos = cand_iou >= thresh[:, None]
  cx, cy = a_ctr[cand, 0], a_ctr[cand, 1]
  g = gt_boxes[:, None, :]
  inside = jnp.minimum(jnp.minimum(cx - g[..., 0], cy - g[..., 1]),
                       jnp.minimum(g[..., 2] - cx, g[..., 3] - cy)) > 0.01
  is_pos = is_pos & inside & gt_mask[:, None]
  # Scatter positive candidates' IoUs into an [G, A] table of -inf, then take the best GT per anchor.
  gi = jnp.broadcast_to(jnp.arange(gt_boxes.shape[0])[:, None], cand.shape)
  table = jnp.full((gt_boxes.shape[0], num_anchors), -jnp.inf, ious.dtype)
  table = table.at[gi, cand].max(jnp.where(is_pos, ious.T[gi, cand], -jnp.inf))
  best = jnp.argmax(table, axis=0)
  return jnp.where(jnp.max(table, axis=0) > -jnp.inf, best, -1)
