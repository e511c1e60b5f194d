"""Config files (ml_collections `get_config(arg)`), overrides, and the resolved copy saved in the workdir."""
from __future__ import annotations

import ast
import json
import pathlib

import ml_collections


def save_config(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> None:
  path = pathlib.Path(workdir) / "config.json"
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(config.to_json_best_effort(indent=2))


def load_workdir_config(workdir: str | pathlib.Path) -> ml_collections.ConfigDict:
  """The resolved config a training run saved; evaluate and predict rebuild the model from it. Keys added to
  the defaults since the run was configured take their default values (the run's own values are kept)."""
  path = pathlib.Path(workdir) / "config.json"
  if not path.is_file():
    raise FileNotFoundError(f"{path} not found: is {workdir} a glipjax training workdir?")
  from configs import base
  return ml_collections.ConfigDict(_with_defaults(json.loads(path.read_text()), base.get_config().to_dict()))


def _with_defaults(saved: dict, defaults: dict) -> dict:
  out = dict(saved)
  for key, value in defaults.items():
    if key not in out:
      out[key] = value
    elif isinstance(value, dict) and isinstance(out[key], dict):
      out[key] = _with_defaults(out[key], value)
  return out


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict) -> ml_collections.ConfigDict:
  """Sets dotted keys (`{"train.num_steps": 10}`); an unknown key is an error, as on the command line."""
  config = ml_collections.ConfigDict(config.to_dict())
  for dotted, value in overrides.items():
    node, *_ = config, None
    parts = dotted.split(".")
    for p in parts[:-1]:
      if p not in node:
        raise KeyError(f"unknown config key {dotted!r} (no {p!r})")
      node = node[p]
    if parts[-1] not in node:
      raise KeyError(f"unknown config key {dotted!r}; known keys here: {sorted(node.keys())}")
    node[parts[-1]] = value
  return config


def split_config_flags(argv: list[str]) -> tuple[list[str], dict]:
  """(the other arguments, {dotted key: value}) of a command line with `--config.a.b=value` overrides of a
  workdir's saved config (values as Python literals, else strings), as `glipjax.train` takes them."""
  rest, overrides = [], {}
  args = iter(argv)
  for arg in args:
    if not arg.startswith("--config."):
      rest.append(arg)
      continue
    key, eq, value = arg[len("--config."):].partition("=")
    if not eq:
      value = next(args, None)
      if value is None:
        raise ValueError(f"{arg} needs a value: {arg}=VALUE")
    try:
      overrides[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      overrides[key] = value
  return rest, overrides
