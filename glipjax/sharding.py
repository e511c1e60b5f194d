"""Mesh and shardings as config data: logical axis names on parameters -> mesh axes via `config.mesh.rules`."""
from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P


def make_mesh(mesh_cfg) -> Mesh:
  devices = jax.devices()
  shape = list(mesh_cfg.shape)
  if shape.count(-1) > 1:
    raise ValueError(f"mesh.shape {shape}: at most one axis may be -1")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    shape[shape.index(-1)] = len(devices) // known
  if math.prod(shape) != len(devices):
    raise ValueError(f"mesh.shape {tuple(mesh_cfg.shape)} does not use the {len(devices)} devices")
  return Mesh(np.asarray(devices).reshape(shape), tuple(mesh_cfg.axes),
              axis_types=(AxisType.Auto,) * len(shape))


def logical_to_spec(axes, shape, mesh: Mesh, rules) -> P:
  """Maps logical names to mesh axes; a dimension that the mesh axis does not divide stays replicated."""
  table = dict(rules)
  used, out = set(), []
  for name, dim in zip(axes or (None,) * len(shape), shape):
    mesh_axis = table.get(name) if name is not None else None
    if mesh_axis is None or mesh_axis in used or dim % mesh.shape[mesh_axis]:
      out.append(None)
    else:
      out.append(mesh_axis)
      used.add(mesh_axis)
  return P(*out)


_ACTIVATION_RULES: contextvars.ContextVar = contextvars.ContextVar("activation_rules", default=None)


@contextlib.contextmanager
def activation_rules(rules):
  """While tracing under this context, `constrain` maps logical activation axes with `rules` (the config's
  `mesh.rules`); outside it `constrain` is a no-op, so models run unchanged on one device and in tests."""
  token = _ACTIVATION_RULES.set(tuple(tuple(r) for r in rules))
  try:
    yield
  finally:
    _ACTIVATION_RULES.reset(token)


def constrain(x: jax.Array, axes) -> jax.Array:
  """Sharding constraint on an activation by logical axis names (e.g. ("batch", "length", "embed")), resolved
  against the mesh set by `jax.set_mesh` and the rules of the enclosing `activation_rules` context."""
  rules = _ACTIVATION_RULES.get()
  mesh = jax.sharding.get_abstract_mesh()
  if rules is None or mesh.empty:
    return x
  return jax.lax.with_sharding_constraint(x, logical_to_spec(axes, x.shape, mesh, rules))


def param_shardings(abstract_params: Any, mesh: Mesh, rules) -> Any:
  """NamedShardings mirroring a pytree of nnx Variables (params, optimizer moments) and plain arrays: a
  Variable is sharded by its logical axes, anything else (step counters, ...) replicated."""
  def one(x):
    if isinstance(x, nnx.Variable):
      shape = getattr(x.get_value(), "shape", None)  # optax MaskedNodes (other param groups) have no shape
      spec = P() if shape is None else logical_to_spec(x.get_metadata().get("out_sharding"), shape, mesh, rules)
      return jax.tree.map(lambda _: NamedSharding(mesh, spec), x)
    return NamedSharding(mesh, P())
  return jax.tree.map(one, abstract_params, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh: Mesh, batch_axes) -> NamedSharding:
  return NamedSharding(mesh, P(tuple(a for a in batch_axes if a in mesh.axis_names)))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_batch(local: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
  """Per-process numpy batches -> global jax Arrays sharded over the batch axes."""
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}
