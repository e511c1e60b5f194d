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
  layers     leading axis of parameters stacked by `Stack` (scanned layers; replicated unless a rule maps it)
  None       replicated (small tables, scalars)

Activations are constrained with `glipjax.sharding.constrain` under the names batch / length / height / width /
embed / conv_out (no-ops outside an `activation_rules` context).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from glipjax.config_utils import ConfigError

Axes = tuple[str | None, ...]

default_kernel_init = nnx.initializers.lecun_normal()


def _uniform(bound: float):
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def torch_default_init(fan_in: int) -> dict:
  """`kernel_init`/`bias_init` of PyTorch's nn.Linear / nn.Conv2d reset_parameters (kaiming-uniform with a=sqrt(5),
  i.e. U(+-1/sqrt(fan_in)), and biases U(+-1/sqrt(fan_in))): what the official GLIP model's Swin, tower BERT layers,
  DyReLU, text projection and DCN offset convs start from. `fan_in` = in_features (x kernel area for a conv)."""
  return dict(kernel_init=_uniform(fan_in ** -0.5), bias_init=_uniform(fan_in ** -0.5))


# HF BertPreTrainedModel._init_weights: Linear weights N(0, 0.02), zero biases (the language backbone).
BERT_INIT = dict(kernel_init=nnx.initializers.normal(0.02), bias_init=nnx.initializers.zeros_init())


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


def conv3x3_as_matmul(conv: nnx.Conv, x: jax.Array) -> jax.Array:
  """`conv(x)` for a 3x3, stride-1, padding-1 `nnx.Conv`, computed as one matmul over the 9 shifted copies of x
  (im2col). Inside a scanned layer (a while loop) XLA:CPU runs a convolution's backward pass ~10x slower than
  outside it (the GLIP-T(C) DyHead offset convs: 1.1 s of a 6.5 s step, jaxlib 0.10.2), while dots keep their
  speed there; outside a loop the two formulations are within 30%."""
  if tuple(conv.kernel_size) != (3, 3) or conv.strides not in (1, (1, 1)) or conv.padding != ((1, 1), (1, 1)):
    raise ValueError(f"conv3x3_as_matmul needs a 3x3, stride-1, padding-1 conv, got kernel {conv.kernel_size}, "
                     f"strides {conv.strides}, padding {conv.padding}")
  b, h, w, c = x.shape
  dtype = conv.dtype or x.dtype
  xp = jnp.pad(x.astype(dtype), ((0, 0), (1, 1), (1, 1), (0, 0)))
  cols = jnp.concatenate([xp[:, i:i + h, j:j + w] for i in range(3) for j in range(3)], axis=-1)
  out = jnp.einsum("bhwk,ko->bhwo", cols, conv.kernel[...].reshape(9 * c, -1).astype(dtype))
  return out if conv.bias is None else out + conv.bias[...].astype(dtype)


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


# `model.remat`: what a rematerialised block keeps from its forward pass for the backward pass.
REMAT_POLICIES = {
    "none": None,                                                        # no rematerialisation
    "full": jax.checkpoint_policies.nothing_saveable,                    # keep only the block inputs
    "dots_saveable": jax.checkpoint_policies.dots_saveable,              # keep matmul outputs, recompute the rest
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # + attention
}


def check_remat(policy: str) -> str:
  if policy not in REMAT_POLICIES:
    raise ConfigError(f"model.remat must be one of {sorted(REMAT_POLICIES)}, got {policy!r}")
  return policy


def remat_call(module: nnx.Module, fn: Callable, *args, policy: str = "none", random: bool = True):
  """`fn(module, *args)`, rematerialised with `policy` (see REMAT_POLICIES): the backward pass recomputes the
  block's activations instead of storing them. With `random` (dropout on), the RNG counters advanced inside are
  written back to `module`; deterministic calls leave the module's non-parameter state alone (it is unread and
  may be abstract, and a module closed over by jax.jit stays usable)."""
  if check_remat(policy) == "none":
    return fn(module, *args)
  graphdef, params, others = nnx.split(module, nnx.Param, ...)

  def pure(params, scanned_others, *args):
    m = nnx.merge(graphdef, params, scanned_others if random else others)
    return fn(m, *args), (nnx.state(m, nnx.Not(nnx.Param)) if random else None)

  out, new_others = jax.checkpoint(pure, policy=REMAT_POLICIES[policy])(params, others if random else None, *args)
  if random:
    nnx.update(module, new_others)
  return out


