"""Sweep reports: every run folder's final and best evaluation metrics and its overrides, aggregated per setting
(mean ± std over seeds) into a Markdown table and CSVs, with matplotlib plots of the training curves and of the
final metrics. `python -m launch.report` is the command.

A sweep root holds sweep.json (written by `launch.sweep`: every run's name, setting and overrides, so pending runs
are listed too) and one folder per run; a root without sweep.json is read from its folders (any folder with a
config.json is a run; the setting is its name without `.seed=N`).
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import pathlib
import re
from collections.abc import Sequence

from glipjax import sweeps

MANIFEST = sweeps.MANIFEST
# The embedded task's figures (glipjax/evaluators/synthetic.py); other runs report their own eval metrics.
DEFAULT_METRICS = ("detection/AP50", "detection/text_blind/AP50", "grounding/AP50", "grounding/colour_swapped/AP50",
                   "grounding/absent_kinds/AP50")
_NOT_METRICS = ("skipped_examples",)


@dataclasses.dataclass
class RunResult:
  name: str
  setting: str
  overrides: dict
  status: str                     # finished | failed | interrupted | pending
  final: dict                     # flattened eval metrics of final_metrics.json
  best: dict                      # the best value of each eval metric over the run's evaluations
  wall_seconds: float | None
  curve: list[tuple[int, float]]  # (step, training loss)


def flatten_final(final: dict) -> dict[str, float]:
  """final_metrics.json -> {'detection/AP50': ..}: the nested evaluation figures only."""
  out = {}

  def walk(node, prefix):
    for k, v in node.items():
      if isinstance(v, dict):
        walk(v, f"{prefix}{k}/")
      elif prefix and isinstance(v, (int, float)) and not isinstance(v, bool):
        out[f"{prefix}{k}"] = float(v)
  walk({k: v for k, v in final.items() if isinstance(v, dict) and k not in _NOT_METRICS}, "")
  return out


def read_metrics_jsonl(path: pathlib.Path) -> tuple[list[tuple[int, float]], dict[str, float]]:
  """(training-loss curve, best value of each `eval/...` metric); unreadable lines (a run killed mid-write) are
  skipped."""
  curve, best = [], {}
  if not path.is_file():
    return curve, best
  for line in path.read_text().splitlines():
    try:
      row = json.loads(line)
    except ValueError:
      continue
    if "loss" in row:
      curve.append((int(row["step"]), float(row["loss"])))
    for k, v in row.items():
      if k.startswith("eval/") and isinstance(v, (int, float)) and math.isfinite(v):
        key = k[len("eval/"):]
        best[key] = max(best.get(key, -math.inf), float(v))
  return curve, best


def _setting_of(name: str) -> str:
  return re.sub(r"(^|\.)seed=\d+$", "", name) or "base"


def load_runs(root: str | pathlib.Path) -> list[RunResult]:
  root = pathlib.Path(root)
  if not root.is_dir():
    raise FileNotFoundError(f"sweep root {root} not found")
  if (root / MANIFEST).is_file():
    entries = json.loads((root / MANIFEST).read_text())["runs"]
  else:
    entries = [dict(name=d.name, setting=_setting_of(d.name), overrides={})
               for d in sorted(root.iterdir()) if (d / "config.json").is_file()]
  if not entries:
    raise ValueError(f"{root} holds no runs (no {MANIFEST}, no run folder with a config.json)")
  results = []
  for e in entries:
    run = sweeps.Run(e["name"], e["setting"], e.get("overrides", {}), root / e["name"])
    status, final = run.status(), run.final_metrics() or {}
    curve, best = read_metrics_jsonl(run.workdir / "metrics.jsonl")
    results.append(RunResult(run.name, run.setting, run.overrides, status,
                             flatten_final(final) if status == "finished" else {}, best,
                             final.get("wall_seconds"), curve))
  return results


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
  n = len(values)
  mean = sum(values) / n
  std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
  return mean, std


@dataclasses.dataclass
class SettingRow:
  setting: str
  overrides: dict                 # the overrides the setting's runs share (all but the seed)
  finished: int
  total: int
  stats: dict[str, tuple[float, float]]   # "final/<metric>" | "best/<metric>" -> (mean, std) over finished runs
  wall_seconds: float | None      # mean


def aggregate(results: Sequence[RunResult], metrics: Sequence[str]) -> list[SettingRow]:
  rows = []
  for setting in dict.fromkeys(r.setting for r in results):
    runs = [r for r in results if r.setting == setting]
    done = [r for r in runs if r.status == "finished"]
    stats = {}
    for kind in ("final", "best"):
      for m in metrics:
        vals = [getattr(r, kind)[m] for r in done if m in getattr(r, kind)]
        if vals:
          stats[f"{kind}/{m}"] = _mean_std(vals)
    walls = [r.wall_seconds for r in done if r.wall_seconds is not None]
    shared = {k: v for k, v in runs[0].overrides.items() if k != sweeps.SEED_KEY}
    rows.append(SettingRow(setting, shared, len(done), len(runs), stats,
                           sum(walls) / len(walls) if walls else None))
  return rows


def choose_metrics(results: Sequence[RunResult], wanted: Sequence[str] | None = None) -> list[str]:
  """The metrics to tabulate: `wanted`, else the embedded task's figures that the runs have, else every eval
  metric they have (sorted)."""
  have = set().union(*(r.final.keys() | r.best.keys() for r in results))
  if wanted:
    return list(wanted)
  chosen = [m for m in DEFAULT_METRICS if m in have]
  return chosen or sorted(have)


def _fmt(stat: tuple[float, float] | None, n: int) -> str:
  if stat is None:
    return "–"
  return f"{stat[0]:.3f} ± {stat[1]:.3f}" if n > 1 else f"{stat[0]:.3f}"


def markdown_table(rows: Sequence[SettingRow], metrics: Sequence[str]) -> str:
  head = ["setting", "overrides", "runs"] + [f"{m} (final)" for m in metrics] + \
         [f"best {metrics[0]}" if metrics else "best", "wall s"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    cells = [r.setting, ", ".join(f"{k}={v}" for k, v in r.overrides.items()) or "(base)",
             f"{r.finished}/{r.total}"]
    cells += [_fmt(r.stats.get(f"final/{m}"), r.finished) for m in metrics]
    cells.append(_fmt(r.stats.get(f"best/{metrics[0]}"), r.finished) if metrics else "–")
    cells.append(f"{r.wall_seconds:.0f}" if r.wall_seconds is not None else "–")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def write_csvs(results: Sequence[RunResult], rows: Sequence[SettingRow], metrics: Sequence[str],
               out: pathlib.Path) -> None:
  with (out / "runs.csv").open("w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["run", "setting", "status", "overrides", "wall_seconds"] + [f"final/{m}" for m in metrics] +
               [f"best/{m}" for m in metrics])
    for r in results:
      w.writerow([r.name, r.setting, r.status, json.dumps(r.overrides), r.wall_seconds] +
                 [r.final.get(m, "") for m in metrics] + [r.best.get(m, "") for m in metrics])
  with (out / "settings.csv").open("w", newline="") as f:
    w = csv.writer(f)
    keys = [f"{k}/{m}" for k in ("final", "best") for m in metrics]
    w.writerow(["setting", "overrides", "finished", "runs", "wall_seconds"] +
               [c for k in keys for c in (f"{k} mean", f"{k} std")])
    for r in rows:
      w.writerow([r.setting, json.dumps(r.overrides), r.finished, r.total, r.wall_seconds] +
                 [c for k in keys for c in (r.stats.get(k, ("", ""))[0], r.stats.get(k, ("", ""))[1])])


def plot_curves(results: Sequence[RunResult], path: pathlib.Path) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  settings = list(dict.fromkeys(r.setting for r in results))
  colours = plt.get_cmap("tab10")
  fig, ax = plt.subplots(figsize=(8, 5))
  for r in results:
    if r.curve:
      i = settings.index(r.setting)
      steps, losses = zip(*r.curve)
      first = r is next(x for x in results if x.setting == r.setting and x.curve)
      ax.plot(steps, losses, color=colours(i % 10), alpha=0.8, lw=1.2, label=r.setting if first else None)
  ax.set(xlabel="step", ylabel="training loss", title="training curves (one line per run)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_final(rows: Sequence[SettingRow], metrics: Sequence[str], path: pathlib.Path) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(rows)), 4.5))
  width = 0.8 / max(len(metrics), 1)
  for j, m in enumerate(metrics):
    stats = [r.stats.get(f"final/{m}", (math.nan, 0.0)) for r in rows]
    xs = [i + (j - (len(metrics) - 1) / 2) * width for i in range(len(rows))]
    ax.bar(xs, [s[0] for s in stats], width, yerr=[s[1] for s in stats], capsize=3, label=m)
  ax.set_xticks(range(len(rows)), [r.setting for r in rows], rotation=20, ha="right", fontsize=8)
  ax.set(ylabel="final value (mean ± std over seeds)", title="final metrics per setting")
  ax.grid(axis="y", alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write_report(root: str | pathlib.Path, out: str | pathlib.Path | None = None,
                 metrics: Sequence[str] | None = None) -> tuple[pathlib.Path, str]:
  """Writes report.md, runs.csv, settings.csv, curves.png and final_metrics.png into `out` (default: the root);
  returns (out, the Markdown)."""
  results = load_runs(root)
  out = pathlib.Path(out or root)
  out.mkdir(parents=True, exist_ok=True)
  metrics = choose_metrics(results, metrics)
  rows = aggregate(results, metrics)
  text = [f"# Sweep report: {root}", "", markdown_table(rows, metrics)]
  unfinished = [r for r in results if r.status != "finished"]
  if unfinished:
    text += ["Not finished (not in the means):", ""] + [f"- {r.name}: {r.status}" for r in unfinished] + [""]
  text += ["![training curves](curves.png)", "", "![final metrics](final_metrics.png)", ""]
  markdown = "\n".join(text)
  (out / "report.md").write_text(markdown)
  write_csvs(results, rows, metrics, out)
  plot_curves(results, out / "curves.png")
  plot_final(rows, metrics[:3], out / "final_metrics.png")
  return out, markdown
