"""The GLIP detector: Swin + FPN (image), BERT (text), the VL-DyHead tower, and the ATSS grounding head.

Outputs are raw head outputs over all anchors, levels P3->P7 concatenated (row-major within a level); losses
(glipjax/ops/losses.py) and post-processing (glipjax/ops/postprocess.py) live outside the model.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from glipjax.models import layers as L
from glipjax.models.bert import BertModel
from glipjax.models.dyhead import DyHeadTower
from glipjax.models.fpn import FPN
from glipjax.models.swin import SwinTransformer

# model.head.alignment: what scores a region against a token. "dot_product": GLIP's (token sigmoid focal loss);
# "contrastive": MDETR's contrastive alignment alone (it also scores detections); "both": the two heads, each
# with its loss, scored by the dot product.
ALIGNMENTS = ("dot_product", "contrastive", "both")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


class Scale(nnx.Module):
  """A learnable scalar per FPN level (official `scales.{l}.scale`)."""

  def __init__(self, rngs: nnx.Rngs, param_dtype):
    self.scale = L.param(rngs, nnx.initializers.ones_init(), (1,), (None,), param_dtype)


class TunableLinear(nnx.Module):
  """The official prompt-tuning table `rpn.tunable_linear.weight` [rows, hidden] (a bias-free nn.Linear's weight
  used as a table): row t is added to token t's features, zero-initialised so that tuning starts at the model."""

  def __init__(self, rows: int, hidden: int, *, rngs: nnx.Rngs, param_dtype):
    self.weight = L.param(rngs, nnx.initializers.zeros_init(), (rows, hidden), (None, "embed"), param_dtype)


