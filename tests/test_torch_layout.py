"""The generic torch-layout <-> NNX mapping: transposes, list indexing, strictness, clear errors."""
import numpy as np
import pytest
from flax import nnx

import glipjax  # noqa: F401
from glipjax.interop.torch_layout import load_torch_state, torch_state_from_module
from glipjax.models import layers as L


class _Toy(nnx.Module):
  def __init__(self, rngs):
    self.fc = nnx.List([L.Linear(3, 4, rngs=rngs), L.Linear(4, 2, rngs=rngs)])
    self.conv = L.Conv(3, 5, 3, rngs=rngs)
    self.norm = L.LayerNorm(5, rngs=rngs)
    self.emb = L.Embed(7, 5, rngs=rngs)
    self.gamma = L.param(rngs, nnx.initializers.ones_init(), (5,), (None,))


def test_round_trip_and_layouts():
  src, dst = _Toy(nnx.Rngs(0)), _Toy(nnx.Rngs(1))
  sd = torch_state_from_module(src, prefix="m.")
  assert sd["m.fc.0.weight"].shape == (4, 3)          # torch Linear is (out, in)
  assert sd["m.conv.weight"].shape == (5, 3, 3, 3)    # OIHW
  assert set(sd) >= {"m.norm.weight", "m.emb.weight", "m.gamma"}
  load_torch_state(dst, {**sd, "other.x": np.zeros(1)}, prefix="m.")
  for a, b in zip(nnx.to_flat_state(nnx.state(src, nnx.Param)), nnx.to_flat_state(nnx.state(dst, nnx.Param))):
    np.testing.assert_array_equal(np.asarray(a[1][...]), np.asarray(b[1][...]))


def test_renames_ignore_and_errors():
  src = _Toy(nnx.Rngs(0))
  sd = torch_state_from_module(src)
  renamed = {k.replace("fc.", "mlp.fc."): v for k, v in sd.items()}
  renamed["buffer.index"] = np.zeros(3)
  load_torch_state(_Toy(nnx.Rngs(1)), renamed, renames=[(r"^mlp\.", "")], ignore=[r"^buffer\."])
  with pytest.raises(KeyError, match="not found"):
    load_torch_state(_Toy(nnx.Rngs(1)), {k: v for k, v in sd.items() if k != "gamma"})
  with pytest.raises(KeyError, match="no submodule"):
    load_torch_state(_Toy(nnx.Rngs(1)), {**sd, "head.weight": np.zeros(2)})
  bad = dict(sd, **{"fc.0.weight": np.zeros((3, 4))})
  with pytest.raises(ValueError, match="shape"):
    load_torch_state(_Toy(nnx.Rngs(1)), bad)
