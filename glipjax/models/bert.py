"""BERT encoder (no pooler), with HF `transformers` parameter names, and the BERT layer used in the DyHead tower."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from glipjax.models import layers as L
from glipjax.sharding import constrain

TOKENS = ("batch", "length", "embed")


def _init(style: str, fan_in: int) -> dict:
  """Linear initialisers: "bert" (HF BERT's N(0, 0.02), the language backbone) or "torch" (PyTorch's defaults:
  the official tower's BertEncoderLayers are plain torch modules, never passed through HF's _init_weights)."""
  if style not in ("bert", "torch"):
    raise ValueError(f"BERT init must be 'bert' or 'torch', got {style!r}")
  return L.BERT_INIT if style == "bert" else L.torch_default_init(fan_in)


class BertSelfAttention(nnx.Module):
  def __init__(self, cfg, *, init, dtype, param_dtype, rngs):
    h = cfg.hidden_size
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs, **_init(init, h))
    self.query = L.Linear(h, h, axes=("embed", "heads"), **kw)
    self.key = L.Linear(h, h, axes=("embed", "heads"), **kw)
    self.value = L.Linear(h, h, axes=("embed", "heads"), **kw)
    self.num_heads = cfg.num_heads
    self.dropout = nnx.Dropout(cfg.attention_dropout, rngs=rngs)


class BertSelfOutput(nnx.Module):
  def __init__(self, cfg, in_features, *, init, dtype, param_dtype, rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    in_axis = "heads" if in_features == cfg.hidden_size else "mlp"
    self.dense = L.Linear(in_features, cfg.hidden_size, axes=(in_axis, "embed"), **_init(init, in_features), **kw)
    self.LayerNorm = L.LayerNorm(cfg.hidden_size, epsilon=cfg.layer_norm_eps, **kw)
    self.dropout = nnx.Dropout(cfg.hidden_dropout, rngs=rngs)

  def __call__(self, x, residual, *, deterministic):
    return self.LayerNorm(self.dropout(self.dense(x), deterministic=deterministic) + residual)


class BertAttention(nnx.Module):
  def __init__(self, cfg, *, init, dtype, param_dtype, rngs):
    self.self = BertSelfAttention(cfg, init=init, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.output = BertSelfOutput(cfg, cfg.hidden_size, init=init, dtype=dtype, param_dtype=param_dtype, rngs=rngs)


class BertIntermediate(nnx.Module):
  def __init__(self, cfg, *, init, dtype, param_dtype, rngs):
    self.dense = L.Linear(cfg.hidden_size, cfg.intermediate_size, axes=("embed", "mlp"),
                          **_init(init, cfg.hidden_size), dtype=dtype, param_dtype=param_dtype, rngs=rngs)


class BertLayer(nnx.Module):
  """Post-LN transformer layer. `attn_clamp` clamps the scaled scores before masking, as GLIP's tower layer does
  (fixture README §4.5); the language backbone itself uses None. `init`: see `_init`."""

  def __init__(self, cfg, *, attn_clamp: float | None = None, init: str = "bert", dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    kw = dict(init=init, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
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
    # Scores, mask and softmax in float32 whatever the compute dtype.
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / jnp.sqrt(jnp.float32(c // heads))
    if self.attn_clamp is not None:
      scores = jnp.clip(scores, -self.attn_clamp, self.attn_clamp)
    # transformers >= 4.31 adds (1 - mask) * finfo.min; older versions used -10000 (same softmax here).
    scores = scores + (1.0 - attention_mask[:, None, None, :].astype(jnp.float32)) * jnp.finfo(jnp.float32).min
    probs = sa.dropout(jax.nn.softmax(scores, axis=-1), deterministic=deterministic).astype(v.dtype)
    context = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, t, c)
    hidden = constrain(self.attention.output(context, hidden, deterministic=deterministic), TOKENS)
    inter = jax.nn.gelu(self.intermediate.dense(hidden), approximate=False)
    return constrain(self.output(inter, hidden, deterministic=deterministic), TOKENS)


class BertEmbeddings(nnx.Module):
  def __init__(self, cfg, *, dtype, param_dtype, rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    # A tower trained from scratch can start its words far apart (a large std) so that their identities survive
    # the sum with the position/type embeddings and the first layers' averaging; BERT's own init is 0.02.
    word_init = nnx.initializers.normal(cfg.get("word_embedding_init_std", 0.02))
    self.word_embeddings = L.Embed(cfg.vocab_size, cfg.hidden_size, embedding_init=word_init, **kw)
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
  """`layer`: an nnx.List of BertLayers, or with `scan` one `layers.Stack` of them (same state-dict names)."""

  def __init__(self, cfg, *, scan: bool = False, remat: str = "none", dtype, param_dtype, rngs):
    make = lambda r: BertLayer(cfg, dtype=dtype, param_dtype=param_dtype, rngs=r)
    self.layer = L.Stack(make, cfg.num_layers, rngs=rngs) if scan else nnx.List(
        [make(rngs) for _ in range(cfg.num_layers)])
    self.remat = L.check_remat(remat)

  def __call__(self, x, attention_mask, *, deterministic):
    run = lambda layer, x, mask: layer(x, mask, deterministic=deterministic)
    if isinstance(self.layer, L.Stack):
      return self.layer.scan(lambda layers, x, _: run(layers[0], x, attention_mask), x, remat=self.remat,
                             random=not deterministic)
    for layer in self.layer:
      x = L.remat_call(layer, run, x, attention_mask, policy=self.remat, random=not deterministic)
    return x


class BertModel(nnx.Module):
  """`input_ids`/`attention_mask` [B, T] -> last hidden layer [B, T, H]. Names follow HF `BertModel`.
  `scan` stacks the layers and runs them with lax.scan; `remat` is a `layers.REMAT_POLICIES` name per layer."""

  def __init__(self, cfg, *, scan: bool = False, remat: str = "none", dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.embeddings = BertEmbeddings(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.encoder = BertEncoder(cfg, scan=scan, remat=remat, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array, token_type_ids: jax.Array | None = None, *,
               deterministic: bool = True) -> jax.Array:
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    x = constrain(self.embeddings(input_ids, token_type_ids, deterministic=deterministic), TOKENS)
    return self.encoder(x, attention_mask, deterministic=deterministic)
