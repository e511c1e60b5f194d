"""PyTorch-layout state dicts <-> glipjax NNX modules, by attribute name.

Module attribute names mirror the official state-dict names, so the mapping is generic: walk the dotted key
through the module tree (integers index `nnx.List`s, or the leading axis of a scanned `Stack`), then convert the leaf by the owning layer's type. Only
names that cannot mirror (torch `Sequential` indices, wrapper prefixes) need regex renames, and those live
next to the model that needs them (glipjax/interop/official.py, glipjax/interop/hf.py).
"""
from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from glipjax.models.layers import Stack

# torch leaf name -> (our attribute, torch->ours array transform), per layer type.
_LINEAR = {"weight": ("kernel", lambda w: w.T)}
_CONV = {"weight": ("kernel", lambda w: w.transpose(2, 3, 1, 0))}  # OIHW -> HWIO
_NORM = {"weight": ("scale", lambda w: w)}
_EMBED = {"weight": ("embedding", lambda w: w)}


def _leaf_rules(owner: Any) -> Mapping[str, tuple[str, Any]]:
  if isinstance(owner, nnx.Linear):
    return _LINEAR
  if isinstance(owner, nnx.Conv):
    return _CONV
  if isinstance(owner, (nnx.LayerNorm, nnx.GroupNorm)):
    return _NORM
  if isinstance(owner, nnx.Embed):
    return _EMBED
  return {}


def _walk(module: Any, parts: Sequence[str], key: str) -> tuple[Any, int | None]:
  """(owner module, index into the leading axis of a stacked `Stack` on the way, or None)."""
  node, index = module, None
  for part in parts:
    try:
      if isinstance(node, Stack) and part.isdigit():  # layer i of scanned layers: a slice of stacked params
        index, node = node.flat_index(int(part))
      else:
        node = node[int(part)] if part.isdigit() else getattr(node, part)
    except (AttributeError, IndexError, KeyError, TypeError):
      raise KeyError(f"state-dict key {key!r}: the model has no submodule {part!r} "
                     f"under {type(node).__name__}") from None
  return node, index


def _rename(key: str, renames: Sequence[tuple[str, str]]) -> str:
  for pattern, replacement in renames:
    key = re.sub(pattern, replacement, key)
  return key


def load_torch_state(module: nnx.Module, state: Mapping[str, Any], *, prefix: str = "",
                     renames: Sequence[tuple[str, str]] = (), ignore: Sequence[str] = (),
                     strict: bool = True, unknown: list[str] | None = None) -> list[str]:
  """Assigns a torch-layout state dict into `module` in place.

  Keys not starting with `prefix` are not considered; the prefix is stripped, keys matching an `ignore` regex
  are skipped, then `renames` (regex, replacement) apply in order. Every assignment is shape-checked. With
  `strict`, every parameter of `module` must be assigned exactly once. A key the module has no parameter for
  raises, or is appended to `unknown` when a list is given. Returns the (renamed) keys assigned.
  """
  assigned: dict[tuple, str] = {}
  stacked: dict[tuple, tuple[nnx.Variable, dict[int, np.ndarray]]] = {}  # slices of stacked params
  for raw_key, value in state.items():
    if not raw_key.startswith(prefix):
      continue
    key = raw_key[len(prefix):]
    if any(re.search(p, key) for p in ignore):
      continue
    key = _rename(key, renames)
    *parts, leaf = key.split(".")
    try:
      owner, index = _walk(module, parts, raw_key)
      name, transform = _leaf_rules(owner).get(leaf, (leaf, lambda w: w))
      var = getattr(owner, name, None)
      if not isinstance(var, nnx.Variable):
        raise KeyError(f"state-dict key {raw_key!r}: {type(owner).__name__} has no parameter {name!r}")
    except KeyError:
      if unknown is None:
        raise
      unknown.append(raw_key)
      continue
    array = np.asarray(transform(np.asarray(value)))
    shape = tuple(var.shape)[1:] if index is not None else tuple(var.shape)
    if array.shape != shape:
      if array.size == 1 and np.prod(shape) == 1:
        array = array.reshape(shape)  # torch scalars are often stored as shape (1,)
      else:
        raise ValueError(f"state-dict key {raw_key!r}: shape {np.shape(value)} (as {array.shape} in our layout) "
                         f"does not fit {'.'.join(parts + [name])} of shape {shape}")
    path = tuple(int(p) if p.isdigit() else p for p in parts) + (name,)
    if path in assigned:
      raise ValueError(f"state-dict keys {assigned[path]!r} and {raw_key!r} both map to {path}")
    assigned[path] = raw_key
    if index is None:
      var.set_value(jnp.asarray(array, var.dtype))  # also fills abstract (eval_shape) models
    else:
      stacked.setdefault(id(var), (var, {}))[1][index] = array
  missing = []
  for var, slices in stacked.values():
    if len(slices) == var.shape[0]:
      var.set_value(jnp.asarray(np.stack([slices[i] for i in range(var.shape[0])]), var.dtype))
    elif isinstance(var.get_value(), jax.Array):  # partial: keep the other layers' current values
      var.set_value(var.get_value().at[np.asarray(sorted(slices))].set(
          jnp.asarray(np.stack([slices[i] for i in sorted(slices)]), var.dtype)))
    else:
      missing.append(f"{sorted(set(range(var.shape[0])) - set(slices))} of a stacked parameter of shape {var.shape}")
  if strict:
    missing += [".".join(map(str, p)) for p in _torch_paths(module) if p not in assigned]
    if missing:
      raise KeyError(f"{len(missing)} parameters not found in the state dict (prefix {prefix!r}): "
                     f"{missing[:10]}{' ...' if len(missing) > 10 else ''}")
  return [".".join(map(str, p)) for p in assigned]


