"""Layer constructors that attach logical axis names to every parameter.

Model code names *logical* axes only ("embed", "mlp", "heads", ...); the config's `sharding.rules` map them
to mesh axes (see glipjax/sharding.py). Layouts: Linear kernels are (in, out); conv kernels are HWIO and
activations NHWC. Torch import/export transposes (glipjax/interop).

Logical axis vocabulary (keep it small):
  embed      model width of a transformer / feature channels of a Linear input or output
  mlp        hidden units of an MLP (fc1 output, fc2 input)
  heads      flattened attention projection dim (num_heads * head_dim)
  vocab      token embedding rows
  conv_in    conv input channels;  conv_out   conv output channels
  norm       LayerNorm / GroupNorm scale and bias
  None       replicated (small tables, scalars)
"""
from __future__ import annotations

from typing import Any, Sequence

import jax.numpy as jnp
from flax import nnx

Axes = tuple[str | None, ...]

default_kernel_init = nnx.initializers.lecun_normal()


def partitioned(init, axes: Axes):
  """An initializer that records logical axis names as the variable's sharding metadata."""
  return nnx.with_partitioning(init, axes)


def Linear(in_features: int, out_features: int, *, axes: Axes = ("embed", "mlp"), use_bias: bool = True,
           kernel_init=default_kernel_init, bias_init=nnx.initializers.zeros_init(),
           dtype: Any = jnp.float32, param_dtype: Any = jnp.float32, rngs: nnx.Rngs) -> nnx.Linear:
  return nnx.Linear(in_features, out_features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
                    kernel_init=partitioned(kernel_init, axes), bias_init=partitioned(bias_init, axes[-1:]),
                    rngs=rngs)


def Conv(in_features: int, out_features: int, kernel_size: int | Sequence[int], *, strides: int = 1,
         padding: Any = "SAME", use_bias: bool = True, axes: Axes = ("conv_in", "conv_out"),
         kernel_init=default_kernel_init, bias_init=nnx.initializers.zeros_init(),
         dtype: Any = jnp.float32, param_dtype: Any = jnp.float32, rngs: nnx.Rngs) -> nnx.Conv:
  """NHWC conv with an HWIO kernel; `axes` names the (in, out) channel axes."""
  ks = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
  return nnx.Conv(in_features, out_features, kernel_size=ks, strides=strides, padding=padding,
                  use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
                  kernel_init=partitioned(kernel_init, (None, None) + tuple(axes)),
                  bias_init=partitioned(bias_init, tuple(axes)[-1:]), rngs=rngs)


def LayerNorm(num_features: int, *, epsilon: float = 1e-5, axis_name: str | None = "norm",
              dtype: Any = jnp.float32, param_dtype: Any = jnp.float32, rngs: nnx.Rngs) -> nnx.LayerNorm:
  return nnx.LayerNorm(num_features, epsilon=epsilon, dtype=dtype, param_dtype=param_dtype,
                       scale_init=partitioned(nnx.initializers.ones_init(), (axis_name,)),
                       bias_init=partitioned(nnx.initializers.zeros_init(), (axis_name,)), rngs=rngs)


def GroupNorm(num_features: int, num_groups: int, *, epsilon: float = 1e-5, dtype: Any = jnp.float32,
              param_dtype: Any = jnp.float32, rngs: nnx.Rngs) -> nnx.GroupNorm:
  return nnx.GroupNorm(num_features, num_groups=num_groups, epsilon=epsilon, dtype=dtype,
                       param_dtype=param_dtype,
                       scale_init=partitioned(nnx.initializers.ones_init(), ("norm",)),
                       bias_init=partitioned(nnx.initializers.zeros_init(), ("norm",)), rngs=rngs)


def Embed(num_embeddings: int, features: int, *, axes: Axes = ("vocab", "embed"),
          embedding_init=nnx.initializers.normal(0.02), dtype: Any = jnp.float32,
          param_dtype: Any = jnp.float32, rngs: nnx.Rngs) -> nnx.Embed:
  return nnx.Embed(num_embeddings, features, dtype=dtype, param_dtype=param_dtype,
                   embedding_init=partitioned(embedding_init, axes), rngs=rngs)


def param(rngs: nnx.Rngs, init, shape: Sequence[int], axes: Axes, dtype: Any = jnp.float32) -> nnx.Param:
  """A raw parameter (layer scales, bias tables, ...) with logical axis names."""
  return nnx.Param(init(rngs.params(), tuple(shape), dtype), out_sharding=tuple(axes))
