"""Parameter counts of a GLIP config, computed abstractly (`nnx.eval_shape`: no weights are allocated).

  python -m glipjax.summary --config configs/glip_t.py:c
  python -m glipjax.summary --config configs/glip_l.py --config.model.dyhead.num_layers=4

Prints the count per top-level module (and the head's tower) and ends with `total_params=<N>`. The totals of
GLIP-T(C) and GLIP-L equal the official state-dict counts (231,780,222 and 430,422,384; buffers excluded).
"""
from __future__ import annotations

import jax
import ml_collections
import numpy as np
from flax import nnx

import glipjax  # noqa: F401  (flax config before any module is built)
from glipjax.models.glip import GLIP

# (label, attribute path) rows of the table; the tower is listed inside the head.
ROWS = (("backbone", "backbone"), ("fpn", "fpn"), ("language_backbone", "language_backbone"), ("head", "head"),
        ("  head.dyhead_tower", "head.dyhead_tower"))


def abstract_model(model_cfg: ml_collections.ConfigDict) -> GLIP:
  """GLIP with jax.ShapeDtypeStruct leaves in place of arrays."""
  return nnx.eval_shape(lambda: GLIP(model_cfg, rngs=nnx.Rngs(0)))


def param_stats(module: nnx.Module) -> tuple[int, int]:
  """(number of parameters, bytes) of the nnx.Param leaves of `module` (concrete or abstract)."""
  leaves = jax.tree.leaves(nnx.state(module, nnx.Param))
  return (sum(int(np.prod(x.shape)) for x in leaves),
          sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in leaves))


def param_counts(model: GLIP) -> dict[str, int]:
  """Parameter count per row of ROWS, plus "total"."""
  counts = {}
  for label, path in ROWS:
    sub = model
    for name in path.split("."):
      sub = getattr(sub, name)
    counts[label.strip()] = param_stats(sub)[0]
  counts["total"] = param_stats(model)[0]
  return counts


def summarize(model_cfg: ml_collections.ConfigDict) -> str:
  model = abstract_model(model_cfg)
  total, nbytes = param_stats(model)
  counts = param_counts(model)
  lines = [f"GLIP variant={model_cfg.variant} param_dtype={model_cfg.param_dtype}",
           f"{'module':<22} {'params':>14} {'share':>7}"]
  for label, _ in ROWS:
    n = counts[label.strip()]
    lines.append(f"{label:<22} {n:>14,} {100 * n / total:>6.1f}%")
  lines.append(f"{'total':<22} {total:>14,}   ({nbytes / 2**20:,.1f} MiB)")
  lines.append(f"total_params={total}")
  return "\n".join(lines)


def main(argv) -> None:
  del argv
  print(summarize(_CONFIG.value.model))


if __name__ == "__main__":
  from absl import app
  from ml_collections import config_flags

  _CONFIG = config_flags.DEFINE_config_file("config", None, "a config file, e.g. configs/glip_t.py:c",
                                            lock_config=True)
  app.run(main)
