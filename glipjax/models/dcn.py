"""Modulated deformable convolution v2 (3x3, one deformable group) in pure JAX, NHWC.

Sampling follows GLIP's CUDA kernel (fixture README §4.6): the tap (i, j) of output (y, x) samples the input at
(y*s - 1 + i + dy, x*s - 1 + j + dx) with zero-padded bilinear interpolation in pixel coordinates; points with
h <= -1, w <= -1, h >= H or w >= W read 0. Offsets are laid out as official: tap k = 3i + j uses channel 2k (dy)
and 2k + 1 (dx); the mask (already sigmoid-ed) multiplies each sample.

Formulation (measured on XLA:CPU, benchmarks/README.md): four gathers of the flattened input (one per bilinear
corner), their weighted sum into columns [B,Ho,Wo,9,C] (the mask folded into the corner weights by
`sampling_plan`, which dcn_pallas.py's Triton kernel shares) and one matmul with the kernel. The columns are
recomputed in the backward pass rather than stored (jax.checkpoint, the matmul's output kept): a few cheap
gathers instead of 5 x [B,Ho,Wo,9,C] residuals per conv, which at 800x1344 dominated the step's memory.
Tried and slower here: one gather of the 4 corners with an einsum of the weights (the batched weight dot runs
~3x slower than the elementwise sum), a stride-3 convolution over the columns laid out as a [3Ho, 3Wo] image
(transposes around the weight gradient), a custom VJP regathering in the backward pass (no faster than
autodiff of this form once XLA:CPU's batch-1 reductions are fixed, glipjax/__init__.py).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def deform_conv(x: jax.Array, offset: jax.Array, mask: jax.Array, kernel: jax.Array, bias: jax.Array | None,
                stride: int = 1) -> jax.Array:
  """x [B,H,W,C]; offset [B,Ho,Wo,18]; mask [B,Ho,Wo,9]; kernel HWIO [3,3,C,O] -> [B,Ho,Wo,O]."""
  fn = jax.checkpoint(functools.partial(_deform_conv, stride=stride),
                      policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable)
  return fn(x, offset, mask, kernel, bias)


def sampling_plan(offset: jax.Array, mask: jax.Array, in_hw: tuple[int, int], stride: int):
  """Where each tap reads: the flat input index (y * W + x) of its 4 bilinear corners and their weights (bilinear
  weight x corner-inside-the-image x mask), 4 arrays [B,Ho,Wo,9] each, in the corner order (y0,x0), (y0,x1), (y1,x0),
  (y1,x1). A corner outside the image gets weight 0 and a clipped (valid) index."""
  h, w = in_hw
  ho, wo = offset.shape[1:3]
  # Sampling positions and bilinear weights in float32: bfloat16 cannot hold pixel coordinates + fractions.
  offset, mask = offset.astype(jnp.float32), mask.astype(jnp.float32)
  ki, kj = np.meshgrid(np.arange(3), np.arange(3), indexing="ij")
  base_y = (np.arange(ho) * stride - 1)[:, None, None] + ki.reshape(1, 1, 9)  # [Ho,1,9]
  base_x = (np.arange(wo) * stride - 1)[None, :, None] + kj.reshape(1, 1, 9)  # [1,Wo,9]
  py = base_y[None] + offset[..., 0::2]                                     # [B,Ho,Wo,9]
  px = base_x[None] + offset[..., 1::2]
  inside = (py > -1) & (px > -1) & (py < h) & (px < w)
  y0, x0 = jnp.floor(py), jnp.floor(px)
  ly, lx = py - y0, px - x0
  corners = [(y0, x0, (1 - ly) * (1 - lx)), (y0, x0 + 1, (1 - ly) * lx), (y0 + 1, x0, ly * (1 - lx)),
             (y0 + 1, x0 + 1, ly * lx)]
  index, weight = [], []
  for yy, xx, bilinear in corners:
    valid = (yy >= 0) & (yy <= h - 1) & (xx >= 0) & (xx <= w - 1) & inside
    index.append((jnp.clip(yy, 0, h - 1) * w + jnp.clip(xx, 0, w - 1)).astype(jnp.int32))
    weight.append(jnp.where(valid, bilinear, 0.0) * mask)
  return index, weight


def _deform_conv(x, offset, mask, kernel, bias, stride):
  b, h, w, c = x.shape
  index, weight = sampling_plan(offset, mask, (h, w), stride)
  flat = x.reshape(b, h * w, c)

  def corner(i):
    vals = jnp.take_along_axis(flat, index[i].reshape(b, -1, 1), axis=1).reshape(*index[i].shape, c)
    return vals * weight[i][..., None].astype(x.dtype)

  cols = corner(0) + corner(1) + corner(2) + corner(3)
  out = jnp.einsum("bhwkc,kco->bhwo", cols, kernel.reshape(9, c, -1).astype(x.dtype))
  return out if bias is None else out + bias.astype(out.dtype)


def official_coarse_offsets(offset: jax.Array, mask: jax.Array, out_hw: tuple[int, int]):
  """What GLIP's CUDA DCN reads when handed offsets of an (h, w) grid for a smaller (Ho, Wo) output.

  The kernel indexes each image's (C, h, w) buffer as if it were dense (C, Ho, Wo): it reads the first C*Ho*Wo
  values in C order. This is a prefix of the NCHW buffer, not a crop or a resize (fixture README §4.6).
  """
  def prefix(t):
    b, _, _, ch = t.shape
    nchw = t.transpose(0, 3, 1, 2).reshape(b, -1)[:, :ch * out_hw[0] * out_hw[1]]
    return nchw.reshape(b, ch, *out_hw).transpose(0, 2, 3, 1)
  return prefix(offset), prefix(mask)


def geometric_coarse_offsets(offset: jax.Array, mask: jax.Array, out_hw: tuple[int, int]):
  """A geometrically meaningful alternative: resize offsets/mask to the coarse grid and scale the offsets
  (pixel units of the fine level) by the resolution ratio, so each coarse tap moves by the same image distance."""
  b, h, w, _ = offset.shape
  ho, wo = out_hw
  ratio = jnp.asarray([ho / h, wo / w] * 9, offset.dtype)
  off = jax.image.resize(offset, (b, ho, wo, offset.shape[-1]), "bilinear") * ratio
  return off, jax.image.resize(mask, (b, ho, wo, mask.shape[-1]), "bilinear")