def _torch_paths(module: nnx.Module):
  """Our parameter paths with each stacked parameter expanded into one path per layer index (as import
  assigns them)."""
  for path, var in nnx.to_flat_state(nnx.state(module, nnx.Param)):
    parts = [str(p) for p in path]
    for i, expanded in _unstack(module, parts, var.shape):
      yield tuple(int(p) if p.isdigit() else p for p in expanded)


def _unstack(module: nnx.Module, parts: list[str], shape) -> list[tuple[int | None, list[str]]]:
  """[(layer index or None, path with `Stack.layers` replaced by that index)] for one of our parameter paths."""
  node = module
  for pos, part in enumerate(parts[:-1]):
    if isinstance(node, Stack):  # parts[pos] is "layers", then the member index when the stack has members
      m = node.members
      if m == 1:
        return [(i, parts[:pos] + [str(i)] + parts[pos + 1:]) for i in range(shape[0])]
      j = int(parts[pos + 1])
      return [(i, parts[:pos] + [str(i * m + j)] + parts[pos + 2:]) for i in range(shape[0])]
    node = node[int(part)] if part.isdigit() else getattr(node, part)
  return [(None, parts)]


def torch_state_from_module(module: nnx.Module, *, prefix: str = "",
                            renames: Sequence[tuple[str, str]] = ()) -> dict[str, np.ndarray]:
  """The inverse of `load_torch_state`: our parameters as a torch-layout state dict (numpy arrays).

  `renames` map *our* dotted names to torch names (the reverse of the import renames).
  """
  out: dict[str, np.ndarray] = {}
  for path, var in nnx.to_flat_state(nnx.state(module, nnx.Param)):
    parts = [str(p) for p in path]
    owner, _ = _walk(module, parts[:-1], ".".join(parts))
    value = var.get_value()
    if isinstance(value, jax.ShapeDtypeStruct):  # abstract model: a zero-stride view carries the shape for free
      full = np.lib.stride_tricks.as_strided(np.zeros((), value.dtype), value.shape, (0,) * len(value.shape))
    else:
      full = np.asarray(value)
    for index, torch_parts in _unstack(module, parts, full.shape):
      array = full if index is None else full[index]
      leaf = torch_parts[-1]
      for torch_leaf, (ours, _) in _leaf_rules(owner).items():
        if ours == leaf:
          leaf = torch_leaf
          if isinstance(owner, nnx.Linear):
            array = array.T
          elif isinstance(owner, nnx.Conv):
            array = array.transpose(3, 2, 0, 1)  # HWIO -> OIHW
      out[prefix + _rename(".".join(torch_parts[:-1] + [leaf]), renames)] = array
  return out
