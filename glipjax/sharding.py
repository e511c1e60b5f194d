"""Mesh and shardings as config data: logical axis names on parameters and activations -> mesh axes via
`config.mesh.rules`.

The mesh has named axes (`mesh.axes`, default data / fsdp / tensor). `mesh.shape` gives each axis's size within
a slice (TPU) or process group (-1 = the rest); `mesh.dcn_shape` multiplies it across slices or hosts joined by
the slower data-centre network, so the full axis size is shape * dcn_shape. A rule maps a logical name to one
mesh axis, a tuple of mesh axes (sharded over their product), or None (replicated).
"""
from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Any, Sequence

import jax
import numpy as np
from flax import nnx
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P


def _resolve(sizes: Sequence[int], total: int, name: str, unit: str) -> tuple[int, ...]:
  """Fills the one -1 of `sizes` so that their product is `total` (the number of `unit`)."""
  sizes = [int(s) for s in sizes]
  if sizes.count(-1) > 1 or any(s < 1 and s != -1 for s in sizes):
    raise ValueError(f"{name} {tuple(sizes)}: sizes must be >= 1, with at most one -1 (= the rest)")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes and total % known == 0:
    sizes[sizes.index(-1)] = total // known
  if math.prod(sizes) != total:
    raise ValueError(f"{name} {tuple(sizes)} does not fit the {total} {unit}: the sizes must multiply to {total}")
  return tuple(sizes)


def _granule_key(device) -> str:
  """What the data-centre network joins: TPU slices where devices know theirs, otherwise processes (hosts)."""
  return "slice_index" if hasattr(device, "slice_index") else "process_index"


def device_grid(mesh_cfg, devices: Sequence[Any] | None = None) -> np.ndarray:
  """The devices arranged as the mesh: shape[i] * dcn_shape[i] along axis i. Without a dcn factor the devices
  keep the order of `jax.devices()` (topology-aware on TPU); with one, each slice (or process) holds a
  contiguous block of shape `mesh.shape` and the blocks are tiled by `mesh.dcn_shape`, so only the dcn factors
  cross the slower network."""
  devices = list(jax.devices() if devices is None else devices)
  axes = tuple(mesh_cfg.axes)
  dcn = tuple(mesh_cfg.get("dcn_shape", (1,) * len(axes)))
  if not len(axes) == len(mesh_cfg.shape) == len(dcn):
    raise ValueError(f"mesh.axes {axes}, mesh.shape {tuple(mesh_cfg.shape)} and mesh.dcn_shape {dcn} must have "
                     "one entry per axis")
  if all(d == 1 for d in dcn):
    shape = _resolve(mesh_cfg.shape, len(devices), "mesh.shape", "devices")
    return mesh_utils.create_device_mesh(shape, devices)
  key = _granule_key(devices[0])
  granules = len({getattr(d, key) for d in devices})
  dcn = _resolve(dcn, granules, "mesh.dcn_shape", "slices" if key == "slice_index" else "processes")
  if len(devices) % granules:
    raise ValueError(f"{len(devices)} devices do not split evenly over {granules} groups by {key}")
  per_granule = len(devices) // granules
  shape = _resolve(mesh_cfg.shape, per_granule, "mesh.shape", f"devices of each of the {granules} dcn_shape groups")
  return mesh_utils.create_hybrid_device_mesh(shape, dcn, devices, process_is_granule=key == "process_index")


def make_mesh(mesh_cfg, devices: Sequence[Any] | None = None) -> Mesh:
  """The config's mesh (Auto axes: shardings come from jit in/out shardings and `constrain`); its rules are
  checked against the axis names here, so a typo fails at start-up rather than silently replicating."""
  rules = mesh_cfg.get("rules", ())
  check_rules(rules, tuple(mesh_cfg.axes))
  batch_rule = rules_table(rules).get("batch")
  if batch_rule is not None and tuple(mesh_cfg.get("batch_axes", batch_rule)) != batch_rule:
    raise ValueError(f"mesh.batch_axes {tuple(mesh_cfg.batch_axes)} (input batches) and the 'batch' rule "
                     f"{batch_rule} (activations) disagree: every step would reshard its inputs")
  grid = device_grid(mesh_cfg, devices)
  return Mesh(grid, tuple(mesh_cfg.axes), axis_types=(AxisType.Auto,) * grid.ndim)


def _mesh_axes(target) -> tuple[str, ...]:
  return () if target is None else (target,) if isinstance(target, str) else tuple(target)


def rules_table(rules) -> dict[str, tuple[str, ...]]:
  """{logical name: mesh axes}; a logical name may appear only once."""
  table: dict[str, tuple[str, ...]] = {}
  for name, target in rules:
    if name in table:
      raise ValueError(f"mesh.rules names {name!r} twice")
    table[name] = _mesh_axes(target)
  return table


def check_rules(rules, axis_names: Sequence[str]) -> None:
  for name, mesh_axes in rules_table(rules).items():
    unknown = [a for a in mesh_axes if a not in axis_names]
    if unknown:
      raise ValueError(f"mesh.rules maps {name!r} to {unknown}, not among the mesh axes {tuple(axis_names)}")


def logical_to_spec(axes, shape, mesh, rules) -> P:
  """PartitionSpec of an array whose dimensions have logical names `axes` (None = unnamed). Each dimension
  takes its rule's mesh axes in order, skipping an axis that an earlier dimension already uses, that has size
  1, or that would make the dimension's split uneven; so a dimension is sharded as far as it can be and never
  unevenly (e.g. "batch" -> ("data", "fsdp") over a batch of 8 on data=2, fsdp=8 gives just "data")."""
  table = rules_table(rules)
  axes = tuple(axes) if axes is not None else (None,) * len(shape)
  if len(axes) != len(shape):
    raise ValueError(f"logical axes {axes} do not match an array of shape {tuple(shape)}")
  used: set[str] = set()
  spec = []
  for name, dim in zip(axes, shape):
    chosen, ways = [], 1
    for mesh_axis in table.get(name, ()) if name is not None else ():
      size = mesh.shape[mesh_axis]
      if mesh_axis in used or size == 1 or dim % (ways * size):
        continue
      chosen.append(mesh_axis)
      ways *= size
    used.update(chosen)
    spec.append(None if not chosen else chosen[0] if len(chosen) == 1 else tuple(chosen))
  return P(*spec)


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
