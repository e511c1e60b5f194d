"""BERT encoder (no pooler), with HF `transformers` parameter names, and the BERT layer used in the DyHead tower."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from glipjax.models import layers as L


class BertSelfAttention(nnx.Module):
  def __init__(self, cfg, *, dtype, param_dtype, rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    h = cfg.hidden_size
    self.query = L.Linear(h, h, axes=("embed", "heads"), **kw)
    self.key = L.Linear(h, h, axes=("embed", "heads"), **kw)
    self.value = L.Linear(h, h, axes=("embed", "heads"), **kw)
    self.num_heads = cfg.num_heads
    self.dropout = nnx.Dropout(cfg.attention_dropout, rngs=rngs)


class BertSelfOutput(nnx.Module):
  def __init__(self, cfg, in_features, *, dtype, param_dtype, rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    in_axis = "heads" if in_features == cfg.hidden_size else "mlp"
    self.dense = L.Linear(in_features, cfg.hidden_size, axes=(in_axis, "embed"), **kw)
    self.LayerNorm = L.LayerNorm(cfg.hidden_size, epsilon=cfg.layer_norm_eps, **kw)
    self.dropout = nnx.Dropout(cfg.hidden_dropout, rngs=rngs)

  def __call__(self, x, residual, *, deterministic):
    return self.LayerNorm(self.dropout(self.dense(x), deterministic=deterministic) + residual)


class BertAttention(nnx.Module):
  def __init__(self, cfg, *, dtype, param_dtype, rngs):
    self.self = BertSelfAttention(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.output = BertSelfOutput(cfg, cfg.hidden_size, dtype=dtype, param_dtype=param_dtype, rngs=rngs)


class BertIntermediate(nnx.Module):
  def __init__(self, cfg, *, dtype, param_dtype, rngs):
    self.dense = L.Linear(cfg.hidden_size, cfg.intermediate_size, axes=("embed", "mlp"), dtype=dtype,
                          param_dtype=param_dtype, rngs=rngs)


class BertLayer(nnx.Module):
  """Post-LN transformer layer. `attn_clamp` clamps the scaled scores before masking, as GLIP's tower layer does
  (fixture README §4.5); the language backbone itself uses None."""

  def __init__(self, cfg, *, attn_clamp: float | None = None, dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.attention = BertAttention(cfg, **kw)
    self.intermediate = BertIntermediate(cfg, **kw)
    self.output = BertSelfOutput(cfg, cfg.intermediate_size, **kw)
    self.attn_clamp = attn_clamp

  def __call__(self, hidden: jax.Array, attention_mask: jax.Array, *, deterministic: bool = True) -> jax.Array:
    sa = self.attention.self
    b, t, c = hidden.shape
    heads = sa.num_heads
    split = lambda y: y.reshape(b, t, heads, c // heads)
    q, k, v = split(sa.query(hidden)), split(sa.key(hidden)), split(sa.value(hidden))
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(jnp.asarray(c // heads, scores_dtype := q.dtype))
    if self.attn_clamp is not None:
      scores = jnp.clip(scores, -self.attn_clamp, self.attn_clamp)
    # transformers >= 4.31 adds (1 - mask) * finfo.min; older versions used -10000 (same softmax here).
    scores = scores + (1.0 - attention_mask[:, None, None, :].astype(scores_dtype)) * jnp.finfo(scores_dtype).min
    probs = sa.dropout(jax.nn.softmax(scores, axis=-1), deterministic=deterministic)
    context = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, t, c)
    hidden = self.attention.output(context, hidden, deterministic=deterministic)
    inter = jax.nn.gelu(self.intermediate.dense(hidden), approximate=False)
    return self.output(inter, hidden, deterministic=deterministic)


class BertEmbeddings(nnx.Module):
  def __init__(self, cfg, *, dtype, param_dtype, rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.word_embeddings = L.Embed(cfg.vocab_size, cfg.hidden_size, **kw)
    self.position_embeddings = L.Embed(cfg.max_position_embeddings, cfg.hidden_size, axes=(None, "embed"), **kw)
    self.token_type_embeddings = L.Embed(cfg.type_vocab_size, cfg.hidden_size, axes=(None, "embed"), **kw)
    self.LayerNorm = L.LayerNorm(cfg.hidden_size, epsilon=cfg.layer_norm_eps, **kw)
    self.dropout = nnx.Dropout(cfg.hidden_dropout, rngs=rngs)

  def __call__(self, input_ids, token_type_ids, *, deterministic):
    positions = jnp.arange(input_ids.shape[1])[None]
    x = self.word_embeddings(input_ids) + self.position_embeddings(positions) + \
        self.token_type_embeddings(token_type_ids)
    return self.dropout(self.LayerNorm(x), deterministic=deterministic)


class BertEncoder(nnx.Module):
  def __init__(self, cfg, *, dtype, param_dtype, rngs):
    self.layer = nnx.List([BertLayer(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
                           for _ in range(cfg.num_layers)])


class BertModel(nnx.Module):
  """`input_ids`/`attention_mask` [B, T] -> last hidden layer [B, T, H]. Names follow HF `BertModel`."""

  def __init__(self, cfg, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.embeddings = BertEmbeddings(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.encoder = BertEncoder(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array, token_type_ids: jax.Array | None = None, *,
               deterministic: bool = True) -> jax.Array:
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    x = self.embeddings(input_ids, token_type_ids, deterministic=deterministic)
    for layer in self.encoder.layer:
      x = layer(x, attention_mask, deterministic=deterministic)
    return x
