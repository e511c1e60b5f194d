"""Optax optimiser with GLIP's parameter groups: language backbone lr x factor, no weight decay on biases / norms /
scalars (anything with < 2 dims), frozen `head.cls_logits` (the unused 80-way classifier)."""
from __future__ import annotations

import jax
import optax
from flax import nnx


def param_group(names: tuple[str, ...]) -> str:
  names = list(names)
  if names[:2] == ["head", "cls_logits"]:
    return "frozen"
  return "language" if names[0] == "language_backbone" else "default"


def schedule(cfg, num_steps: int, base_lr: float) -> optax.Schedule:
  warmup = optax.linear_schedule(base_lr * 1e-3, base_lr, max(cfg.warmup_steps, 1))
  if cfg.schedule == "multistep":
    after = optax.piecewise_constant_schedule(
        base_lr, {int(f * num_steps) - cfg.warmup_steps: cfg.decay_factor for f in cfg.decay_at})
  elif cfg.schedule == "cosine":
    after = optax.cosine_decay_schedule(base_lr, max(num_steps - cfg.warmup_steps, 1), alpha=0.01)
  else:
    raise ValueError(f"optim.schedule must be 'multistep' or 'cosine', got {cfg.schedule!r}")
  return optax.join_schedules([warmup, after], [cfg.warmup_steps])


def make_optimizer(cfg, num_steps: int, params: nnx.State) -> optax.GradientTransformation:
  labels = jax.tree_util.tree_map_with_path(
      lambda kp, _: param_group(tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in kp)), params)
  decay_mask = jax.tree.map(lambda v: v.ndim >= 2, params)

  def adamw(lr_factor):
    return optax.adamw(schedule(cfg, num_steps, cfg.learning_rate * lr_factor), b1=cfg.b1, b2=cfg.b2,
                       weight_decay=cfg.weight_decay, mask=decay_mask)

  return optax.chain(
      optax.clip_by_global_norm(cfg.grad_clip_norm),
      optax.multi_transform({"default": adamw(1.0), "language": adamw(cfg.language_lr_factor),
                             "frozen": optax.set_to_zero()}, labels))
