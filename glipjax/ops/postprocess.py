"""Test-time post-processing of GLIP head outputs (ATSSPostProcessor, fixture README §7), jittable.

Per image and level: label score S = mean token probability over each label's tokens; candidates S > thresh;
top-k by S * sigmoid(centerness); decode; clip; score sqrt(S * centerness). Then class-aware greedy NMS with the
CUDA `ml_nms` semantics ("+1" areas, suppress when IoU > thresh) and the per-image detection cap.
"""
from __future__ import annotations

import functools
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from glipjax.ops import boxes as box_ops


def label_scores(logits: jnp.ndarray, label_token_map: jnp.ndarray) -> jnp.ndarray:
  """[A, T] logits, [L, T] 0/1 map -> [A, L] mean probability over each label's tokens."""
  n_tok = label_token_map.sum(-1)
  return (jax.nn.sigmoid(logits) @ label_token_map.T) / jnp.maximum(n_tok, 1.0)


def nms_keep(boxes: jnp.ndarray, scores: jnp.ndarray, labels: jnp.ndarray, valid: jnp.ndarray,
             thresh: float) -> jnp.ndarray:
  """Greedy class-aware NMS over [N] candidates; returns a keep mask. Ties in score break by lower index."""
  order = jnp.lexsort((jnp.arange(scores.shape[0]), -jnp.where(valid, scores, -jnp.inf)))
  b, l, v = boxes[order], labels[order], valid[order]
  suppress = (box_ops.pairwise_iou(b, b) > thresh) & (l[:, None] == l[None, :])

  def body(i, carry):  # `suppress` rides in the carry, not the closure: jax2onnx's Loop lowering needs it so
    keep, sup = carry
    earlier_kept = keep & (jnp.arange(keep.shape[0]) < i)
    return keep.at[i].set(keep[i] & ~jnp.any(earlier_kept & sup[:, i])), sup

  keep_sorted, _ = jax.lax.fori_loop(0, b.shape[0], body, (v, suppress))
  return jnp.zeros_like(valid).at[order].set(keep_sorted)


def _candidates(logits, box_reg, ctr, anchors, counts, label_map, label_mask, hw, thresh, top_n):
  """One image: fixed-size candidate arrays over all levels (boxes, scores, labels, valid)."""
  out, start = [], 0
  for n in counts:
    sl = slice(start, start + n)
    start += n
    s = label_scores(logits[sl], label_map)                                 # [n, L]
    cand = (s > thresh) & label_mask[None, :]
    r = s * jax.nn.sigmoid(ctr[sl])[:, None]
    k = min(top_n, s.size)
    vals, idx = jax.lax.top_k(jnp.where(cand, r, -jnp.inf).reshape(-1), k)
    anchor, label = idx // s.shape[1], idx % s.shape[1]
    bx = box_ops.decode(box_reg[sl][anchor], anchors[sl][anchor])
    bx = jnp.stack([jnp.clip(bx[:, 0], 0, hw[1] - 1), jnp.clip(bx[:, 1], 0, hw[0] - 1),
                    jnp.clip(bx[:, 2], 0, hw[1] - 1), jnp.clip(bx[:, 3], 0, hw[0] - 1)], -1)
    ok = jnp.isfinite(vals)
    out.append((bx, jnp.sqrt(jnp.where(ok, vals, 0.0)), label + 1, ok))
  return [jnp.concatenate(x) for x in zip(*out)]


def postprocess_image(logits, box_reg, ctr, label_token_map, label_mask, image_hw, *, anchors,
                      level_counts: Sequence[int], pre_nms_thresh: float = 0.05, pre_nms_top_n: int = 1000,
                      nms_thresh: float = 0.6, detections_per_img: int = 100) -> dict[str, jnp.ndarray]:
  """One image's detections (`postprocess` maps it over the batch): logits [A,T], box_reg [A,4], ctr [A],
  label_token_map [L,T], label_mask [L], image_hw [2] -> boxes [K,4], scores [K], labels [K], valid [K]."""
  hw = jnp.asarray(image_hw, jnp.float32)
  bx, sc, lb, ok = _candidates(logits, box_reg, ctr, jnp.asarray(anchors), level_counts,
                               label_token_map.astype(jnp.float32), label_mask, hw, pre_nms_thresh, pre_nms_top_n)
  keep = nms_keep(bx, sc, lb, ok, nms_thresh)
  k = min(detections_per_img, sc.shape[0])
  top, idx = jax.lax.top_k(jnp.where(keep, sc, -jnp.inf), k)
  res = dict(boxes=bx[idx], scores=jnp.where(jnp.isfinite(top), top, 0.0), labels=lb[idx], valid=jnp.isfinite(top))
  pad = detections_per_img - k
  return jax.tree.map(lambda x: jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1)), res)


def postprocess(outputs: Mapping[str, jnp.ndarray], anchors, level_counts: Sequence[int],
                label_token_map: jnp.ndarray, label_mask: jnp.ndarray, image_hw: jnp.ndarray, *,
                pre_nms_thresh: float = 0.05, pre_nms_top_n: int = 1000, nms_thresh: float = 0.6,
                detections_per_img: int = 100) -> dict[str, jnp.ndarray]:
  """Detections per image: boxes [B,K,4] (xyxy, network-input pixels), scores [B,K], labels [B,K] (1-based rows of
  `label_token_map`), valid [B,K]; sorted by score. `label_token_map` is [L,T] (shared) or [B,L,T]."""
  b = outputs["dot_product_logits"].shape[0]
  label_token_map = jnp.broadcast_to(label_token_map, (b,) + label_token_map.shape[-2:]).astype(jnp.float32)
  label_mask = jnp.broadcast_to(label_mask, (b, label_token_map.shape[1]))
  one = functools.partial(postprocess_image, anchors=anchors, level_counts=level_counts,
                          pre_nms_thresh=pre_nms_thresh, pre_nms_top_n=pre_nms_top_n, nms_thresh=nms_thresh,
                          detections_per_img=detections_per_img)
  return jax.vmap(one)(outputs["dot_product_logits"], outputs["box_regression"], outputs["centerness"],
                       label_token_map, label_mask, jnp.asarray(image_hw, jnp.float32))


def to_coco_results(detections: Mapping[str, np.ndarray], image_ids: Sequence[int], scales: np.ndarray,
                    category_ids: np.ndarray | None = None) -> list[dict]:
  """Host-side COCO results. `scales` [B,2] (sy, sx) maps network-input pixels to original image pixels;
  `category_ids` maps label l to category_ids[l - 1] (identity if None)."""
  out = []
  for i, image_id in enumerate(image_ids):
    sy, sx = float(scales[i][0]), float(scales[i][1])
    for box, score, label, ok in zip(*(np.asarray(detections[k][i]) for k in ("boxes", "scores", "labels", "valid"))):
      if not ok:
        continue
      x1, y1, x2, y2 = (float(v) for v in box)
      # COCO's xywh with GLIP's "+1" width convention, as maskrcnn_benchmark's evaluation converts boxes.
      out.append(dict(image_id=int(image_id), score=float(score),
                      category_id=int(category_ids[label - 1]) if category_ids is not None else int(label),
                      bbox=[x1 * sx, y1 * sy, (x2 - x1 + 1) * sx, (y2 - y1 + 1) * sy]))
  return out
