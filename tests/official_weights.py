"""Random official GLIP state dicts for tests that need weights without training: every parameter of a config's
official state dict at a trained-like scale (weights ~ 1/sqrt(fan_in), norm scales 1 +- 0.3, biases and bias
tables +- 0.3, so every term of every layer shows in the outputs); buffers as the config computes them."""
import numpy as np
from flax import nnx

from glipjax.interop import official
from glipjax.models.glip import GLIP


def random_official_state(model_cfg, seed: int = 0) -> dict[str, np.ndarray]:
  shapes = official.export_official(nnx.eval_shape(lambda: GLIP(model_cfg, rngs=nnx.Rngs(0))), model_cfg)
  rng = np.random.default_rng(seed)
  out = {}
  for k, v in shapes.items():
    if v.dtype.kind != "f" or k.startswith("rpn.anchor_generator."):
      out[k] = np.ascontiguousarray(v)
    elif v.ndim >= 2 and "relative_position_bias_table" not in k:
      out[k] = (rng.normal(size=v.shape) / np.sqrt(np.prod(v.shape[1:]))).astype(np.float32)
    else:
      out[k] = ((k.endswith(".weight") and v.ndim == 1) + 0.3 * rng.normal(size=v.shape)).astype(np.float32)
  return out
