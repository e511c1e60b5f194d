"""What a run is made of, shared by training, evaluation, prediction and the benchmarks: the mesh, the model graph,
the abstract train state and its shardings, the anchors, and the tokenizer.

  setup = runtime.build(config)
  tokenizer = runtime.prepare_tokenizer(config, workdir)
"""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from glipjax import modes, optim, sharding
from glipjax.data import pipeline
from glipjax.models.glip import GLIP
from glipjax.ops import anchors as anchor_ops
from glipjax.text import tokenizers


@dataclasses.dataclass
class Setup:
  """Everything static about a run: mesh, model graph, abstract state and its shardings."""
  config: Any
  mesh: Any
  graphdef: Any
  tx: optax.GradientTransformation   # over the trainable partition (optim.partition(params, trainable)[0])
  trainable: Any                       # bools like the parameters: True where a parameter trains
  abstract_state: Any
  state_shardings: Any
  rest_shardings: Any
  init: Any            # jitted () -> (state, rest)
  init_rest: Any       # jitted () -> rest alone (dropout RNG state...): XLA drops the unused parameter init

  def anchors_for(self, image_hw) -> tuple[np.ndarray, tuple[int, ...]]:
    """(anchors [A, 4], per-level counts) of a canvas (H, W): a batch's own, one per static input shape."""
    return anchors_for(self.config, image_hw)


def anchors_for(config, image_hw) -> tuple[np.ndarray, tuple[int, ...]]:
  a = config.model.anchors
  return anchor_ops.for_canvas(tuple(int(x) for x in image_hw), tuple(a.strides), tuple(a.sizes))


def prepare_tokenizer(config, workdir: pathlib.Path) -> tokenizers.Tokenizer:
  d = config.data
  if d.tokenizer == "sentencepiece" and d.sentencepiece_vocab_size > 0:
    path = workdir / "tokenizer.model"
    if not path.exists() and jax.process_index() == 0:
      tokenizers.train_sentencepiece(pipeline.iter_captions(d, "train"), workdir / "tokenizer",
                                     d.sentencepiece_vocab_size)
    return tokenizers.SentencePieceTokenizer(path)
  return tokenizers.build_tokenizer(d.tokenizer, d.tokenizer_path)


def state_from_params(config, tx: optax.GradientTransformation, trainable, params) -> dict:
  """A train state at step 0 around `params`: a fresh optimizer state of the trainable parameters (`trainable`: the
  mask), and EMA = params when the run keeps one."""
  state = dict(step=jnp.zeros((), jnp.int32), params=params,
               opt_state=tx.init(optim.partition(params, trainable)[0]))
  if config.optim.ema_decay > 0:
    state["ema"] = params
  return state


def build(config) -> Setup:
  """The run's Setup; `config`'s `train.mode` is applied first (`Setup.config` is the resolved config)."""
  config = modes.resolve(config)
  accum = config.train.grad_accum_steps
  if accum < 1 or config.train.global_batch_size % accum:
    raise ValueError(f"train.grad_accum_steps={accum} must be >= 1 and divide train.global_batch_size="
                     f"{config.train.global_batch_size}")
  mesh = sharding.make_mesh(config.mesh)
  rules = [tuple(r) for r in config.mesh.rules]
  new_model = lambda: GLIP(config.model, rngs=nnx.Rngs(params=config.seed, dropout=config.seed + 1))
  with jax.set_mesh(None):  # shapes alone, whatever mesh the caller is in (another run's, say)
    abstract_model = nnx.eval_shape(new_model)
  graphdef, abstract_params, _ = nnx.split(abstract_model, nnx.Param, ...)
  trainable = optim.trainable_mask(config.optim, abstract_params)
  tx = optim.make_optimizer(config.optim, config.train.num_steps, optim.partition(abstract_params, trainable)[0])

  def init():
    _, params, rest = nnx.split(new_model(), nnx.Param, ...)
    return state_from_params(config, tx, trainable, params), rest

  with jax.set_mesh(None):
    abstract_state, abstract_rest = jax.eval_shape(init)
  state_shardings = sharding.param_shardings(abstract_state, mesh, rules)
  rest_shardings = jax.tree.map(lambda _: sharding.replicated(mesh), abstract_rest)
  init_fn = jax.jit(init, out_shardings=(state_shardings, rest_shardings))
  init_rest = jax.jit(lambda: nnx.split(new_model(), nnx.Param, ...)[2], out_shardings=rest_shardings)
  return Setup(config, mesh, graphdef, tx, trainable, abstract_state, state_shardings, rest_shardings, init_fn,
               init_rest)
