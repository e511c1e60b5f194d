"""Multi-process training and resume, through the real command line: two local processes x 2 CPU devices (started
by launch/local.py, the launcher users use) save, one process x 4 devices restores and continues; a run killed
with SIGKILL resumes bitwise; global batches do not depend on the process count."""
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from glipjax import distributed
from glipjax.data import pipeline
from glipjax.data.sources import synthetic_grounding
from glipjax.text.tokenizers import SentencePieceTokenizer, train_sentencepiece

REPO = pathlib.Path(__file__).resolve().parents[1]
NUM_STEPS = 4


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("tfds")
  synthetic_grounding.prepare(root, "synthetic_grounding/tiny")
  return root


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("xla_cache_subprocesses")


def train_command(data_dir, workdir, **overrides) -> list[str]:
  # The tiny model cut to one layer per tower (compile time). warmup_steps=2: a run stopped at step 2 has seen
  # the learning rates of a longer run (they differ after warmup).
  flags = {"data.sources": "(('synthetic_grounding/tiny', 1.0),)", "data.data_dir": str(data_dir), "data.canvas": "(64, 64)",
           "data.train_short_sides": "(56, 64)", "data.max_size": 64, "data.sentencepiece_vocab_size": 64,
           "model.max_query_len": 48, "train.global_batch_size": 8, "train.num_steps": NUM_STEPS,
           "train.log_every": 1, "train.checkpoint_every": 2, "train.eval_every": 0, "optim.warmup_steps": 2,
           "checkpoint.best_metric": "", "model.dyhead.num_layers": 1, "model.language.num_layers": 1,
           "model.swin.depths": "(1, 1, 1, 1)", **overrides}
  return ["-m", "glipjax.train", "--config", "configs/tiny.py", "--workdir", str(workdir)] + [
      f"--config.{k}={v}" for k, v in flags.items()]


def env(cache_dir, cpu_devices=None) -> dict:
  # Cheaper XLA CPU back end (every run here uses the same flags, so comparisons stay exact) and a shared
  # persistent cache: the single-process runs compile the train step once between them.
  out = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(cache_dir),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="1",
             XLA_FLAGS="--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true")
  if cpu_devices:
    out["JAX_NUM_CPU_DEVICES"] = str(cpu_devices)
  return out


def run(args, cache_dir, cpu_devices=None, timeout=600) -> str:
  proc = subprocess.run([sys.executable] + args, cwd=REPO, env=env(cache_dir, cpu_devices), capture_output=True,
                        text=True, timeout=timeout)
  output = proc.stdout + proc.stderr
  assert proc.returncode == 0, output[-4000:]
  return output


def losses(workdir) -> dict[int, float]:
  """Loss per step; a step that was run twice (before a kill and after the restart) keeps its last value."""
  path = pathlib.Path(workdir) / "metrics.jsonl"
  if not path.exists():
    return {}
  rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
  return {r["step"]: r["loss"] for r in rows if "loss" in r}


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, data_dir, cache_dir) -> pathlib.Path:
  """An uninterrupted single-process run on 4 CPU devices."""
  workdir = tmp_path_factory.mktemp("reference")
  run(train_command(data_dir, workdir), cache_dir, cpu_devices=4)
  return workdir


@pytest.fixture(scope="module")
def reference(reference_run):
  """Its losses."""
  return losses(reference_run)


def test_global_batches_do_not_depend_on_the_process_count(data_dir, tmp_path):
  cfg = pipeline_config(data_dir)
  tok = SentencePieceTokenizer(train_sentencepiece(pipeline.iter_captions(cfg), tmp_path / "sp", 64))
  make = lambda rows: pipeline.make_pipeline(cfg, "train", tok, global_batch_size=6, train=True, seed=1,
                                             max_query_len=24, rows=rows)
  whole, slices = make((0, 6)), [make((0, 2)), make((2, 4)), make((4, 6))]
  for _ in range(3):  # 3 x 6 examples: past the end of the 16-example split, into the reshuffled 2nd epoch
    expected = next(whole)
    parts = [next(s) for s in slices]
    for key in expected:
      np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), expected[key])
  # Iterator states count global batches: the state of one slicing positions any other.
  resumed = make((2, 4))
  resumed.set_state(slices[0].get_state())
  np.testing.assert_array_equal(next(resumed)["image"], next(slices[1])["image"])

  # Evaluation: as many batches on every process (8 examples -> 2 global batches of 6), the same global batches
  # as one process, padding and skipped examples (one here: its boxes exceed max_boxes) marked invalid.
  evals = [list(pipeline.make_pipeline(cfg, "validation", tok, global_batch_size=6, train=False, seed=0,
                                       max_query_len=24, rows=rows)) for rows in ((0, 6), (0, 3), (3, 6))]
  assert len(evals[0]) == len(evals[1]) == len(evals[2]) == 2
  for whole_batch, *parts in zip(*evals):
    for key in whole_batch:
      np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole_batch[key])
  ids = np.concatenate([b["image_id"][b["valid"]] for b in evals[0]])
  source, transform = pipeline.eval_dataset(cfg).source, pipeline._Transform(cfg, tok, 24, train=False)
  decodable = [int(source[i]["image_id"]) for i in range(len(source))
               if transform(source[i], None, cfg.eval_short_side, tuple(cfg.canvas)) is not None]
  assert sorted(ids) == sorted(decodable) and len(decodable) > 4


