"""FPN with P6/P7 as GLIP's SWINT-FPN-RETINANET (fixture README §4.2): 1x1 laterals, nearest top-down, 3x3
outputs, P6 = conv s2 on the P5 output, P7 = conv s2 on relu(P6); DropBlock on the merged laterals in training."""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from glipjax.models import layers as L
from glipjax.sharding import constrain

PAD1 = ((1, 1), (1, 1))  # torch's symmetric padding; flax "SAME" pads stride-2 convs asymmetrically


def resize_nearest(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  """torch `F.interpolate(mode="nearest", size=...)`: source index floor(dst * in / out)."""
  h, w = x.shape[1:3]
  iy = np.minimum(np.floor(np.arange(size[0]) * (h / size[0])).astype(np.int32), h - 1)
  ix = np.minimum(np.floor(np.arange(size[1]) * (w / size[1])).astype(np.int32), w - 1)
  return x[:, iy][:, :, ix]


def drop_block(x: jax.Array, prob: float, block: int, key: jax.Array) -> jax.Array:
  """DropBlock2D (Ghiasi et al.) as the official layer: seeds with rate prob/block², dilated by max-pooling."""
  gamma = prob / block ** 2
  seeds = jax.random.bernoulli(key, gamma, x.shape[:3]).astype(x.dtype)[..., None]
  pad = block // 2
  dilated = jax.lax.reduce_window(seeds, 0.0, jax.lax.max, (1, block, block, 1), (1, 1, 1, 1),
                                  ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  keep = 1.0 - dilated[:, :x.shape[1], :x.shape[2]]
  return x * keep * keep.size / jnp.maximum(keep.sum(), 1.0)


class TopBlocks(nnx.Module):
  def __init__(self, channels: int, **kw):
    init = nnx.initializers.variance_scaling(1.0, "fan_in", "uniform")  # kaiming_uniform(a=1), zero bias: official
    self.p6 = L.Conv(channels, channels, 3, strides=2, padding=PAD1, kernel_init=init, **kw)
    self.p7 = L.Conv(channels, channels, 3, strides=2, padding=PAD1, kernel_init=init, **kw)


class FPN(nnx.Module):
  def __init__(self, in_channels: Sequence[int], out_channels: int, *, drop_block_prob: float = 0.0,
               drop_block_size: int = 3, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    init = nnx.initializers.variance_scaling(1.0, "fan_in", "uniform")  # kaiming_uniform(a=1), as official
    for i, c in enumerate(in_channels):
      setattr(self, f"fpn_inner{i + 2}", L.Conv(c, out_channels, 1, kernel_init=init, **kw))
      setattr(self, f"fpn_layer{i + 2}", L.Conv(out_channels, out_channels, 3, padding=PAD1, kernel_init=init, **kw))
    self.top_blocks = TopBlocks(out_channels, **kw)
    self.num_inputs = len(in_channels)
    self.drop_block_prob, self.drop_block_size = drop_block_prob, drop_block_size
    self.rngs = rngs

  def __call__(self, features: Sequence[jax.Array], *, deterministic: bool = True) -> list[jax.Array]:
    n = self.num_inputs
    last = getattr(self, f"fpn_inner{n + 1}")(features[-1])
    results = [getattr(self, f"fpn_layer{n + 1}")(last)]
    for i in range(n - 2, -1, -1):
      lateral = getattr(self, f"fpn_inner{i + 2}")(features[i])
      last = lateral + resize_nearest(last, lateral.shape[1:3])
      merged = last
      if not deterministic and self.drop_block_prob > 0:
        merged = drop_block(last, self.drop_block_prob, self.drop_block_size, self.rngs.dropout())
      results.insert(0, getattr(self, f"fpn_layer{i + 2}")(merged))
    p6 = self.top_blocks.p6(results[-1])
    p7 = self.top_blocks.p7(jax.nn.relu(p6))
    return [constrain(p, ("batch", "height", "width", "conv_out")) for p in results + [p6, p7]]
