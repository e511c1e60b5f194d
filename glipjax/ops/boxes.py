"""Box geometry with GLIP's conventions: xyxy pixels, "+1" widths (TO_REMOVE = 1), BoxCoder weights (10,10,5,5)."""
from __future__ import annotations

import math

import jax.numpy as jnp

WEIGHTS = (10.0, 10.0, 5.0, 5.0)
DWH_CLIP = math.log(1000.0 / 16)


def encode(gt: jnp.ndarray, anchors: jnp.ndarray) -> jnp.ndarray:
  """Regression targets of `gt` relative to `anchors` ([..., 4] each). Note the official encode centres boxes at
  x1 + w/2 (with w = x2 - x1 + 1) while the decode below uses (x1 + x2)/2; both are kept as official."""
  wx, wy, ww, wh = WEIGHTS
  aw, ah = anchors[..., 2] - anchors[..., 0] + 1, anchors[..., 3] - anchors[..., 1] + 1
  ax, ay = anchors[..., 0] + 0.5 * aw, anchors[..., 1] + 0.5 * ah
  gw, gh = gt[..., 2] - gt[..., 0] + 1, gt[..., 3] - gt[..., 1] + 1
  gx, gy = gt[..., 0] + 0.5 * gw, gt[..., 1] + 0.5 * gh
  return jnp.stack([wx * (gx - ax) / aw, wy * (gy - ay) / ah, ww * jnp.log(gw / aw), wh * jnp.log(gh / ah)], -1)


def decode(deltas: jnp.ndarray, anchors: jnp.ndarray) -> jnp.ndarray:
  """The VL-DyHead BoxCoder decode (symmetric: x1 = cx - (w-1)/2), dw/dh clamped at log(1000/16)."""
  wx, wy, ww, wh = WEIGHTS
  aw, ah = anchors[..., 2] - anchors[..., 0] + 1, anchors[..., 3] - anchors[..., 1] + 1
  ax, ay = (anchors[..., 0] + anchors[..., 2]) / 2, (anchors[..., 1] + anchors[..., 3]) / 2
  dx, dy = deltas[..., 0] / wx, deltas[..., 1] / wy
  dw, dh = jnp.minimum(deltas[..., 2] / ww, DWH_CLIP), jnp.minimum(deltas[..., 3] / wh, DWH_CLIP)
  cx, cy = dx * aw + ax, dy * ah + ay
  w, h = jnp.exp(dw) * aw, jnp.exp(dh) * ah
  return jnp.stack([cx - 0.5 * (w - 1), cy - 0.5 * (h - 1), cx + 0.5 * (w - 1), cy + 0.5 * (h - 1)], -1)


def pairwise_iou(a: jnp.ndarray, b: jnp.ndarray, plus_one: bool = True) -> jnp.ndarray:
  """IoU matrix [N, M] of xyxy boxes; `plus_one` uses maskrcnn_benchmark's pixel-inclusive areas."""
  e = 1.0 if plus_one else 0.0
  area_a = (a[:, 2] - a[:, 0] + e) * (a[:, 3] - a[:, 1] + e)
  area_b = (b[:, 2] - b[:, 0] + e) * (b[:, 3] - b[:, 1] + e)
  lt = jnp.maximum(a[:, None, :2], b[None, :, :2])
  rb = jnp.minimum(a[:, None, 2:], b[None, :, 2:])
  wh = jnp.maximum(rb - lt + e, 0.0)
  inter = wh[..., 0] * wh[..., 1]
  return inter / (area_a[:, None] + area_b[None, :] - inter)


def giou_loss(pred: jnp.ndarray, target: jnp.ndarray) -> jnp.ndarray:
  """1 - GIoU of decoded xyxy boxes, elementwise over [..., 4], as ATSS's GIoULoss (no "+1", eps 1e-7)."""
  px1, py1 = pred[..., 0], pred[..., 1]
  px2, py2 = jnp.maximum(px1, pred[..., 2]), jnp.maximum(py1, pred[..., 3])
  tx1, ty1, tx2, ty2 = target[..., 0], target[..., 1], target[..., 2], target[..., 3]
  p_area, t_area = (px2 - px1) * (py2 - py1), (tx2 - tx1) * (ty2 - ty1)
  ix1, iy1 = jnp.maximum(px1, tx1), jnp.maximum(py1, ty1)
  ix2, iy2 = jnp.minimum(px2, tx2), jnp.minimum(py2, ty2)
  inter = jnp.where((iy2 > iy1) & (ix2 > ix1), (ix2 - ix1) * (iy2 - iy1), 0.0)
  enclose = (jnp.maximum(px2, tx2) - jnp.minimum(px1, tx1)) * (jnp.maximum(py2, ty2) - jnp.minimum(py1, ty1)) + 1e-7
  union = p_area + t_area - inter + 1e-7
  iou = inter / union
  return 1.0 - (iou - (enclose - union) / enclose)