def pipeline_config(data_dir):
  import ml_collections
  return ml_collections.ConfigDict(dict(
      sources=(("synthetic_grounding/tiny", 1.0),), eval_source="", data_dir=str(data_dir), train_short_sides=(48, 64),
      max_size=64, eval_short_side=64, canvas=(64, 64), aspect_buckets=(), flip_prob=0.5, max_boxes=6, max_phrases=4, num_workers=0,
      detection_prompt_prob=0.5, max_negatives=14))


def test_process_rows_follow_the_batch_sharding():
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  assert distributed.process_rows(sharding, 8) == (0, 8)


@pytest.mark.slow  # ~110 s: two more multi-process runs; the SIGKILL test keeps multi-host resume in the default suite
def test_two_processes_save_and_one_process_with_4_devices_continues(reference, data_dir, cache_dir, tmp_path):
  workdir = tmp_path / "run"
  launcher = ["-m", "launch.local", "--num_processes", "2", "--cpu_devices", "2", "--"]
  output = run(launcher + train_command(data_dir, workdir, **{"train.num_steps": 2}), cache_dir)
  assert "[0]" in output and "[1]" in output
  two_process = losses(workdir)
  assert sorted(two_process) == [1, 2]
  # Same global batches and the same 4-device data-parallel program; only the cross-process reductions (gloo)
  # may add in another order than the in-process ones: step 1 matched bitwise, step 2 to 1e-7 when written.
  np.testing.assert_allclose([two_process[s] for s in (1, 2)], [reference[s] for s in (1, 2)], rtol=1e-6)

  output = run(train_command(data_dir, workdir), cache_dir, cpu_devices=4)
  assert "written by 2 process(es), this run has 1" in output
  resumed = losses(workdir)
  assert sorted(resumed) == list(range(1, NUM_STEPS + 1))
  # The restored parameters carry those rounding differences forward (seen: bitwise to 2e-7); a wrong batch,
  # step or optimizer state would change the loss by far more.
  np.testing.assert_allclose([resumed[s] for s in range(3, NUM_STEPS + 1)],
                             [reference[s] for s in range(3, NUM_STEPS + 1)], rtol=1e-5)


def test_sigkill_at_any_step_then_restart_is_bitwise_exact(reference, data_dir, cache_dir, tmp_path):
  workdir = tmp_path / "run"
  command = [sys.executable] + train_command(data_dir, workdir, **{"checkpoint.async_save": True})
  proc = subprocess.Popen(command, cwd=REPO, env=env(cache_dir, 4), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 600
  while not ((workdir / "checkpoints" / "2").is_dir() and len(losses(workdir)) >= 3):
    assert proc.poll() is None and time.time() < deadline, "the run ended before it could be killed"
    time.sleep(0.1)
  proc.send_signal(signal.SIGKILL)
  assert proc.wait() == -signal.SIGKILL
  assert max(losses(workdir)) >= 3 and not (workdir / "final_metrics.json").exists()  # killed mid-run
  # A save cut short leaves a directory Orbax never finalized: plant one past the newest real checkpoint.
  partial = workdir / "checkpoints" / f"{NUM_STEPS - 1}.orbax-checkpoint-tmp-1234"
  shutil.copytree(workdir / "checkpoints" / "2", partial)
  for f in partial.rglob("*"):
    if f.is_file():
      f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])

  output = run(train_command(data_dir, workdir, **{"checkpoint.async_save": True}), cache_dir, cpu_devices=4)
  assert "ignoring the half-written checkpoint" in output and partial.name in output
  assert "resumed from step 2" in output  # killed before the save at step 4 was finalized
  resumed = losses(workdir)
  assert [resumed[s] for s in range(1, NUM_STEPS + 1)] == [reference[s] for s in range(1, NUM_STEPS + 1)]


def test_benchmark_metrics_do_not_depend_on_the_process_count(reference_run, prepared_mixture, cache_dir, tmp_path):
  # 6 images, global eval batches of 8: one batch, 2 rows of padding. Each process predicts its rows; the
  # predictions are gathered, so both processes score every image once, as one process does.
  command = ["-m", "glipjax.evaluate", "--workdir", str(reference_run), "--dataset", "det", "--protocol", "coco",
             "--data_dir", str(prepared_mixture), "--config.eval.pre_nms_thresh=0.0"]  # a 4-step model: low scores
  run(command + ["--out", str(tmp_path / "one.json")], cache_dir, cpu_devices=4)
  launcher = ["-m", "launch.local", "--num_processes", "2", "--cpu_devices", "2", "--"]
  output = run(launcher + command + ["--out", str(tmp_path / "two.json")], cache_dir)
  one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
  assert one == two
  printed = [json.loads(block) for block in _json_blocks(output)]
  assert len(printed) == 2 and all(p == one for p in printed)  # process 1 reports the same, not its half
  predictions = [json.loads((tmp_path / f"{n}_predictions.json").read_text()) for n in ("one", "two")]
  assert predictions[0] and predictions[0] == predictions[1]
  assert {r["image_id"] for r in predictions[0]} == set(range(6))


def _json_blocks(output: str) -> list[str]:
  """The JSON objects the processes printed (launch/local.py prefixes each line with [rank])."""
  blocks: dict[str, list[str]] = {}
  for line in output.splitlines():
    rank, _, text = line.partition("] ")
    if not rank.startswith("["):
      continue
    if text == "{":
      blocks[rank] = [text]
    elif rank in blocks:
      blocks[rank].append(text)
  return ["\n".join(b) for b in blocks.values() if b and b[-1] == "}"]