class VLDyHead(nnx.Module):
  def __init__(self, model_cfg, *, dtype, param_dtype, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    c, h = model_cfg.dyhead.channels, model_cfg.head
    lang_dim = model_cfg.language.hidden_size
    prior_bias = -math.log((1 - h.prior_prob) / h.prior_prob)
    self.dyhead_tower = DyHeadTower(model_cfg, **kw)
    conv = lambda out, bias=0.0: L.Conv(c, out, 1, axes=("conv_in", None), kernel_init=nnx.initializers.normal(0.01),
                                        bias_init=nnx.initializers.constant(bias), **kw)
    # The 80-way classifier exists in official checkpoints but is frozen and unused by the grounding loss.
    self.cls_logits = conv(h.num_classes - 1, prior_bias)
    self.bbox_pred = conv(4)
    self.centerness = conv(1)
    self.scales = nnx.List([Scale(rngs, param_dtype) for _ in model_cfg.anchors.strides])
    self.dot_product_projection_text = L.Linear(lang_dim, h.joint_embed, axes=("embed", None),
                                                **L.torch_default_init(lang_dim), **kw)
    self.log_scale = L.param(rngs, nnx.initializers.constant(h.log_scale_init), (1,), (None,), param_dtype)
    self.bias_lang = L.param(rngs, nnx.initializers.zeros_init(), (lang_dim,), (None,), param_dtype)
    self.bias0 = L.param(rngs, nnx.initializers.constant(prior_bias), (1,), (None,), param_dtype)
    self.logit_clamp = h.logit_clamp
    self.use_fused_text = h.get("use_fused_text", True)
    self.alignment = h.get("alignment", "dot_product")
    if self.alignment not in ALIGNMENTS:
      raise ValueError(f"model.head.alignment {self.alignment!r}: use one of {ALIGNMENTS}")
    if self.alignment != "dot_product":
      # Official USE_CONTRASTIVE_ALIGN_LOSS (MDETR's): regions and tokens projected to CONTRASTIVE_HIDDEN_DIM and
      # L2-normalised; their cosine over a learned temperature is the contrastive logit.
      d = h.contrastive_align_dim
      self.contrastive_align_projection_image = L.Conv(c, d, 1, axes=("conv_in", None), **L.torch_default_init(c),
                                                       **kw)
      self.contrastive_align_projection_text = L.Linear(lang_dim, d, axes=("embed", None),
                                                        **L.torch_default_init(lang_dim), **kw)
      self.contrastive_log_scale = L.param(rngs, nnx.initializers.constant(h.contrastive_log_scale_init), (1,),
                                           (None,), param_dtype)

  def __call__(self, visual, lang, embedded, lang_mask, *, deterministic: bool, capture: bool,
               pooled: bool = False):
    """`lang`: the language backbone's last layer (the tower starts from it); `embedded`: its masked copy."""
    visual, fused, inter = self.dyhead_tower(visual, lang, lang_mask, deterministic=deterministic, capture=capture)
    text = fused if self.use_fused_text else embedded
    extra = {}
    if self.alignment != "dot_product":
      extra["contrastive_logits"] = self._contrastive_logits(visual, text)
    if pooled:
      extra.update(self._pooled(visual, text, lang_mask))
    # F.normalize: a zero (padded) row stays zero, so it projects to the bias and its logit bias is bias0.
    emb = text / jnp.maximum(jnp.linalg.norm(text, axis=-1, keepdims=True), 1e-12)
    tokens = self.dot_product_projection_text(emb / 2.0)                           # [B,T,C]
    token_bias = emb @ self.bias_lang[...] + self.bias0[...]                        # [B,T]
    inv_temp = jnp.exp(-self.log_scale[...])
    logits, boxes, ctr = [], [], []
    for lvl, x in enumerate(visual):
      b = x.shape[0]
      q = x.reshape(b, -1, x.shape[-1])
      # Grounding logits in float32 whatever the compute dtype: they feed the focal loss and the clamp.
      logit = jnp.einsum("bac,btc->bat", q.astype(jnp.float32), tokens.astype(jnp.float32)) * inv_temp + \
          token_bias[:, None, :].astype(jnp.float32)
      logits.append(jnp.clip(logit, -self.logit_clamp, self.logit_clamp))
      boxes.append((self.bbox_pred(x) * self.scales[lvl].scale[...]).reshape(b, -1, 4))
      ctr.append(self.centerness(x).reshape(b, -1))
      if capture:
        inter[f"box_regression_l{lvl}"] = self.bbox_pred(x) * self.scales[lvl].scale[...]
        inter[f"centerness_l{lvl}"] = self.centerness(x)
        inter[f"cls_logits_l{lvl}"] = self.cls_logits(x)
        inter[f"dot_product_logits_l{lvl}"] = logits[-1]
    if capture:
      inter["head_dot_product_proj_tokens_input"] = emb / 2.0
      inter["head_dot_product_proj_tokens"] = tokens
    out = dict(dot_product_logits=jnp.concatenate(logits, 1), box_regression=jnp.concatenate(boxes, 1),
               centerness=jnp.concatenate(ctr, 1), **extra)
    if self.alignment == "contrastive":  # the contrastive logits are the grounding scores post-processing reads
      out["dot_product_logits"] = out["contrastive_logits"]
    return out, inter

  def _contrastive_logits(self, visual, text):
    normalize = lambda x: x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    tokens = normalize(self.contrastive_align_projection_text(text).astype(jnp.float32))         # [B,T,D]
    regions = [normalize(self.contrastive_align_projection_image(x).astype(jnp.float32)) for x in visual]
    regions = jnp.concatenate([r.reshape(r.shape[0], -1, r.shape[-1]) for r in regions], 1)       # [B,A,D]
    return jnp.einsum("bad,btd->bat", regions, tokens) / jnp.exp(self.contrastive_log_scale[...])

  def _pooled(self, visual, text, lang_mask):
    """Image and prompt embeddings in the joint space of the dot-product head, for an image-text contrastive
    loss: the mean over levels of each level's mean tower feature, and the masked mean of the projected tokens."""
    image = jnp.mean(jnp.stack([x.astype(jnp.float32).mean((1, 2)) for x in visual]), 0)        # [B,C]
    emb = text / jnp.maximum(jnp.linalg.norm(text, axis=-1, keepdims=True), 1e-12)
    tokens = self.dot_product_projection_text(emb / 2.0).astype(jnp.float32)                     # [B,T,C]
    m = lang_mask.astype(jnp.float32)[..., None]
    return dict(image_embedding=image, text_embedding=(tokens * m).sum(1) / jnp.maximum(m.sum(1), 1.0))


class GLIP(nnx.Module):
  """`images` [B,H,W,3] (normalised BGR, see glipjax/data/transforms.py), `input_ids`/`attention_mask` [B,T] ->
  dict(dot_product_logits [B,A,T], box_regression [B,A,4], centerness [B,A]) (+ `intermediates` if capture)."""

  def __init__(self, model_cfg, *, rngs: nnx.Rngs):
    kw = dict(dtype=DTYPES[model_cfg.dtype], param_dtype=DTYPES[model_cfg.param_dtype], rngs=rngs)
    if model_cfg.head.joint_embed != model_cfg.dyhead.channels:
      raise ValueError("head.joint_embed must equal dyhead.channels: visual features are scored unprojected")
    layered = dict(scan=model_cfg.get("scan_layers", False), remat=model_cfg.get("remat", "none"))
    self.backbone = SwinTransformer(model_cfg.swin, **layered, **kw)
    in_ch = [self.backbone.num_features[i] for i in model_cfg.swin.out_indices]
    self.fpn = FPN(in_ch, model_cfg.fpn.out_channels, drop_block_prob=model_cfg.fpn.drop_block_prob,
                   drop_block_size=model_cfg.fpn.drop_block_size, **kw)
    self.language_backbone = BertModel(model_cfg.language, **layered, **kw)
    self.head = VLDyHead(model_cfg, **kw)
    rows = model_cfg.get("tunable_linear_rows", 0)
    if rows and rows < model_cfg.max_query_len:
      raise ValueError(f"model.tunable_linear_rows {rows} < model.max_query_len {model_cfg.max_query_len}: "
                       "every token position needs a row")
    self.tunable_linear = TunableLinear(rows, model_cfg.language.hidden_size, rngs=rngs,
                                        param_dtype=kw["param_dtype"]) if rows else None
    self.out_indices = tuple(model_cfg.swin.out_indices)
    self.compute_dtype = kw["dtype"]

  def _stages(self, images: jax.Array, deterministic: bool) -> list[jax.Array]:
    return self.backbone(images.astype(self.compute_dtype), deterministic=deterministic)

  def encode_image(self, images: jax.Array, *, deterministic: bool = True) -> list[jax.Array]:
    """[B,H,W,3] -> [P3..P7], NHWC."""
    stages = self._stages(images, deterministic)
    return self.fpn([stages[i] for i in self.out_indices], deterministic=deterministic)

  def encode_text(self, input_ids: jax.Array, attention_mask: jax.Array, *, deterministic: bool = True):
    """[B,T] ids and mask -> last BERT hidden layer [B,T,H] (unmasked; the tower starts from it)."""
    return self.language_backbone(input_ids, attention_mask, deterministic=deterministic)

  def __call__(self, images, input_ids, attention_mask, *, deterministic: bool = True, capture: bool = False,
               pooled: bool = False):
    stages = self._stages(images, deterministic)
    visual = self.fpn([stages[i] for i in self.out_indices], deterministic=deterministic)
    lang = self.encode_text(input_ids, attention_mask, deterministic=deterministic)
    embedded = lang * attention_mask[..., None].astype(lang.dtype)  # the official language backbone's `embedded`
    if self.tunable_linear is not None:  # added to both, after masking, as the official RPN does
      prompt = self.tunable_linear.weight[...][:lang.shape[1]].astype(lang.dtype)
      lang, embedded = lang + prompt, embedded + prompt
    out, inter = self.head(visual, lang, embedded, attention_mask, deterministic=deterministic, capture=capture,
                           pooled=pooled)
    out = {k: v.astype(jnp.float32) for k, v in out.items()}
    if capture:
      inter.update({f"backbone_stage{i + 2}": s for i, s in enumerate(stages)})
      inter.update({f"fpn_p{l + 3}": p for l, p in enumerate(visual)})
      m = attention_mask.astype(lang.dtype)
      inter["lang_hidden"] = lang
      inter["lang_masks"] = attention_mask
      inter["lang_embedded"] = embedded
      inter["lang_aggregate"] = embedded.sum(1) / m.sum(1, keepdims=True)  # informational only
      out["intermediates"] = inter
    return out


def count_params(module: nnx.Module) -> int:
  return sum(int(v.size) for _, v in nnx.to_flat_state(nnx.state(module, nnx.Param)))
