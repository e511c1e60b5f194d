"""Config files (ml_collections `get_config(arg)`), overrides, and the resolved copy saved in the workdir."""
from __future__ import annotations

import ast
import json
import pathlib

import ml_collections


class ConfigError(ValueError):
  """A config that cannot run as asked (an unknown training mode, patterns that select no parameter, a checkpoint
  that does not fit the model): the user's to fix, so commands print it in one line and exit 2."""


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


def parse_value(key: str, current, text: str):
  """A command-line value for the key holding `current`, parsed by that key's type as ml_collections'
  `--config.key=value` flags do: bools true/false/1/0, numbers, tuples as Python literals, strings verbatim."""
  def bad(kind):
    return ValueError(f"--config.{key}={text}: expected {kind} (the key holds {current!r})")
  if isinstance(current, bool):
    lowered = text.strip().lower()
    if lowered not in ("true", "false", "1", "0"):
      raise bad("true or false")
    return lowered in ("true", "1")
  if isinstance(current, (int, float)):
    try:
      return int(text) if isinstance(current, int) else float(text)
    except ValueError:
      raise bad("an int" if isinstance(current, int) else "a float") from None
  if isinstance(current, str):
    return text
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    if current is None:
      return text
    raise bad("a Python literal") from None
  if isinstance(current, (tuple, list)) and not isinstance(value, (tuple, list)):
    raise bad("a tuple")
  return tuple(value) if isinstance(current, tuple) and isinstance(value, list) else value


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict) -> ml_collections.ConfigDict:
  """Sets dotted keys (`{"train.num_steps": 10}`) on a copy. An unknown key is a KeyError; a string value for a
  non-string key is parsed by the key's type (`parse_value`, as on the command line) and a value of the wrong
  type is a ValueError naming the key."""
  config = ml_collections.ConfigDict(config.to_dict())
  for dotted, value in overrides.items():
    node = config
    parts = dotted.split(".")
    for p in parts[:-1]:
      if p not in node or not isinstance(node[p], ml_collections.ConfigDict):
        raise KeyError(f"unknown config key {dotted!r} (no {p!r})")
      node = node[p]
    if parts[-1] not in node:
      raise KeyError(f"unknown config key {dotted!r}; known keys here: {sorted(node.keys())}")
    current = node[parts[-1]]
    if isinstance(value, str) and not isinstance(current, str):
      value = parse_value(dotted, current, value)
    try:
      node[parts[-1]] = value
    except TypeError as e:
      raise ValueError(f"config key {dotted!r}: {e}") from None
  return config


def split_config_flags(argv: list[str]) -> tuple[list[str], dict[str, str]]:
  """(the other arguments, {dotted key: value text}) of a command line with `--config.a.b=value` overrides (the
  syntax of `glipjax.train`); `apply_overrides` parses each text by its key's type."""
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
    overrides[key] = value
  return rest, overrides
