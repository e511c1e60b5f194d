"""The deformable conv's two formulations: the Pallas kernel (interpreted on CPU) equals the XLA one in values and
gradients, lowers to a Triton kernel for GPU, and keeps the whole model equal to the official fixture."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import glipjax  # noqa: F401
from configs.model import glip_model
from glipjax.config_utils import ConfigError
from glipjax.models import dcn, dcn_pallas
from glipjax.models.dyhead import DyConv
from glipjax.tools import parity

# (H, W, Ho, Wo, stride, C): square/odd sizes, the stride-2 (finer level) branch, channels that are not a power
# of two and more output pixels than one program (pixel padding).
SHAPES = [(10, 8, 5, 4, 2, 16), (12, 11, 12, 11, 1, 20)]


def _inputs(h, w, ho, wo, c, dtype=jnp.float32):
  k = jax.random.split(jax.random.PRNGKey(h * w + c), 5)
  x = jax.random.normal(k[0], (2, h, w, c), dtype)
  offset = jax.random.normal(k[1], (2, ho, wo, 18)) * 4  # many taps land outside the image
  mask = jax.nn.sigmoid(jax.random.normal(k[2], (2, ho, wo, 9)))
  return x, offset, mask, jax.random.normal(k[3], (3, 3, c, 3), dtype), jax.random.normal(k[4], (3,), dtype)


@pytest.mark.parametrize("h,w,ho,wo,stride,c", SHAPES)
def test_pallas_deform_conv_equals_the_xla_formulation_in_values_and_gradients(h, w, ho, wo, stride, c):
  args = _inputs(h, w, ho, wo, c)
  loss = lambda fn: lambda *a: jnp.sum(jnp.sin(fn(*a, stride=stride)))
  np.testing.assert_allclose(dcn_pallas.deform_conv(*args, stride=stride), dcn.deform_conv(*args, stride=stride),
                             atol=1e-5)
  grads = [jax.jit(jax.grad(loss(fn), argnums=range(5)))(*args) for fn in (dcn.deform_conv, dcn_pallas.deform_conv)]
  for name, a, b in zip(("x", "offset", "mask", "kernel", "bias"), *grads):
    np.testing.assert_allclose(b, a, atol=5e-5, rtol=1e-5, err_msg=name)


def test_pallas_deform_conv_in_bfloat16_is_close_to_float32():
  args = _inputs(9, 7, 9, 7, 16)
  low = dcn_pallas.deform_conv(*[a.astype(jnp.bfloat16) for a in args])
  assert low.dtype == jnp.bfloat16
  np.testing.assert_allclose(low.astype(jnp.float32), dcn.deform_conv(*args), atol=0.25, rtol=0.05)


def test_pallas_deform_conv_lowers_to_a_triton_kernel_for_gpu():
  """Lowered for CUDA without a GPU: the forward and backward Pallas kernels (atomic adds included) pass the
  Pallas -> Triton lowering, and nothing falls back to the interpreter."""
  x, offset, mask, kernel, _ = _inputs(12, 10, 12, 10, 32)
  loss = lambda *a: jnp.sum(dcn_pallas.deform_conv(*a, None, interpret=False) ** 2)
  text = jax.jit(jax.grad(loss, argnums=range(4))).trace(x, offset, mask, kernel).lower(
      lowering_platforms=("cuda",)).as_text()
  kernels = re.findall(r'custom_call @__gpu\$xla\.gpu\.triton.*?name = "(\w+)"', text)
  assert {"dcn_sample_columns", "dcn_sample_columns_bwd"} <= set(kernels), kernels


def test_dcn_impl_is_checked():
  """A config error (commands print it in one line and exit 2), raised when the model is built."""
  cfg = glip_model("glip_t_c").dyhead
  cfg.update(dcn_impl="cuda")
  with pytest.raises(ConfigError, match=r"dyhead.dcn_impl must be one of \['pallas', 'xla'\], got 'cuda'"):
    DyConv(16, cfg, rngs=nnx.Rngs(0))


@pytest.mark.slow  # one more forward+loss compile of the fixture model, with the interpreted kernels (~50 s)
def test_parity_tool_passes_with_the_pallas_deformable_conv(reference_dir, capsys):
  assert parity.main(["--reference", str(reference_dir), "--dcn-impl", "pallas"]) == 0
  out = capsys.readouterr().out
  assert re.search(r"^tower5_dyconv_visual_l0\s.*yes$", out, re.M), out
