"""Ablation sweeps as data (big_vision style): a sweep file holds a base config and a list of runs, each a dict of
dotted config overrides built with `sweep`, `product`, `zipped`, `chain` and `seeds`:

  # configs/sweeps/depth.py
  from configs import tiny
  from glipjax.sweeps import product, seeds, sweep

  def get_config():
    return tiny.get_config()

  def get_sweep():
    return product(sweep("model.dyhead.num_layers", [1, 2, 3]), seeds(3))

Every run is `python -m glipjax.train --config <sweep file> --workdir <root>/<run name> --config.<key>=<value>...`,
so a run's overrides are type-checked by ml_collections exactly as on the command line. The run name comes from the
overrides (`num_layers=2.seed=1`); runs that differ only by seed form one *setting*, which the report averages.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import json
import pathlib
import re
from collections.abc import Iterable, Sequence

import ml_collections

SEED_KEY = "seed"
FINAL_METRICS = "final_metrics.json"
STATUS_FILE = "sweep_status.json"   # written by the sweep launcher when a run fails
MANIFEST = "sweep.json"             # in the sweep root: every run's name, setting and overrides (for the report)


def sweep(key: str, values: Iterable) -> list[dict]:
  """One axis: `[{key: v} for v in values]`."""
  return [{key: v} for v in values]


def product(*axes: Sequence[dict]) -> list[dict]:
  """Every combination of one element per axis (the first axis varies slowest)."""
  return [_merge(combo) for combo in itertools.product(*axes)]


def zipped(*axes: Sequence[dict]) -> list[dict]:
  """Element i of every axis together; the axes must be equally long."""
  if len({len(a) for a in axes}) > 1:
    raise ValueError(f"zipped axes differ in length: {[len(a) for a in axes]}")
  return [_merge(combo) for combo in zip(*axes)]


def chain(*axes: Sequence[dict]) -> list[dict]:
  """The axes one after another, e.g. one-factor-at-a-time ablations around a base (`[{}]`)."""
  return [dict(d) for axis in axes for d in axis]


def seeds(n: int, key: str = SEED_KEY) -> list[dict]:
  return sweep(key, range(n))


def _merge(dicts: Iterable[dict]) -> dict:
  out = {}
  for d in dicts:
    clash = set(out) & set(d)
    if clash:
      raise ValueError(f"keys set twice in one run: {sorted(clash)}")
    out.update(d)
  return out


def _short(value) -> str:
  text = f"{value:g}" if isinstance(value, float) else str(value) if not isinstance(value, (tuple, list)) else "x".join(map(str, value))
  return re.sub(r"[^A-Za-z0-9_.+-]", "", text.replace(" ", "")) or "none"


def run_name(overrides: dict) -> str:
  """`num_layers=2.seed=1`: the last component of each key (the full dotted key where two would collide) and
  the value; the seed last. No overrides: `base`."""
  if not overrides:
    return "base"
  keys = sorted(overrides, key=lambda k: (k == SEED_KEY, list(overrides).index(k)))
  last = [k.rsplit(".", 1)[-1] for k in keys]
  parts = [f"{(k if last.count(s) > 1 else s)}={_short(overrides[k])}" for k, s in zip(keys, last)]
  return ".".join(parts if keys[0] != SEED_KEY else ["base", *parts])


def setting_name(overrides: dict) -> str:
  """The run name without the seed: the runs of one setting share it."""
  return run_name({k: v for k, v in overrides.items() if k != SEED_KEY})


def flag_value(value) -> str:
  """A value as `--config.key=<text>` takes it (ml_collections parses it by the key's type)."""
  if isinstance(value, bool):
    return "true" if value else "false"
  if isinstance(value, (tuple, list)):
    return "(" + ",".join(repr(v) for v in value) + ("," if len(value) == 1 else "") + ")"
  return str(value)


@dataclasses.dataclass(frozen=True)
class Run:
  name: str
  setting: str
  overrides: dict
  workdir: pathlib.Path

  def train_args(self, sweep_file: str) -> list[str]:
    return ["--config", str(sweep_file), "--workdir", str(self.workdir),
            *[f"--config.{k}={flag_value(v)}" for k, v in self.overrides.items()]]

  def status(self) -> str:
    """'finished' (final metrics written), 'failed' (the launcher saw it exit non-zero), 'interrupted' (started:
    it resumes from its checkpoints) or 'pending'."""
    final = self.final_metrics()
    if final is not None and not final.get("preempted"):
      return "finished"
    if (self.workdir / STATUS_FILE).is_file():
      return json.loads((self.workdir / STATUS_FILE).read_text()).get("status", "failed")
    return "interrupted" if self.workdir.is_dir() else "pending"

  def final_metrics(self) -> dict | None:
    """final_metrics.json's contents (None if absent or unreadable, e.g. cut short while written)."""
    try:
      return json.loads((self.workdir / FINAL_METRICS).read_text())
    except (OSError, ValueError):
      return None


@dataclasses.dataclass(frozen=True)
class Sweep:
  path: pathlib.Path
  base: ml_collections.ConfigDict
  runs: list[Run]


def load_module(path: str | pathlib.Path):
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"sweep file {path} not found")
  spec = importlib.util.spec_from_file_location(f"glipjax_sweep_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  for fn in ("get_config", "get_sweep"):
    if not callable(getattr(module, fn, None)):
      raise ValueError(f"sweep file {path} defines no {fn}()")
  return module


def check_overrides(base: ml_collections.ConfigDict, overrides: dict, where: str) -> None:
  """Every key exists in the base config and every value has its type (as `--config.key=` would demand)."""
  for key, value in overrides.items():
    node = base
    parts = key.split(".")
    for i, p in enumerate(parts):
      if not isinstance(node, ml_collections.ConfigDict) or p not in node:
        raise ValueError(f"{where}: unknown config key {key!r} (no {'.'.join(parts[:i + 1])!r})")
      node = node[p]
    if node is not None and not _same_type(node, value):
      raise ValueError(f"{where}: {key}={value!r} is a {type(value).__name__}, the config holds a "
                       f"{type(node).__name__} ({node!r})")


def _same_type(old, new) -> bool:
  if isinstance(old, bool) or isinstance(new, bool):
    return isinstance(old, bool) and isinstance(new, bool)
  if isinstance(old, float):
    return isinstance(new, (int, float))
  if isinstance(old, (tuple, list)):
    return isinstance(new, (tuple, list))
  return isinstance(new, type(old))


def load(path: str | pathlib.Path, root: str | pathlib.Path) -> Sweep:
  """The sweep file's runs with their workdirs under `root`; overrides are checked against its base config and
  run names must be distinct."""
  module = load_module(path)
  base = module.get_config()
  runs, seen = [], {}
  for i, overrides in enumerate(module.get_sweep()):
    check_overrides(base, overrides, f"{path}, run {i}")
    name = run_name(overrides)
    if name in seen:
      raise ValueError(f"{path}: runs {seen[name]} and {i} are both named {name!r}: their overrides are equal")
    seen[name] = i
    runs.append(Run(name, setting_name(overrides), dict(overrides), pathlib.Path(root) / name))
  if not runs:
    raise ValueError(f"{path}: get_sweep() returned no runs")
  return Sweep(pathlib.Path(path), base, runs)


def write_manifest(sweep: Sweep, root: str | pathlib.Path) -> pathlib.Path:
  path = pathlib.Path(root) / MANIFEST
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(dict(sweep_file=str(sweep.path), runs=[
      dict(name=r.name, setting=r.setting, overrides=r.overrides) for r in sweep.runs]), indent=2))
  return path
