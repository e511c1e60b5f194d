"""The trainer end to end on a tiny synthetic dataset: learning, exact resume, corrupt checkpoints, evaluation,
prediction, and config errors."""
import json
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from configs import tiny
from glipjax import config_utils, predict, train
from glipjax.data import synthetic_grounding

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("tfds")
  synthetic_grounding.prepare(root, "tiny")
  return root


def small_config(data_dir, **overrides):
  base = {"data.builder_config": "tiny", "data.data_dir": str(data_dir), "data.canvas": (64, 64),
          "data.train_short_sides": (56, 64), "data.max_size": 64, "data.eval_short_side": 64,
          "data.sentencepiece_vocab_size": 64, "model.max_query_len": 48, "train.global_batch_size": 4,
          "train.num_steps": 6, "train.log_every": 1, "train.checkpoint_every": 3, "train.eval_every": 0,
          "optim.warmup_steps": 2, "eval.global_batch_size": 4, "eval.num_pictures": 2,
          "checkpoint.async_save": False}
  base.update(overrides)
  return config_utils.apply_overrides(tiny.get_config(), base)


def losses(workdir):
  rows = [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]
  return {r["step"]: r["loss"] for r in rows if "loss" in r}


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, data_dir):
  workdir = tmp_path_factory.mktemp("run_a")
  final = train.train_and_evaluate(small_config(data_dir), workdir, progress=False)
  return workdir, final


def test_resume_after_interruption_is_exact(full_run, data_dir, tmp_path):
  workdir_a, _ = full_run
  # "Interrupted" run: stops after step 3 (its checkpoint), then the same command continues to step 6.
  train.train_and_evaluate(small_config(data_dir, **{"train.num_steps": 3}), tmp_path, progress=False)
  train.train_and_evaluate(small_config(data_dir), tmp_path, progress=False)
  a, b = losses(workdir_a), losses(tmp_path)
  assert sorted(b) == [1, 2, 3, 4, 5, 6]
  assert [a[s] for s in range(1, 7)] == [b[s] for s in range(1, 7)]  # bitwise equal on CPU


def test_corrupt_checkpoint_falls_back_to_the_previous_one(full_run, data_dir, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(full_run[0], workdir)
  for f in (workdir / "checkpoints" / "6").rglob("*"):
    if f.is_file():
      f.write_bytes(b"garbage")
  config = small_config(data_dir)
  setup = train.build(config)
  step, state = train.restore_latest(train.checkpoint_manager(workdir, config), setup)
  assert step == 3 and int(state["step"]) == 3


def test_loss_falls_when_fitting_one_batch(data_dir, tmp_path):
  config = small_config(data_dir, **{"optim.warmup_steps": 1, "optim.learning_rate": 2e-3})
  tokenizer = train.prepare_tokenizer(config, tmp_path)
  from glipjax import sharding
  from glipjax.data import pipeline
  import jax
  setup = train.build(config)
  batch = next(pipeline.make_pipeline(config.data, "train", tokenizer, global_batch_size=4, train=True, seed=0,
                                      max_query_len=config.model.max_query_len))
  with jax.set_mesh(setup.mesh):
    batch = sharding.global_batch(batch, sharding.batch_sharding(setup.mesh, config.mesh.batch_axes))
    state, rest = setup.init()
    step = train.make_train_step(setup)
    history = []
    for _ in range(25):
      state, metrics = step(state, rest, batch, jax.random.key(0))
      history.append(float(metrics["loss"]))
  assert np.isfinite(history).all()
  assert np.mean(history[-3:]) < 0.6 * history[0], history


def test_evaluate_writes_metrics_pictures_and_predict_works(full_run, data_dir, tmp_path):
  workdir, final = full_run
  # The full run did not evaluate (eval_every=0); evaluate its last checkpoint the way the CLI does.
  config = config_utils.load_workdir_config(workdir)
  config = config_utils.apply_overrides(config, {"train.eval_every": 6})
  setup = train.build(config)
  import jax
  from glipjax import evaluate
  with jax.set_mesh(setup.mesh):
    _, params, rest = train.restore_for_inference(setup, workdir)
    metrics = evaluate.evaluate(config, setup.graphdef, params, rest,
                                train.prepare_tokenizer(config, workdir), setup.anchors, setup.level_counts,
                                mesh=setup.mesh, workdir=workdir)
  assert set(evaluate.METRIC_NAMES) <= set(metrics) and all(0.0 <= v <= 1.0 for v in metrics.values())
  assert len(list((workdir / "pictures").glob("*.png"))) == 2 and (workdir / "predictions.json").exists()
  assert final["steps"] == 6 and final["wall_seconds"] > 0

  image = (np.random.default_rng(0).random((50, 70, 3)) * 255).astype(np.uint8)  # odd size: resized + padded
  from PIL import Image
  Image.fromarray(image).save(tmp_path / "img.png")
  assert predict.main(["--workdir", str(workdir), "--image", str(tmp_path / "img.png"), "--prompt",
                       "red circle. blue squares.", "--score-thresh", "0"]) == 0
  results = json.loads((tmp_path / "img_glip.json").read_text())
  assert (tmp_path / "img_glip.png").exists() and all(r["phrase"] in ("red circle", "blue squares") for r in results)
  assert predict.main(["--workdir", str(workdir), "--image", str(tmp_path / "img.png"), "--prompt", " . "]) == 2
  (tmp_path / "bad.png").write_bytes(b"not an image")
  assert predict.main(["--workdir", str(workdir), "--image", str(tmp_path / "bad.png"), "--prompt", "a."]) == 2


def test_unknown_config_keys_are_clear_errors():
  with pytest.raises(KeyError, match="unknown config key"):
    config_utils.apply_overrides(tiny.get_config(), {"train.num_stepz": 3})
  proc = subprocess.run([sys.executable, "-m", "glipjax.train", "--config", "configs/tiny.py", "--workdir", "x",
                         "--config.train.num_stepz=3"], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0 and "num_stepz" in proc.stderr
