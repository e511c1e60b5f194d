"""The modulated deformable 3x3 conv of glipjax/models/dcn.py with its sampling as a Pallas kernel (Triton, GPU).

Same function, same sampling plan (`dcn.sampling_plan`: the official CUDA kernel's positions, zero padding and
mask); only the gather is different. XLA lowers the 36 per-pixel gathers of `dcn.deform_conv` to generic gather
loops and its backward pass to a scatter-add per corner. Here one program handles a block of output pixels:
  forward   columns[p, k*C:(k+1)*C] = sum over the 4 corners of weight * x[index]       (then one XLA matmul)
  backward  d_weight[corner, p] = <d_columns[p, k], x[index]>;  d_x[index] += weight * d_columns[p, k]  (atomic)
so the backward pass reads each sampled row once for both gradients and never materialises per-corner tensors.
The matmul with the kernel weights stays in XLA (cuBLAS/cuDNN tiles it better than a hand-written loop), and the
columns are recomputed in the backward pass instead of stored, as in the XLA formulation.

Off GPU the kernel runs in the Pallas interpreter (for tests: slow, exact). TPU has no general gather in Mosaic:
use `model.dyhead.dcn_impl = "xla"` there.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pl_triton

from glipjax.config_utils import ConfigError
from glipjax.models.dcn import sampling_plan

PIXELS_PER_PROGRAM = 64  # Triton blocks are powers of two; 64 rows x C channels per gather keeps registers in check
TAPS, CORNERS = 9, 4


def deform_conv(x: jax.Array, offset: jax.Array, mask: jax.Array, kernel: jax.Array, bias: jax.Array | None,
                stride: int = 1, *, interpret: bool | None = None) -> jax.Array:
  """As `dcn.deform_conv`. interpret: run the Pallas interpreter (default: everywhere but GPU)."""
  if interpret is None:
    if jax.default_backend() == "tpu":
      raise ConfigError("the Pallas deformable conv is a Triton (GPU) kernel; on TPU set model.dyhead.dcn_impl='xla'")
    interpret = jax.default_backend() != "gpu"
  fn = jax.checkpoint(functools.partial(_deform_conv, stride=stride, interpret=interpret),
                      policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable)
  return fn(x, offset, mask, kernel, bias)


def _deform_conv(x, offset, mask, kernel, bias, stride, interpret):
  b, h, w, c = x.shape
  ho, wo = offset.shape[1:3]
  n = ho * wo
  index, weight = sampling_plan(offset, mask, (h, w), stride)  # 4 corners x [B,Ho,Wo,9]
  # Kernel layout: row 4 * tap + corner, pixels along the last axis (contiguous loads per row); pixels padded to
  # whole programs with weight 0, channels to a power of two (zero channels, zero kernel rows).
  n_pad = -(-n // PIXELS_PER_PROGRAM) * PIXELS_PER_PROGRAM
  c_pad = max(16, 1 << (c - 1).bit_length())
  rows = lambda parts: jnp.pad(jnp.stack(parts, -1).reshape(b, n, TAPS * CORNERS).transpose(0, 2, 1),
                               ((0, 0), (0, 0), (0, n_pad - n)))
  flat = jnp.pad(x.reshape(b, h * w, c), ((0, 0), (0, 0), (0, c_pad - c)))
  columns = sample_columns(flat, rows(index), rows(weight), interpret)[:, :n]  # [B, N, 9 * c_pad]
  weights = jnp.pad(kernel.reshape(TAPS, c, -1).astype(x.dtype), ((0, 0), (0, c_pad - c), (0, 0)))
  out = jnp.einsum("bnk,ko->bno", columns, weights.reshape(TAPS * c_pad, -1)).reshape(b, ho, wo, -1)
  return out if bias is None else out + bias.astype(out.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def sample_columns(flat: jax.Array, index: jax.Array, weight: jax.Array, interpret: bool) -> jax.Array:
  """flat [B, HW, C]; index int32 / weight float32 [B, 36, N] (row 4 * tap + corner) -> columns [B, N, 9C]:
  columns[b, p, k*C:(k+1)*C] = sum_corner weight[b, 4k + corner, p] * flat[b, index[b, 4k + corner, p]]."""
  b, hw, c = flat.shape
  n = index.shape[-1]
  return pl.pallas_call(
      _columns_kernel, out_shape=jax.ShapeDtypeStruct((b, n, TAPS * c), flat.dtype),
      grid=(b, n // PIXELS_PER_PROGRAM),
      in_specs=[_image_spec(hw, c), _plan_spec(), _plan_spec()],
      out_specs=pl.BlockSpec((1, PIXELS_PER_PROGRAM, TAPS * c), lambda i, j: (i, j, 0)),
      interpret=interpret, compiler_params=_compiler_params(interpret), name="dcn_sample_columns",
  )(flat, index, weight)


def _sample_columns_fwd(flat, index, weight, interpret):
  return sample_columns(flat, index, weight, interpret), (flat, index, weight)


def _sample_columns_bwd(interpret, residuals, d_columns):
  flat, index, weight = residuals
  b, hw, c = flat.shape
  n = index.shape[-1]
  d_weight, d_flat = pl.pallas_call(
      functools.partial(_backward_kernel, atomic=not interpret),
      out_shape=(jax.ShapeDtypeStruct(weight.shape, jnp.float32), jax.ShapeDtypeStruct((b, hw, c), jnp.float32)),
      grid=(b, n // PIXELS_PER_PROGRAM),
      in_specs=[_image_spec(hw, c), _plan_spec(), _plan_spec(),
                pl.BlockSpec((1, PIXELS_PER_PROGRAM, TAPS * c), lambda i, j: (i, j, 0)), _image_spec(hw, c)],
      out_specs=(_plan_spec(), _image_spec(hw, c)),
      input_output_aliases={4: 1},  # d_flat starts as zeros and every program adds into it
      interpret=interpret, compiler_params=_compiler_params(interpret), name="dcn_sample_columns_bwd",
  )(flat, index, weight, d_columns, jnp.zeros((b, hw, c), jnp.float32))
  return d_flat.astype(flat.dtype), np.zeros(index.shape, jax.dtypes.float0), d_weight.astype(weight.dtype)


sample_columns.defvjp(_sample_columns_fwd, _sample_columns_bwd)


def _columns_kernel(flat_ref, index_ref, weight_ref, columns_ref):
  c = flat_ref.shape[-1]
  for tap in range(TAPS):
    acc = jnp.zeros((PIXELS_PER_PROGRAM, c), jnp.float32)
    for corner in range(CORNERS):
      row = CORNERS * tap + corner
      sampled = flat_ref[0, index_ref[0, row, :], :].astype(jnp.float32)
      acc += sampled * weight_ref[0, row, :][:, None]
    columns_ref[0, :, tap * c:(tap + 1) * c] = acc.astype(columns_ref.dtype)


def _backward_kernel(flat_ref, index_ref, weight_ref, d_columns_ref, _, d_weight_ref, d_flat_ref, *, atomic):
  c = flat_ref.shape[-1]
  for tap in range(TAPS):
    grad = d_columns_ref[0, :, tap * c:(tap + 1) * c].astype(jnp.float32)
    for corner in range(CORNERS):
      row = CORNERS * tap + corner
      index = index_ref[0, row, :]
      sampled = flat_ref[0, index, :].astype(jnp.float32)
      d_weight_ref[0, row, :] = jnp.sum(sampled * grad, axis=1)
      contribution = grad * weight_ref[0, row, :][:, None]
      if atomic:  # programs of other pixel blocks (and other pixels of this one) add into the same input rows
        pl_triton.atomic_add(d_flat_ref, (0, index[:, None], jnp.arange(c)[None, :]), contribution)
      else:  # the interpreter runs programs one by one; its atomic add would drop repeated rows (a `set`)
        d_flat_ref[0] = d_flat_ref[0].at[index].add(contribution)


def _image_spec(hw, c):
  return pl.BlockSpec((1, hw, c), lambda i, j: (i, 0, 0))  # the whole image: any pixel may sample any row


def _plan_spec():
  return pl.BlockSpec((1, TAPS * CORNERS, PIXELS_PER_PROGRAM), lambda i, j: (i, 0, j))


def _compiler_params(interpret):
  return None if interpret else pl_triton.CompilerParams(num_warps=4, num_stages=1)
