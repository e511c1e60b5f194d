"""Swin Transformer v1 backbone, as GLIP's `SWINT-FPN-RETINANET` body (fixture README §4.1).

Attribute names mirror the official state dict (`patch_embed.proj`, `layers[i].blocks[j].attn.qkv`, `norm1..3`).
Windows are processed as one batched einsum; any image size works (right/bottom zero padding as official).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from glipjax.models import layers as L
from glipjax.sharding import constrain

PIXELS = ("batch", "height", "width", "embed")


@functools.lru_cache(maxsize=None)
def relative_position_index(window: int) -> np.ndarray:
  coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij")).reshape(2, -1)
  rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + (window - 1)
  return (rel[..., 0] * (2 * window - 1) + rel[..., 1]).astype(np.int32)


def _shift_mask(hp: int, wp: int, window: int, shift: int) -> np.ndarray:
  """The -100 region mask of shifted windows, built on the padded size: [num_windows, N, N]."""
  img = np.zeros((hp, wp), np.int32)
  region = 0
  for hs in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
    for ws in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
      img[hs, ws] = region
      region += 1
  win = img.reshape(hp // window, window, wp // window, window).transpose(0, 2, 1, 3).reshape(-1, window * window)
  return np.where(win[:, None, :] != win[:, :, None], -100.0, 0.0).astype(np.float32)


def drop_path(x: jax.Array, rate: float | jax.Array, deterministic: bool, stream: nnx.RngStream) -> jax.Array:
  """Stochastic depth: drops whole residual branches per sample. `rate` is an array in scanned stages."""
  if deterministic or (isinstance(rate, float) and rate == 0.0):
    return x
  keep = jax.random.bernoulli(stream(), 1.0 - rate, (x.shape[0],) + (1,) * (x.ndim - 1))
  return jnp.where(keep, x / (1.0 - rate), 0.0)


class WindowAttention(nnx.Module):
  def __init__(self, dim: int, num_heads: int, window: int, qkv_bias: bool, *, dtype, param_dtype, rngs):
    self.num_heads, self.window = num_heads, window
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.qkv = L.Linear(dim, 3 * dim, axes=("embed", "heads"), use_bias=qkv_bias, **L.torch_default_init(dim), **kw)
    self.proj = L.Linear(dim, dim, axes=("heads", "embed"), **L.torch_default_init(dim), **kw)
    # timm's trunc_normal_(std=.02) truncates at +-2 absolute: a plain N(0, 0.02) at this scale.
    self.relative_position_bias_table = L.param(
        rngs, nnx.initializers.normal(0.02), ((2 * window - 1) ** 2, num_heads), (None, None), param_dtype)

  def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
    """x: [B, nW, N, C] windows; mask: [nW, N, N] or None."""
    b, nw, n, c = x.shape
    h = self.num_heads
    q, k, v = jnp.split(self.qkv(x).reshape(b, nw, n, 3, h, c // h), 3, axis=3)
    q, k, v = q[:, :, :, 0], k[:, :, :, 0], v[:, :, :, 0]
    q = q * (c // h) ** -0.5
    attn = jnp.einsum("bwqhd,bwkhd->bwhqk", q, k).astype(jnp.float32)  # bias, mask, softmax in float32
    bias = self.relative_position_bias_table[...][relative_position_index(self.window)]  # [N, N, heads]
    attn = attn + bias.transpose(2, 0, 1).astype(jnp.float32)
    if mask is not None:
      attn = attn + mask[None, :, None]
    attn = jax.nn.softmax(attn, axis=-1).astype(v.dtype)
    out = jnp.einsum("bwhqk,bwkhd->bwqhd", attn, v).reshape(b, nw, n, c)
    return self.proj(out)


class Mlp(nnx.Module):
  def __init__(self, dim: int, hidden: int, *, dtype, param_dtype, rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.fc1 = L.Linear(dim, hidden, axes=("embed", "mlp"), **L.torch_default_init(dim), **kw)
    self.fc2 = L.Linear(hidden, dim, axes=("mlp", "embed"), **L.torch_default_init(hidden), **kw)

  def __call__(self, x):
    return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


class SwinBlock(nnx.Module):
  def __init__(self, dim, num_heads, window, shift, mlp_ratio, qkv_bias, drop_path_rate, *, dtype, param_dtype,
               rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.window, self.shift, self.drop_path_rate = window, shift, drop_path_rate
    self.norm1 = L.LayerNorm(dim, **kw)
    self.attn = WindowAttention(dim, num_heads, window, qkv_bias, **kw)
    self.norm2 = L.LayerNorm(dim, **kw)
    self.mlp = Mlp(dim, int(dim * mlp_ratio), **kw)
    self.drop_rng = rngs.dropout.fork()  # its own stream, so stacked (scanned) blocks get one each

  def __call__(self, x: jax.Array, *, deterministic: bool, shift: int | None = None,
               drop_path_rate: float | jax.Array | None = None) -> jax.Array:
    """`shift` / `drop_path_rate` override the block's own (scanned stages share one block structure)."""
    b, hh, ww, c = x.shape
    w = self.window
    s = self.shift if shift is None else shift
    rate = self.drop_path_rate if drop_path_rate is None else drop_path_rate
    y = self.norm1(x)
    hp, wp = -(-hh // w) * w, -(-ww // w) * w
    y = jnp.pad(y, ((0, 0), (0, hp - hh), (0, wp - ww), (0, 0)))  # after norm1: pad tokens are exact zeros
    if s:
      y = jnp.roll(y, (-s, -s), axis=(1, 2))
    win = y.reshape(b, hp // w, w, wp // w, w, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, -1, w * w, c)
    mask = jnp.asarray(_shift_mask(hp, wp, w, s)) if s else None
    y = self.attn(win, mask)
    y = y.reshape(b, hp // w, wp // w, w, w, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)
    if s:
      y = jnp.roll(y, (s, s), axis=(1, 2))
    x = constrain(x + drop_path(y[:, :hh, :ww], rate, deterministic, self.drop_rng), PIXELS)
    return constrain(x + drop_path(self.mlp(self.norm2(x)), rate, deterministic, self.drop_rng), PIXELS)


class PatchMerging(nnx.Module):
  def __init__(self, dim: int, *, dtype, param_dtype, rngs):
    self.norm = L.LayerNorm(4 * dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.reduction = L.Linear(4 * dim, 2 * dim, axes=("embed", "embed"), use_bias=False,
                              **L.torch_default_init(4 * dim), dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x):
    h, w = x.shape[1:3]
    x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
    x = jnp.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], axis=-1)
    return self.reduction(self.norm(x))


class SwinStage(nnx.Module):
  """`blocks`: an nnx.List, or with `scan` a `layers.Stack` run over (unshifted, shifted) block pairs with the
  drop-path rates as scanned data; block j keeps the state-dict name `blocks.j` either way."""

  def __init__(self, dim, depth, num_heads, window, mlp_ratio, qkv_bias, drop_path_rates, downsample, *,
               scan=False, remat="none", dtype, param_dtype, rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    make = lambda j, r: SwinBlock(dim, num_heads, window, 0 if j % 2 == 0 else window // 2, mlp_ratio, qkv_bias,
                                  drop_path_rates[j], rngs=r, **kw)
    if scan:
      self.blocks = L.Stack(lambda r: make(0, r), depth, rngs=rngs)
    else:
      self.blocks = nnx.List([make(j, rngs) for j in range(depth)])
    self.shift, self.drop_path_rates = window // 2, tuple(drop_path_rates)
    self.downsample = PatchMerging(dim, rngs=rngs, **kw) if downsample else None
    self.remat = L.check_remat(remat)

  def __call__(self, x, *, deterministic):
    if isinstance(self.blocks, L.Stack):
      def pair(blocks, x, rates):
        for j, block in enumerate(blocks):
          x = block(x, deterministic=deterministic, shift=self.shift if j % 2 else 0, drop_path_rate=rates[j])
        return x
      x = self.blocks.scan(pair, x, jnp.asarray(self.drop_path_rates, jnp.float32), group=2, remat=self.remat,
                           random=not deterministic)
    else:
      for block in self.blocks:
        x = L.remat_call(block, lambda blk, x: blk(x, deterministic=deterministic), x, policy=self.remat,
                         random=not deterministic)
    return x, (self.downsample(x) if self.downsample is not None else None)


class PatchEmbed(nnx.Module):
  def __init__(self, patch: int, dim: int, *, dtype, param_dtype, rngs):
    self.patch = patch
    # PyTorch's default conv init, as the official model gets it. The random bias matters: a zero one would make
    # patches of the zero canvas padding constant across channels, and the LayerNorms that follow would then
    # amplify gradients by 1/sqrt(eps) each (~1e15 through Swin-T's stages when training from scratch).
    self.proj = L.Conv(3, dim, patch, strides=patch, padding="VALID", axes=(None, "embed"),
                       **L.torch_default_init(3 * patch * patch), dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.norm = L.LayerNorm(dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x):
    p = self.patch
    h, w = x.shape[1:3]
    x = jnp.pad(x, ((0, 0), (0, -h % p), (0, -w % p), (0, 0)))
    return constrain(self.norm(self.proj(x)), PIXELS)


class SwinTransformer(nnx.Module):
  """Returns the four stage outputs (strides 4, 8, 16, 32), NHWC; stages in `cfg.out_indices` get an output
  LayerNorm `norm{i}` (the official body has `norm0` = Identity, so stage 2 is returned raw). `scan` / `remat`:
  see SwinStage and `layers.REMAT_POLICIES`."""

  def __init__(self, cfg, *, scan: bool = False, remat: str = "none", dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    depths = tuple(cfg.depths)
    self.patch_embed = PatchEmbed(cfg.patch_size, cfg.embed_dim, **kw)
    rates = np.linspace(0, cfg.drop_path_rate, sum(depths)).tolist()
    dims = [cfg.embed_dim * 2 ** i for i in range(len(depths))]
    self.layers = nnx.List([
        SwinStage(dims[i], depths[i], cfg.num_heads[i], cfg.window_size, cfg.mlp_ratio, cfg.qkv_bias,
                  rates[sum(depths[:i]):sum(depths[:i + 1])], i < len(depths) - 1, scan=scan, remat=remat, **kw)
        for i in range(len(depths))])
    self.out_indices = tuple(cfg.out_indices)
    for i in self.out_indices:
      setattr(self, f"norm{i}", L.LayerNorm(dims[i], **kw))
    self.num_features = dims

  def __call__(self, images: jax.Array, *, deterministic: bool = True) -> list[jax.Array]:
    x = self.patch_embed(images)
    outs = []
    for i, stage in enumerate(self.layers):
      out, x = stage(x, deterministic=deterministic)
      outs.append(getattr(self, f"norm{i}")(out) if i in self.out_indices else out)
    return outs
