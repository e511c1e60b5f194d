"""ODinW (Object Detection in the Wild): each dataset of a suite evaluated as COCO (its own categories as the
prompt, AP against its own annotation file), then the mean AP over the datasets, as GLIP reports ODinW-13 and
ODinW-35. The suite is one of configs/odinw.py (`odinw13`, `odinw35`; prepare them with
`python -m glipjax.tools.prepare_odinw`) or prepared dataset names joined by commas."""
from __future__ import annotations

import numpy as np


def members(suite: str) -> list[str]:
  """The prepared dataset names of `suite`."""
  if "," in suite:
    return [n.strip() for n in suite.split(",") if n.strip()]
  from configs import odinw
  try:
    return [d.name for d in odinw.suite(suite)]
  except KeyError as e:
    raise ValueError(str(e.args[0]) if e.args else f"unknown ODinW suite {suite!r}") from e


def run_benchmark(job):
  """{'AP' (and AP50 ...): the mean over datasets, '<dataset>/AP' ...: each}; predictions {dataset: COCO results}."""
  from glipjax.evaluators import benchmark, coco
  if job.benchmark.annotations:
    raise ValueError("odinw: each dataset is scored against the file it was prepared from; --annotations names "
                     "one file, so it cannot be used here")
  names = members(job.benchmark.dataset)
  metrics, predictions, pictures = {}, {}, {}
  for name in names:
    result = coco.run_benchmark(job.on(name))
    metrics.update({f"{name}/{k}": v for k, v in result.metrics.items()})
    predictions[name] = result.predictions
    pictures.update(result.pictures)
  for key in ("AP", "AP50", "AP75"):
    metrics[key] = float(np.mean([metrics[f"{n}/{key}"] for n in names]))
  return benchmark.Result(metrics, predictions, pictures, dict(datasets=len(names)))
