"""The VL-DyHead tower: [VLFuse, BERT layer, DyConv] x num_layers (DyConv only for GLIP-T(A)).

VLFuse is GLIP's bi-directional cross-attention ("X-MHA", fixture README §4.4); DyConv is DyHead's
scale-aware deformable conv block with scale attention and DyReLU (§4.6). Names mirror the official state dict;
torch Sequential indices are renamed on import (glipjax/interop/official.py: `AttnConv.1` -> `AttnConv`,
`relu.fc.0/2` -> `relu.fc1/fc2`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from glipjax.config_utils import ConfigError
from glipjax.models import dcn, dcn_pallas
from glipjax.models import layers as L
from glipjax.models.bert import BertLayer
from glipjax.models.dcn import geometric_coarse_offsets, official_coarse_offsets
from glipjax.sharding import constrain

TOKENS = ("batch", "length", "embed")
FEATURES = ("batch", "height", "width", "conv_out")

PAD1 = ((1, 1), (1, 1))


def h_sigmoid(x):
  return jax.nn.relu6(x + 3.0) / 6.0


def resize_bilinear_align_corners(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  """`F.upsample_bilinear` (= bilinear with align_corners=True), as two small interpolation matrices."""
  def matrix(n_in, n_out):
    src = np.arange(n_out) * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
    lo = np.minimum(np.floor(src).astype(int), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    m = np.zeros((n_out, n_in), np.float32)
    np.add.at(m, (np.arange(n_out), lo), 1.0 - (src - lo))
    np.add.at(m, (np.arange(n_out), hi), src - lo)
    return jnp.asarray(m, x.dtype)
  return jnp.einsum("yh,bhwc,xw->byxc", matrix(x.shape[1], size[0]), x, matrix(x.shape[2], size[1]))


class BiMultiHeadAttention(nnx.Module):
  def __init__(self, v_dim, l_dim, embed_dim, num_heads, dropout, clamp, *, fold_visual=True, dtype, param_dtype,
               rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs, kernel_init=nnx.initializers.xavier_uniform())
    self.v_proj = L.Linear(v_dim, embed_dim, axes=("embed", "heads"), **kw)
    self.l_proj = L.Linear(l_dim, embed_dim, axes=("embed", "heads"), **kw)
    self.values_v_proj = L.Linear(v_dim, embed_dim, axes=("embed", "heads"), **kw)
    self.values_l_proj = L.Linear(l_dim, embed_dim, axes=("embed", "heads"), **kw)
    self.out_v_proj = L.Linear(embed_dim, v_dim, axes=("heads", "embed"), **kw)
    self.out_l_proj = L.Linear(embed_dim, l_dim, axes=("heads", "embed"), **kw)
    self.num_heads, self.clamp, self.fold_visual = num_heads, clamp, fold_visual
    self.dropout = nnx.Dropout(dropout, rngs=rngs)

  def __call__(self, v, l, lang_mask, *, deterministic):
    if self.fold_visual:
      return self._folded(v, l, lang_mask, deterministic=deterministic)
    b, nv, _ = v.shape
    t = l.shape[1]
    h = self.num_heads
    heads = lambda y: y.reshape(b, y.shape[1], h, -1)
    q = heads(self.v_proj(v))
    q = q * q.shape[-1] ** -0.5
    k, vv, vl = heads(self.l_proj(l)), heads(self.values_v_proj(v)), heads(self.values_l_proj(l))
    # [B,h,Nv,T]; clamps, masks and softmaxes in float32 whatever the compute dtype
    attn = jnp.clip(jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32), -self.clamp, self.clamp)
    # image -> text: softmax over all visual positions, no mask (padded text rows are updated too).
    attn_t = jnp.swapaxes(attn, -1, -2)
    attn_t = jnp.clip(attn_t - attn_t.max(-1, keepdims=True), -self.clamp, self.clamp)
    probs_l = jax.nn.softmax(attn_t, axis=-1)
    # text -> image: padded tokens masked out.
    attn_v = attn + jnp.where(lang_mask[:, None, None, :] > 0, 0.0, -9e15).astype(attn.dtype)
    probs_v = jax.nn.softmax(attn_v, axis=-1)
    probs_v = self.dropout(probs_v, deterministic=deterministic).astype(vl.dtype)
    probs_l = self.dropout(probs_l, deterministic=deterministic).astype(vv.dtype)
    out_v = jnp.einsum("bhqk,bkhd->bqhd", probs_v, vl).reshape(b, nv, -1)
    out_l = jnp.einsum("bhkq,bqhd->bkhd", probs_l, vv).reshape(b, t, -1)
    return constrain(self.out_v_proj(out_v), TOKENS), constrain(self.out_l_proj(out_l), TOKENS)

  def _folded(self, v, l, lang_mask, *, deterministic):
    """The same function, with the visual-side projections folded into the text side. The visual queries,
    values and head outputs ([B, Nv, embed_dim], Nv ~ 2k-20k positions) are never formed: each is a product
    with a [v_dim, embed_dim] matrix that associativity moves onto a small [B, heads, T, ...] text-side tensor,
    so the visual side is three [Nv, v_dim] x [v_dim, heads*T] matmuls with no head transposes of visual
    tensors. Its FLOPs scale by v_dim*T / (head_dim*(v_dim + T)) against the direct form: 0.2 at T = 64 and
    0.5 at T = 256 for GLIP (v_dim = head_dim = 256). Exact up to float summation order (dropout masks are
    drawn in this layout, so training draws differ from the direct form's)."""
    b, nv, c = v.shape
    h = self.num_heads
    dtype = self.v_proj.dtype or v.dtype
    kernel = lambda lin, *shape: lin.kernel[...].astype(dtype).reshape(*shape)
    bias = lambda lin, *shape: lin.bias[...].astype(dtype).reshape(*shape)
    e = self.v_proj.kernel.shape[-1]
    d = e // h
    v = v.astype(dtype)
    k = self.l_proj(l).reshape(b, -1, h, d) * jnp.asarray(d ** -0.5, dtype)          # [B,T,h,d]
    vl = self.values_l_proj(l).reshape(b, -1, h, d)
    # scores[b,n,h,t] = (v Wq + bq)[n,h,:] . k[t,h,:]: Wq folded into the keys.
    keys = jnp.einsum("chd,bthd->bcht", kernel(self.v_proj, c, h, d), k)
    attn = jnp.einsum("bnc,bcht->bnht", v, keys) + jnp.einsum("hd,bthd->bht", bias(self.v_proj, h, d), k)[:, None]
    attn = jnp.clip(attn.astype(jnp.float32), -self.clamp, self.clamp)
    # image -> text: softmax over all visual positions (axis 1), no mask (padded text rows are updated too).
    attn_t = jnp.clip(attn - attn.max(1, keepdims=True), -self.clamp, self.clamp)
    probs_l = jax.nn.softmax(attn_t, axis=1)
    # text -> image: padded tokens masked out.
    attn_v = attn + jnp.where(lang_mask[:, None, None, :] > 0, 0.0, -9e15).astype(attn.dtype)
    probs_v = jax.nn.softmax(attn_v, axis=-1)
    probs_v = self.dropout(probs_v, deterministic=deterministic).astype(dtype)
    probs_l = self.dropout(probs_l, deterministic=deterministic).astype(dtype)
    # out_v = out_v_proj(probs_v . vl): the text values pass through out_v_proj first.
    values = jnp.einsum("bthd,hdo->bhto", vl, kernel(self.out_v_proj, h, d, -1))
    out_v = jnp.einsum("bnht,bhto->bno", probs_v, values) + bias(self.out_v_proj, -1)
    # out_l = probs_l . (v Wv + bv): pool the visual features per (head, token) first.
    pooled = jnp.einsum("bnht,bnc->bhtc", probs_l, v)
    heads_l = jnp.einsum("bhtc,chd->bthd", pooled, kernel(self.values_v_proj, c, h, d)) + \
        jnp.einsum("bnht,hd->bthd", probs_l, bias(self.values_v_proj, h, d))
    out_l = self.out_l_proj(heads_l.reshape(b, -1, e))
    return constrain(out_v, TOKENS), constrain(out_l, TOKENS)


class BiAttentionBlock(nnx.Module):
  def __init__(self, v_dim, l_dim, cfg, *, dtype, param_dtype, rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.layer_norm_v = L.LayerNorm(v_dim, **kw)
    self.layer_norm_l = L.LayerNorm(l_dim, **kw)
    self.attn = BiMultiHeadAttention(v_dim, l_dim, cfg.fusion_embed_dim, cfg.fusion_heads, cfg.fusion_dropout,
                                     cfg.attn_clamp, fold_visual=cfg.get("fusion_fold_visual", True), **kw)
    scale = nnx.initializers.constant(cfg.layer_scale_init)
    self.gamma_v = L.param(rngs, scale, (v_dim,), ("norm",), param_dtype)
    self.gamma_l = L.param(rngs, scale, (l_dim,), ("norm",), param_dtype)

  def __call__(self, v, l, lang_mask, *, deterministic):
    v, l = self.layer_norm_v(v), self.layer_norm_l(l)
    dv, dl = self.attn(v, l, lang_mask, deterministic=deterministic)
    # The residual adds to the *normalised* inputs, as the official block does.
    return v + self.gamma_v[...] * dv, l + self.gamma_l[...] * dl


class VLFuse(nnx.Module):
  """Fuses all FPN levels (flattened P3->P7, row-major) with the text tokens."""

  def __init__(self, visual_channels: int, lang_dim: int, cfg, *, dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    self.b_attn = BiAttentionBlock(visual_channels, lang_dim, cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, visual: list[jax.Array], lang: jax.Array, lang_mask: jax.Array, *, deterministic: bool):
    shapes = [f.shape for f in visual]
    flat = constrain(jnp.concatenate([f.reshape(f.shape[0], -1, f.shape[-1]) for f in visual], axis=1), TOKENS)
    flat, lang = self.b_attn(flat, lang, lang_mask, deterministic=deterministic)
    splits = np.cumsum([s[1] * s[2] for s in shapes])[:-1]
    return [constrain(p.reshape(s), FEATURES) for p, s in zip(jnp.split(flat, splits, axis=1), shapes)], lang


# model.dyhead.dcn_impl: the same function, sampled by XLA gathers or by a Pallas/Triton kernel (GPU).
DEFORM_CONVS = {"xla": dcn.deform_conv, "pallas": dcn_pallas.deform_conv}


class Conv3x3Norm(nnx.Module):
  """A modulated deformable 3x3 conv (parameters held by an nnx.Conv, applied by DEFORM_CONVS[impl]) + GroupNorm."""

  def __init__(self, channels: int, stride: int, groups: int, impl: str = "xla", **kw):
    # The official ModulatedDeformConv's own reset_parameters: U(+-1/sqrt(fan_in)) weights, zero bias (DyConv's
    # normal(0, 0.01) init only reaches nn.Conv2d modules).
    self.conv = L.Conv(channels, channels, 3, kernel_init=L.torch_default_init(9 * channels)["kernel_init"], **kw)
    self.bn = L.GroupNorm(channels, groups, **kw)
    self.stride, self.impl = stride, impl

  def __call__(self, x, offset, mask):
    conv = DEFORM_CONVS[self.impl]
    return self.bn(conv(x, offset, mask, self.conv.kernel[...], self.conv.bias[...], self.stride))


class DyReLU(nnx.Module):
  def __init__(self, channels: int, reduction: int, **kw):
    self.fc1 = L.Linear(channels, channels // reduction, axes=("embed", "mlp"), **L.torch_default_init(channels), **kw)
    self.fc2 = L.Linear(channels // reduction, 4 * channels, axes=("mlp", "embed"),
                        **L.torch_default_init(channels // reduction), **kw)

  def __call__(self, x):
    theta = h_sigmoid(self.fc2(jax.nn.relu(self.fc1(x.mean(axis=(1, 2))))))[:, None, None, :]
    a1, b1, a2, b2 = jnp.split(theta, 4, axis=-1)
    a1, a2 = 2.0 * (a1 - 0.5) + 1.0, 2.0 * (a2 - 0.5)
    b1, b2 = b1 - 0.5, b2 - 0.5
    return jnp.maximum(x * a1 + b1, x * a2 + b2)


class DyConv(nnx.Module):
  """Per level: DCN on the same level, the finer level (stride 2) and the coarser level (then upsampled), all with
  the offsets/mask of the current level; scale attention; DyReLU."""

  def __init__(self, channels: int, cfg, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    impl = cfg.get("dcn_impl", "xla")
    if impl not in DEFORM_CONVS:
      raise ConfigError(f"model.dyhead.dcn_impl must be one of {sorted(DEFORM_CONVS)}, got {impl!r}")
    self.DyConv = nnx.List([Conv3x3Norm(channels, s, cfg.group_norm_groups, impl, **kw) for s in (1, 1, 2)])
    # "official": PyTorch's default conv init (the official offsets start random); "zeros": mmcv's / the DCNv2
    # paper's zero offsets and masks of 0.5 (a regular 3x3 conv at the start).
    if cfg.get("offset_init", "official") not in ("official", "zeros"):
      raise ConfigError(f"model.dyhead.offset_init must be 'official' or 'zeros', got {cfg.offset_init!r}")
    offset_init = L.torch_default_init(9 * channels) if cfg.get("offset_init", "official") == "official" else \
        dict(kernel_init=nnx.initializers.zeros_init())
    self.offset = L.Conv(channels, 27, 3, padding=PAD1, axes=("conv_in", None), **offset_init, **kw)
    self.AttnConv = L.Conv(channels, 1, 1, axes=("conv_in", None), kernel_init=nnx.initializers.normal(0.01), **kw)
    self.relu = DyReLU(channels, cfg.dyrelu_reduction, **kw)
    if cfg.dcn_offset_mode not in ("official", "geometric"):
      raise ConfigError(f"model.dyhead.dcn_offset_mode must be 'official' or 'geometric', got {cfg.dcn_offset_mode!r}")
    self.coarse_offsets = official_coarse_offsets if cfg.dcn_offset_mode == "official" else geometric_coarse_offsets

  def __call__(self, visual: list[jax.Array], capture: dict | None = None, prefix: str = "") -> list[jax.Array]:
    out = []
    for lvl, feature in enumerate(visual):
      om = L.conv3x3_as_matmul(self.offset, feature)
      offset, mask = om[..., :18], jax.nn.sigmoid(om[..., 18:])
      branches = {1: self.DyConv[1](feature, offset, mask)}
      if lvl > 0:
        branches[2] = self.DyConv[2](visual[lvl - 1], offset, mask)
      if lvl < len(visual) - 1:
        coarse = visual[lvl + 1]
        off_c, mask_c = self.coarse_offsets(offset, mask, coarse.shape[1:3])
        branches[0] = self.DyConv[0](coarse, off_c, mask_c)
      if capture is not None:
        capture[f"{prefix}_offset_mask_l{lvl}"] = om
        capture.update({f"{prefix}_conv{k}_l{lvl}": v for k, v in branches.items()})
      if 0 in branches:
        branches[0] = resize_bilinear_align_corners(branches[0], feature.shape[1:3])
      stack = jnp.stack(list(branches.values()))
      attn = h_sigmoid(jax.nn.relu(self.AttnConv(stack.mean(axis=(2, 3), keepdims=True).reshape(
          -1, 1, 1, stack.shape[-1])))).reshape(stack.shape[0], stack.shape[1], 1, 1, 1)
      y = constrain(self.relu((stack * attn).mean(axis=0)), FEATURES)
      if capture is not None:
        capture[f"{prefix}_visual_l{lvl}"] = y
      out.append(y)
    return out


class DyHeadTower(nnx.Module):
  """`dyhead_tower`: the official flat sequence [VLFuse, BERT layer, DyConv] x num_layers (DyConv only without
  fusion), as an nnx.List, or with `model.scan_layers` a `layers.Stack` of the repeats run by lax.scan (one
  layer traced and compiled instead of num_layers; the state-dict names `dyhead_tower.i` are the same). Each
  module (or scanned repeat) is rematerialised with `model.remat` (not while capturing intermediates for parity).
  """

  def __init__(self, model_cfg, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    d = model_cfg.dyhead

    def repeat(r):  # in the official order: initialisation draws follow construction order
      modules = []
      if d.fusion:
        modules += [VLFuse(d.channels, model_cfg.language.hidden_size, d, rngs=r, **kw),
                    BertLayer(model_cfg.language, attn_clamp=d.attn_clamp, init="torch", rngs=r, **kw)]
      return modules + [DyConv(d.channels, d, rngs=r, **kw)]

    self.members = 3 if d.fusion else 1
    if model_cfg.get("scan_layers", False):
      make = (lambda r: nnx.List(repeat(r))) if d.fusion else (lambda r: repeat(r)[0])
      self.dyhead_tower = L.Stack(make, d.num_layers, members=self.members, rngs=rngs)
    else:
      self.dyhead_tower = nnx.List([m for _ in range(d.num_layers) for m in repeat(rngs)])
    self.remat = L.check_remat(model_cfg.get("remat", "none"))

  def _apply(self, module, visual, lang, lang_mask, deterministic, inter=None, name=""):
    """One tower module on (visual levels, text tokens)."""
    if isinstance(module, VLFuse):
      visual, lang = module(visual, lang, lang_mask, deterministic=deterministic)
      if inter is not None:
        inter.update({f"{name}_fuse_visual_l{l}": v for l, v in enumerate(visual)})
        inter[f"{name}_fuse_lang_hidden"] = lang
    elif isinstance(module, BertLayer):
      lang = module(lang, lang_mask, deterministic=deterministic)
      if inter is not None:
        inter[f"{name}_bert_lang_hidden"] = lang
    else:
      visual = module(visual, inter, f"{name}_dyconv")
    return visual, lang

  def __call__(self, visual: list[jax.Array], lang: jax.Array, lang_mask: jax.Array, *, deterministic: bool = True,
               capture: bool = False):
    if isinstance(self.dyhead_tower, L.Stack):
      if capture:
        raise ValueError("capturing tower intermediates needs model.scan_layers=False")

      def repeat(layers, carry, _):
        v, l = carry
        for module in (list(layers[0]) if self.members > 1 else [layers[0]]):
          v, l = self._apply(module, v, l, lang_mask, deterministic)
        return jax.tree.map(lambda new, old: new.astype(old.dtype), (v, l), carry)  # a fixed carry type

      visual, lang = self.dyhead_tower.scan(repeat, (list(visual), lang), remat=self.remat, random=not deterministic)
      return visual, lang, {}
    inter: dict | None = {} if capture else None
    policy = "none" if capture else self.remat
    for i, module in enumerate(self.dyhead_tower):
      visual, lang = L.remat_call(
          module, lambda m, v, l, mask: self._apply(m, v, l, mask, deterministic, inter, f"tower{i}"),
          visual, lang, lang_mask, policy=policy, random=not deterministic)
    return visual, lang, (inter or {})
