"""Optax optimiser with parameter groups declared in the config (big_vision-style path patterns).

A parameter's path is its module path joined by "/" (`language_backbone/encoder/layer/0/attention/self/query/
kernel`, `head/bias0`). `optim.trainable` and `optim.frozen` are regular expressions matched against the whole
path: a parameter trains when it matches a `trainable` pattern and no `frozen` one. Frozen parameters are left
out of differentiation and of the optimizer (no moments), so they come out of training bit for bit as they went
in. `optim.lr_multipliers` scales the learning rate of the first pattern a path matches (GLIP: the language
backbone x0.1). Biases, norms and scalars (< 2 dims) get no weight decay.
"""
from __future__ import annotations

import re
from typing import Any

import jax
import optax

from glipjax.config_utils import ConfigError


def param_path(key_path) -> str:
  """"head/bias0" for a parameter's key path in an `nnx.State` (the Variable's trailing `.value` dropped)."""
  names = [str(getattr(k, "key", getattr(k, "name", k))) for k in key_path]
  return "/".join(names[:-1] if names and names[-1] == "value" else names)


def param_paths(params) -> Any:
  """The tree of `params` with each leaf replaced by its path."""
  return jax.tree_util.tree_map_with_path(lambda kp, _: param_path(kp), params)


def _matches(patterns, path: str) -> bool:
  return any(re.fullmatch(p, path) for p in patterns)


def _check_patterns(cfg) -> None:
  for key in ("trainable", "frozen"):
    for p in cfg[key]:
      try:
        re.compile(p)
      except re.error as e:
        raise ConfigError(f"optim.{key} pattern {p!r} is not a regular expression: {e}") from None


def trainable_mask(cfg, params) -> Any:
  """A tree of bools like `params`: True where the parameter trains (see the module docstring)."""
  _check_patterns(cfg)
  mask = jax.tree.map(lambda path: _matches(cfg.trainable, path) and not _matches(cfg.frozen, path),
                      param_paths(params))
  if not any(jax.tree.leaves(mask)):
    raise ConfigError(f"no parameter trains: optim.trainable={tuple(cfg.trainable)} with "
                     f"optim.frozen={tuple(cfg.frozen)} selects none")
  return mask


def partition(params, mask) -> tuple[Any, Any]:
  """(trainable, frozen): two trees like `params`, each with `optax.MaskedNode()` where the other has the leaf."""
  pick = lambda keep: jax.tree.map(lambda m, p: p if m == keep else optax.MaskedNode(), mask, params)
  return pick(True), pick(False)


def combine(mask, trainable, frozen) -> Any:
  """The inverse of `partition`."""
  return jax.tree.map(lambda m, t, f: t if m else f, mask, trainable, frozen)


def lr_multiplier(cfg, path: str) -> float:
  for pattern, factor in cfg.lr_multipliers:
    if re.fullmatch(pattern, path):
      return float(factor)
  return 1.0


def schedule(cfg, num_steps: int, base_lr: float) -> optax.Schedule:
  warmup = optax.linear_schedule(base_lr * 1e-3, base_lr, max(cfg.warmup_steps, 1))
  if cfg.schedule == "multistep":
    after = optax.piecewise_constant_schedule(
        base_lr, {int(f * num_steps) - cfg.warmup_steps: cfg.decay_factor for f in cfg.decay_at})
  elif cfg.schedule == "cosine":
    after = optax.cosine_decay_schedule(base_lr, max(num_steps - cfg.warmup_steps, 1), alpha=0.01)
  elif cfg.schedule == "constant":
    after = optax.constant_schedule(base_lr)
  else:
    raise ValueError(f"optim.schedule must be 'multistep', 'cosine' or 'constant', got {cfg.schedule!r}")
  return optax.join_schedules([warmup, after], [cfg.warmup_steps])


def make_optimizer(cfg, num_steps: int, trainable) -> optax.GradientTransformation:
  """The optimizer of the trainable partition (`partition(params, trainable_mask(...))[0]`): AdamW per learning-
  rate group, after global-norm clipping of the trainable gradients."""
  paths = param_paths(trainable)
  factors = sorted({lr_multiplier(cfg, p) for p in jax.tree.leaves(paths)})
  labels = jax.tree.map(lambda p: f"lr_x{lr_multiplier(cfg, p):g}", paths)
  decay_mask = jax.tree.map(lambda v: v.ndim >= 2, trainable)

  def adamw(lr_factor):
    return optax.adamw(schedule(cfg, num_steps, cfg.learning_rate * lr_factor), b1=cfg.b1, b2=cfg.b2,
                       weight_decay=cfg.weight_decay, mask=decay_mask)

  return optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm),
                     optax.multi_transform({f"lr_x{f:g}": adamw(f) for f in factors}, labels))