class Stack(nnx.Module):
  """`length` identical layers built by `make(rngs)`, their parameters stacked on a leading "layers" axis, so
  `scan` traces and compiles one layer (or group) for all of them. Interop addresses layer i of the stack by
  the index i, like an nnx.List (glipjax/interop/torch_layout.py).

  With `members` > 1, `make` returns an nnx.List of that many (different) modules and the stack stands for
  their flat concatenation, as a torch `Sequential([a, b, c] * length)`: flat index i is member i % members of
  layer i // members (the DyHead tower's [VLFuse, BERT layer, DyConv] repeats)."""

  def __init__(self, make: Callable[[nnx.Rngs], nnx.Module], length: int, *, members: int = 1,
               rngs: nnx.Rngs):
    @nnx.split_rngs(splits=length)
    @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def create(rngs):
      return make(rngs)

    self.layers = create(rngs)
    self.length, self.members = length, members
    if members > 1 and not (isinstance(self.layers, nnx.List) and len(self.layers) == members):
      raise ValueError(f"Stack(members={members}) needs `make` to return an nnx.List of {members} modules")

  def flat_index(self, i: int) -> tuple[int, nnx.Module]:
    """(layer index, stacked module) that flat (torch) index i addresses."""
    if not 0 <= i < self.length * self.members:
      raise IndexError(i)
    return i // self.members, (self.layers[i % self.members] if self.members > 1 else self.layers)

  def scan(self, body: Callable, carry, xs=None, *, group: int = 1, remat: str = "none", random: bool = True):
    """carry = body(layers, carry, xs_of_those_layers) over consecutive groups of `group` layers (a list of
    modules; Swin alternates shifted windows in pairs); a final shorter group takes the remainder. `xs`: arrays
    with a leading axis of `length`. Each group is rematerialised with `remat`. With `random` (dropout on) the
    per-layer RNG streams are scanned too and written back; otherwise they are left alone (unread, possibly
    abstract), as in `remat_call`."""
    graphdef, params, others = nnx.split(self.layers, nnx.Param, ...)

    def step(ps, os, carry, xs_g):  # ps, os: per-layer parameter / other-state trees of one group
      layers = [nnx.merge(graphdef, p, o if random else others) for p, o in zip(ps, os)]
      carry = body(layers, carry, xs_g)
      if not random:
        return carry, os
      return carry, [nnx.state(m, nnx.Not(nnx.Param)) for m in layers]  # RNG counters advanced by dropout

    if check_remat(remat) != "none":
      step = jax.checkpoint(step, policy=REMAT_POLICIES[remat], prevent_cse=False)
    full = self.length // group
    take = lambda tree, lo, hi: jax.tree.map(lambda a: a[lo:hi], tree)
    # Member i of every group as its own scanned input (layers i, i + group, ...): the body then reads each
    # layer's parameters as a scan input, which JAX's partial evaluation forwards to the backward pass instead of
    # saving a stacked copy of every weight as a residual (as it does for a slice taken inside the body).
    members = lambda tree: [jax.tree.map(lambda a: a[i:full * group:group], tree) for i in range(group)]
    grouped = lambda tree: jax.tree.map(lambda a: a.reshape(full, group, *a.shape[1:]), take(tree, 0, full * group))
    scanned_others = others if random else None
    new_others = []
    if full:
      def scan_step(c, inputs):
        ps, os, x = inputs
        return step(ps, os, c, x)
      os_in = members(scanned_others) if random else [None] * group
      carry, os = jax.lax.scan(scan_step, carry, (members(params), os_in, grouped(xs)))
      if random:  # back to layer order: [full, group, ...] -> [full * group, ...]
        new_others.append(jax.tree.map(lambda *a: jnp.stack(a, 1).reshape(full * group, *a[0].shape[1:]), *os))
    if full * group < self.length:
      lo, n = full * group, self.length - full * group
      rest = lambda tree: [jax.tree.map(lambda a: a[lo + i], tree) for i in range(n)]
      carry, os = step(rest(params), rest(scanned_others) if random else [None] * n, carry, take(xs, lo, None))
      if random:
        new_others.append(jax.tree.map(lambda *a: jnp.stack(a), *os))
    if random:
      nnx.update(self.layers, jax.tree.map(lambda *a: jnp.concatenate(a), *new_others))
    return carry
