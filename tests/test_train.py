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
from glipjax import checkpoints, config_utils, hooks, predict, runtime, trainer
from glipjax.data.sources import synthetic_grounding

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_dir(prepared_mixture):
  """The embedded tiny dataset beside the conftest's prepared COCO-format `det` and MDETR-format `gnd`."""
  synthetic_grounding.prepare(prepared_mixture, "synthetic_grounding/tiny")
  return prepared_mixture


def small_config(data_dir, **overrides):
  base = {"data.sources": (("synthetic_grounding/tiny", 1.0),), "data.data_dir": str(data_dir), "data.canvas": (64, 64),
          "data.train_short_sides": (56, 64), "data.max_size": 64, "data.eval_short_side": 64,
          "data.sentencepiece_vocab_size": 64, "model.max_query_len": 48, "train.global_batch_size": 4,
          "train.num_steps": 6, "train.log_every": 1, "train.checkpoint_every": 3, "train.eval_every": 0,
          "optim.warmup_steps": 2, "eval.global_batch_size": 4, "eval.num_pictures": 2,
          "checkpoint.async_save": False, "model.dyhead.fusion": True}  # the full GLIP-T(C) tower
  base.update(overrides)
  return config_utils.apply_overrides(tiny.get_config(), base)


def mixture_config(data_dir):
  """Training on a mixture of the embedded dataset and two prepared real-format datasets (detection and
  grounding); evaluated on the first."""
  return small_config(data_dir, **{"data.sources": (("synthetic_grounding/tiny", 2.0), ("det", 1.0), ("gnd", 1.0))})


def losses(workdir):
  rows = [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]
  return {r["step"]: r["loss"] for r in rows if "loss" in r}


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, data_dir):
  workdir = tmp_path_factory.mktemp("run_a")
  final = trainer.train_and_evaluate(mixture_config(data_dir), workdir, progress=False)
  return workdir, final


def test_resume_after_interruption_is_exact(full_run, data_dir, tmp_path):
  workdir_a, _ = full_run
  # The run as it stood when interrupted after its step-3 checkpoint (train state + data iterator state); the
  # same command then continues to step 6. (A real SIGKILL mid-run: tests/test_multihost.py.)
  workdir = tmp_path / "run"
  shutil.copytree(workdir_a, workdir)
  shutil.rmtree(workdir / "checkpoints" / "6")
  (workdir / "final_metrics.json").unlink()
  rows = (workdir / "metrics.jsonl").read_text().splitlines()
  (workdir / "metrics.jsonl").write_text("".join(r + "\n" for r in rows if json.loads(r)["step"] <= 3))
  assert sorted(losses(workdir)) == [1, 2, 3]
  trainer.train_and_evaluate(mixture_config(data_dir), workdir, progress=False)
  a, b = losses(workdir_a), losses(workdir)
  assert sorted(b) == [1, 2, 3, 4, 5, 6]
  assert [a[s] for s in range(1, 7)] == [b[s] for s in range(1, 7)]  # bitwise equal on CPU


def test_rerunning_a_finished_run_keeps_its_results(full_run, data_dir, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(full_run[0], workdir)
  before = (workdir / "final_metrics.json").read_text()
  again = trainer.train_and_evaluate(mixture_config(data_dir), workdir, progress=False)
  assert (workdir / "final_metrics.json").read_text() == before
  assert again == json.loads(before) and again["steps"] == 6


def test_corrupt_checkpoint_falls_back_to_the_previous_one(full_run, data_dir, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(full_run[0], workdir)
  for f in (workdir / "checkpoints" / "6").rglob("*"):
    if f.is_file():
      f.write_bytes(b"garbage")
  config = mixture_config(data_dir)
  setup = runtime.build(config)
  step, state = checkpoints.restore_latest(checkpoints.checkpoint_manager(workdir, config), setup)
  assert step == 3 and int(state["step"]) == 3
  # Inference reads the parameters alone, with the same fallback, and gets the train state's parameters.
  import jax
  with jax.set_mesh(setup.mesh):
    step, params = checkpoints.restore_params(setup, workdir)
  assert step == 3
  for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(state["params"]), strict=True):
    np.testing.assert_array_equal(got, want)
  with pytest.raises(FileNotFoundError, match="no checkpoint of step 5"):
    checkpoints.restore_params(setup, workdir, step=5)
  # --checkpoint: one step of a checkpoints folder, or a best-parameters folder.
  import orbax.checkpoint as ocp
  best = checkpoints.best_checkpoint_manager(tmp_path / "other", config)
  best.save(7, args=ocp.args.Composite(params=ocp.args.StandardSave(params)), metrics={"detection/AP": 0.5})
  best.wait_until_finished()
  with jax.set_mesh(setup.mesh):
    assert checkpoints.restore_params(setup, tmp_path, checkpoint=workdir / "checkpoints" / "3")[0] == 3
    step, from_best = checkpoints.restore_params(setup, tmp_path, checkpoint=tmp_path / "other" / "best")
  assert step == 7
  for got, want in zip(jax.tree.leaves(from_best), jax.tree.leaves(params), strict=True):
    np.testing.assert_array_equal(got, want)


def fit_one_batch(config, tmp_path, steps: int) -> list[dict]:
  """`steps` updates of the compiled train step on one fixed batch: each step's metrics."""
  tokenizer = runtime.prepare_tokenizer(config, tmp_path)
  from glipjax import sharding
  from glipjax.data import pipeline
  import jax
  setup = runtime.build(config)
  batch = next(pipeline.make_pipeline(config.data, "train", tokenizer, global_batch_size=4, train=True, seed=0,
                                      max_query_len=config.model.max_query_len))
  with jax.set_mesh(setup.mesh):
    batch = sharding.global_batch(batch, sharding.batch_sharding(setup.mesh, config.mesh.batch_axes))
    state, rest = setup.init()
    step = trainer.make_train_step(setup)
    history = []
    for _ in range(steps):
      state, metrics = step(state, rest, batch, jax.random.key(0))
      history.append({k: float(v) for k, v in metrics.items()})
  return history


def test_loss_falls_when_fitting_one_batch(data_dir, tmp_path):
  # Captions only: this checks the optimizer and loss plumbing, not whether 25 steps can learn to bind attributes
  # (detection prompts with 14 negatives plateau at the objectness solution that early).
  config = small_config(data_dir, **{"optim.warmup_steps": 1, "optim.learning_rate": 2e-3,
                                     "data.detection_prompt_prob": 0.0})
  history = [h["loss"] for h in fit_one_batch(config, tmp_path, 25)]
  assert np.isfinite(history).all()
  assert np.mean(history[-3:]) < 0.6 * history[0], history


def test_alignment_loss_family_trains_the_tiny_model_without_nan(data_dir, tmp_path):
  """Both alignment heads (token focal + contrastive alignment), the image-text contrastive term and negative
  captions in one compiled step: every term finite, the total falling on a fixed batch."""
  config = small_config(data_dir, **{"optim.warmup_steps": 1, "optim.learning_rate": 2e-3,
                                     "data.detection_prompt_prob": 0.0, "data.caption_negatives": 2,
                                     "model.dyhead.fusion": False, "model.head.alignment": "both",
                                     "train.image_text_loss_weight": 0.5})
  history = fit_one_batch(config, tmp_path, 15)
  for key in ("loss_dot_product_token", "loss_contrastive_align", "loss_image_text", "loss"):
    assert np.isfinite([h[key] for h in history]).all(), key
  assert np.mean([h["loss"] for h in history[-3:]]) < 0.8 * history[0]["loss"], history


def test_evaluate_writes_metrics_pictures_and_predict_works(full_run, data_dir, tmp_path):
  workdir, final = full_run
  # The full run did not evaluate (eval_every=0); evaluate its last checkpoint the way the CLI does.
  config = config_utils.load_workdir_config(workdir)
  config = config_utils.apply_overrides(config, {"train.eval_every": 6})
  setup = runtime.build(config)
  import jax
  from glipjax import evaluate
  with jax.set_mesh(setup.mesh):
    _, params, rest = checkpoints.restore_for_inference(setup, workdir)
    metrics = evaluate.evaluate(config, setup.graphdef, params, rest,
                                runtime.prepare_tokenizer(config, workdir), mesh=setup.mesh, workdir=workdir)
  from glipjax.evaluators import common
  flat = common.flatten(metrics)
  for protocol in ("detection", "detection/text_blind", "grounding", "grounding/colour_swapped",
                   "grounding/absent_kinds"):
    assert {f"{protocol}/{k}" for k in common.METRIC_NAMES} <= set(flat)
  assert all(0.0 <= v <= 1.0 for v in flat.values())
  assert len(list((workdir / "pictures").glob("detection_*.png"))) == 2
  assert len(list((workdir / "pictures").glob("grounding_*.png"))) == 2
  predictions = json.loads((workdir / "predictions.json").read_text())
  assert all(1 <= p["category_id"] <= 15 for p in predictions)  # the detection protocol's kinds
  assert final["steps"] == 6 and final["wall_seconds"] > 0

  # The same checkpoint on the prepared datasets of its mixture: COCO AP of the detection prompts (all
  # categories, the file's own ids in predictions.json) and of the grounding captions.
  for source, name in (("det", "detection"), ("gnd", "grounding")):
    out = tmp_path / source
    out.mkdir()
    on_source = config_utils.apply_overrides(config, {"data.eval_source": source})
    with jax.set_mesh(setup.mesh):
      got = evaluate.evaluate(on_source, setup.graphdef, params, rest, runtime.prepare_tokenizer(config, workdir),
                              mesh=setup.mesh, workdir=out)
    assert set(got) == {name} and set(common.METRIC_NAMES) <= set(got[name])
    assert all(0.0 <= v <= 1.0 for v in got[name].values())
    predictions = json.loads((out / "predictions.json").read_text())
    assert predictions and {p["category_id"] for p in predictions} <= ({3, 7, 9} if source == "det" else
                                                                       set(range(1, 7)))
    assert list((out / "pictures").glob(f"{name}_*.png"))

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


@pytest.mark.slow  # ~95 s: two more compiled train steps (accumulating and not)
def test_grad_accumulation_equals_one_step_on_the_whole_batch(data_dir, tmp_path):
  """Batch [x0, x0, x1, x1] in 2 micro-batches (rows 0,2 and 1,3 = [x0, x1] each) gives the update of batch
  [x0, x1] in one step: the loss is normalised per positive, so duplicating a batch leaves it unchanged."""
  import jax
  from glipjax import sharding
  from glipjax.data import pipeline
  no_dropout = {"model.language.hidden_dropout": 0.0, "model.language.attention_dropout": 0.0,
                "model.dyhead.fusion_dropout": 0.0}
  config = small_config(data_dir, **no_dropout, **{"train.global_batch_size": 2})
  tokenizer = runtime.prepare_tokenizer(config, tmp_path)
  local = next(pipeline.make_pipeline(config.data, "train", tokenizer, global_batch_size=2, train=True, seed=0,
                                      max_query_len=config.model.max_query_len))
  results = []
  for accum, batch in ((1, local), (2, {k: np.repeat(v, 2, axis=0) for k, v in local.items()})):
    cfg = config_utils.apply_overrides(config, {"train.global_batch_size": 2 * accum, "train.grad_accum_steps": accum})
    setup = runtime.build(cfg)
    with jax.set_mesh(setup.mesh):
      state, rest = setup.init()
      state, metrics = trainer.make_train_step(setup)(
          state, rest, sharding.global_batch(batch, sharding.batch_sharding(setup.mesh, cfg.mesh.batch_axes)),
          jax.random.key(0))
      results.append((float(metrics["loss"]), jax.tree.map(np.asarray, state["params"])))
  (loss_1, params_1), (loss_2, params_2) = results
  np.testing.assert_allclose(loss_2, loss_1, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), params_1, params_2)
  with pytest.raises(ValueError, match="grad_accum_steps"):
    runtime.build(config_utils.apply_overrides(config, {"train.grad_accum_steps": 3}))


def test_non_finite_metrics_stop_the_run_naming_step_and_cause():
  import jax.numpy as jnp
  assert hooks.check_finite(7, {"loss": jnp.float32(1.5)}) == {"loss": 1.5}
  with pytest.raises(FloatingPointError, match=r"non-finite grad_norm, loss_reg at step 7"):
    hooks.check_finite(7, {"loss_reg": jnp.float32(np.nan), "grad_norm": jnp.float32(np.inf), "loss": 1.0})


def test_sigterm_saves_and_exits_cleanly_and_profiles_on_demand(data_dir, tmp_path):
  import signal
  import time
  workdir = tmp_path / "run"
  overrides = {"data.sources": "(('synthetic_grounding/tiny', 1.0),)", "data.data_dir": str(data_dir), "data.canvas": "(64, 64)",
               "data.train_short_sides": "(56, 64)", "data.max_size": 64, "data.sentencepiece_vocab_size": 64,
               "model.max_query_len": 48, "train.global_batch_size": 4, "train.num_steps": 100000,
               "train.log_every": 1, "train.checkpoint_every": 100000, "train.eval_every": 0,
               "train.profile_start_step": 1, "train.profile_num_steps": 1}
  proc = subprocess.Popen([sys.executable, "-m", "glipjax.train", "--config", "configs/tiny.py", "--workdir",
                           str(workdir)] + [f"--config.{k}={v}" for k, v in overrides.items()], cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  deadline = time.time() + 600
  while not (workdir / "metrics.jsonl").exists() or len(losses(workdir)) < 3:
    assert proc.poll() is None and time.time() < deadline, proc.communicate()[0][-3000:]
    time.sleep(0.5)
  proc.send_signal(signal.SIGTERM)
  output = proc.communicate(timeout=300)[0]
  assert proc.returncode == 0, output[-3000:]
  assert "preemption signal: saved step" in output
  final = json.loads((workdir / "final_metrics.json").read_text())
  saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert final["preempted"] and saved == [final["steps"]] and final["steps"] == max(losses(workdir))
  assert any((workdir / "profile").rglob("*.xplane.pb"))


@pytest.mark.slow
def test_bucketed_multi_scale_training_runs_on_two_canvases_and_evaluates(data_dir, tmp_path):
  """Aspect-ratio buckets end to end: the trainer meets two canvas shapes (two scales of the landscape bucket),
  compiles a step for each, trains, and evaluates the prepared detection dataset on its bucket's canvas."""
  from glipjax.data import pipeline
  from glipjax.data.buckets import Buckets
  from glipjax.evaluators import common
  config = small_config(data_dir, **{
      "data.sources": (("det", 1.0), ("gnd", 1.0)), "data.eval_source": "det", "data.aspect_buckets": (0.75, 1.333),
      "data.train_short_sides": (32, 64), "data.max_size": 96, "data.eval_short_side": 48, "train.num_steps": 4,
      "train.checkpoint_every": 4, "train.eval_every": 4})
  workdir = tmp_path / "run"
  final = trainer.train_and_evaluate(config, workdir, progress=False)
  assert final["steps"] == 4 and np.isfinite(list(losses(workdir).values())).all()
  assert set(common.METRIC_NAMES) <= set(final["detection"])
  it = pipeline.make_pipeline(config.data, "train", runtime.prepare_tokenizer(config, workdir),
                              global_batch_size=4, train=True, seed=config.seed, max_query_len=48)
  shapes = {next(it)["image"].shape[1:3] for _ in range(4)}
  assert len(shapes) == 2 and shapes <= set(Buckets.from_config(config.data).train_shapes())


def test_benchmarks_score_against_the_annotation_files(full_run, data_dir, tmp_path):
  """COCO and RefCOCO protocols on prepared datasets, from the parameters alone, scored against the original
  files: every image once, predictions in the reference formats, what `glipjax.score` computes from them."""
  workdir, _ = full_run
  from glipjax import score
  from glipjax.data.prepare import prepare
  from glipjax.evaluators import benchmark, coco, flickr30k, refcoco
  from glipjax.predictor import Predictor
  root = pathlib.Path(data_dir).parent
  det = json.loads((root / "det.json").read_text())
  # RefCOCO, MDETR-style: one entry per expression, its one annotation the referred object.
  refs = dict(images=[dict(id=100 + i, file_name=f"{i}.jpg", caption=f"the {c['name']} on the left", original_id=i)
                      for i, c in enumerate(det["categories"] * 2)],
              annotations=[dict(id=i, image_id=100 + i, bbox=[4, 6, 12, 14], category_id=1,
                                tokens_positive=[[0, 7]]) for i in range(6)])
  (tmp_path / "refs.json").write_text(json.dumps(refs))
  prepare("mdetr", str(tmp_path / "refs.json"), str(root / "im"), "refs", str(data_dir), split="validation")
  # ODinW-style: a second COCO-format dataset (two categories renamed, one box fewer), the suite a name list.
  det2 = dict(det, categories=[dict(c, name=n) for c, n in zip(det["categories"], ("hound", "lamp", "cat"))],
              annotations=det["annotations"][1:])
  (tmp_path / "det2.json").write_text(json.dumps(det2))
  prepare("coco", str(tmp_path / "det2.json"), str(root / "im"), "det2", str(data_dir), split="validation")
  # LVIS v1: images by coco_url with negative / not-exhaustive lists, 250 categories (far beyond one 48-token
  # query: chunked), r/c/f frequencies.
  lvis_gt = dict(
      images=[dict(id=im["id"], coco_url=f"http://images.cocodataset.org/val2017/{im['file_name']}", height=48,
                   width=64, neg_category_ids=[5, 6], not_exhaustive_category_ids=[]) for im in det["images"]],
      categories=[dict(id=i, name=f"thing_{i}", frequency="rcf"[i % 3]) for i in range(1, 251)],
      annotations=[dict(a, id=n + 1, category_id={3: 1, 7: 2, 9: 3}[a["category_id"]],
                        area=a["bbox"][2] * a["bbox"][3]) for n, a in enumerate(det["annotations"])])
  (tmp_path / "lvis.json").write_text(json.dumps(lvis_gt))
  prepare("lvis", str(tmp_path / "lvis.json"), str(root / "im"), "lvis_mini", str(data_dir), split="validation")
  # Flickr30k Entities: the official tree (sentences with entity markup, xml boxes) and MDETR's json of it.
  flickr = tmp_path / "flickr30k_entities"
  (flickr / "Sentences").mkdir(parents=True)
  (flickr / "Annotations").mkdir()
  sentences = {"0": ["[/EN#1/animals A dog] near [/EN#2/animals a cat] .", "[/EN#1/animals The dog] sleeps ."],
               "1": ["[/EN#5/people A man] in [/EN#6/scene a park] ."]}
  boxes = {"1": (4, 6, 16, 20), "2": (20, 6, 32, 20), "5": (10, 10, 40, 40)}
  entries, anns = [], []
  for image_id, lines in sentences.items():
    (flickr / "Sentences" / f"{image_id}.txt").write_text("\n".join(lines) + "\n")
    objects = "".join(f"<object><name>{e}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax>"
                      f"<ymax>{b[3]}</ymax></bndbox></object>" for e, b in boxes.items() if e in "".join(lines))
    (flickr / "Annotations" / f"{image_id}.xml").write_text(
        f"<annotation><size><width>64</width><height>48</height><depth>3</depth></size>{objects}</annotation>")
    for k, line in enumerate(lines):
      parsed = flickr30k.parse_sentence(line)
      entries.append(dict(id=len(entries), file_name=f"{image_id}.jpg", caption=parsed["text"],
                          original_img_id=int(image_id), sentence_id=k))
      for ph in parsed["phrases"]:
        if ph["phrase_id"] in boxes:
          x1, y1, x2, y2 = boxes[ph["phrase_id"]]
          anns.append(dict(id=len(anns), image_id=entries[-1]["id"], bbox=[x1, y1, x2 - x1, y2 - y1],
                           tokens_positive=[list(ph["span"])]))
  (flickr / "final_flickr_separateGT_test.json").write_text(json.dumps(dict(images=entries, annotations=anns)))
  prepare("mdetr", str(flickr / "final_flickr_separateGT_test.json"), str(root / "im"), "flk", str(data_dir),
          split="test")
  predictor = Predictor(workdir)
  tokenizer = runtime.prepare_tokenizer(predictor.config, workdir)
  with predictor.context():
    got = {b.protocol: benchmark.run(predictor, predictor.config, tokenizer, predictor.mesh, b, progress=False)
           for b in (benchmark.Benchmark("det", "coco"), benchmark.Benchmark("refs", "refcoco"),
                     benchmark.Benchmark("flk", "flickr30k", "test"), benchmark.Benchmark("det,det2", "odinw"),
                     benchmark.Benchmark("lvis_mini", "lvis"))}
  results = got["coco"].predictions
  assert {r["image_id"] for r in results} == {im["id"] for im in det["images"]}  # every image, once each
  assert {r["category_id"] for r in results} <= {3, 7, 9} and len(results) <= 6 * predictor.config.eval.detections_per_img
  (tmp_path / "coco.json").write_text(json.dumps(results))
  assert coco.score_files(root / "det.json", tmp_path / "coco.json") == got["coco"].metrics
  assert set(got["coco"].metrics) == {"AP", "AP50", "AP75", "APs", "APm", "APl"} and got["coco"].pictures
  refexp = got["refcoco"].predictions
  assert sorted(r["image_id"] for r in refexp) == list(range(100, 106))
  assert all(r["scores"] == sorted(r["scores"], reverse=True) and len(r["boxes"]) == len(r["scores"]) for r in refexp)
  (tmp_path / "refs_res.json").write_text(json.dumps(refexp))
  assert score.main(["--protocol", "refcoco", "--annotations", str(tmp_path / "refs.json"), "--results",
                     str(tmp_path / "refs_res.json"), "--out", str(tmp_path / "m.json")]) == 0
  assert json.loads((tmp_path / "m.json").read_text()) == got["refcoco"].metrics
  # Flickr30k: the sentences with an evaluated phrase (not the one whose only other phrase is the scene), a
  # ranked box list per phrase in sentence order; the file scores the same through the official tree.
  flk = got["flickr30k"].predictions
  assert sorted((r["image_id"], r["sentence_id"], len(r["boxes"])) for r in flk) == [("0", 0, 2), ("0", 1, 1),
                                                                                    ("1", 0, 1)]
  (tmp_path / "flk.json").write_text(json.dumps(flk))
  assert flickr30k.score_files(flickr / "final_flickr_separateGT_test.json", tmp_path / "flk.json") == \
      got["flickr30k"].metrics
  assert {"Recall@1", "Recall@5", "Recall@10"} <= set(got["flickr30k"].metrics)
  # ODinW: each dataset its own COCO evaluation (its own prompt and file), the headline their mean.
  odinw = got["odinw"].metrics
  assert {k[4:]: v for k, v in odinw.items() if k.startswith("det/")} == got["coco"].metrics
  (tmp_path / "det2_res.json").write_text(json.dumps(got["odinw"].predictions["det2"]))
  assert {k[5:]: v for k, v in odinw.items() if k.startswith("det2/")} == coco.score_files(
      tmp_path / "det2.json", tmp_path / "det2_res.json")
  assert odinw["AP"] == pytest.approx((odinw["det/AP"] + odinw["det2/AP"]) / 2)
  # LVIS: every one of the 250 categories prompted once (in many chunks), at most 300 detections per image, the
  # package's federated AP from the file.
  from glipjax.evaluators import common, lvis
  chunks = common.category_prompters([f"thing {i}" for i in range(1, 251)], tokenizer,
                                     predictor.config.model.max_query_len, 40)
  assert len(chunks) > 5
  lvis_results = got["lvis"].predictions
  assert lvis_results and {r["category_id"] for r in lvis_results} <= set(range(1, 251))
  assert max(sum(r["image_id"] == i for r in lvis_results) for i in range(6)) <= 300
  (tmp_path / "lvis_res.json").write_text(json.dumps(lvis_results))
  assert lvis.score_files(tmp_path / "lvis.json", tmp_path / "lvis_res.json") == got["lvis"].metrics
  assert all(np.isfinite(v) and 0 <= v <= 1 for v in got["lvis"].metrics.values())
  assert set(got["lvis"].metrics) == set(lvis.METRIC_NAMES) and "standard" in got["lvis"].info["lvis_ap"]
  # Five protocols, images of several sizes on the one canvas, partial last batches, dozens of prompts: one
  # compiled inference program (no recompilation between images of the same bucket).
  assert predictor._predict._cache_size() == 1

  # The command: metrics, predictions and pictures beside --out; a user's mistake is one line and exit 2.
  out = tmp_path / "cli" / "coco.json"
  cmd = [sys.executable, "-m", "glipjax.evaluate", "--workdir", str(workdir), "--dataset", "det", "--protocol",
         "coco", "--out", str(out), "--checkpoint", str(workdir / "checkpoints" / "6")]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.loads(out.read_text())
  assert {k: summary[k] for k in got["coco"].metrics} == got["coco"].metrics
  assert summary["step"] == 6 and summary["protocol"] == "coco"
  assert json.loads((out.parent / "coco_predictions.json").read_text()) == got["coco"].predictions
  assert list((out.parent / "coco_pictures").glob("*.png"))
  proc = subprocess.run(cmd[:6] + ["nothere", "--protocol", "coco"], cwd=REPO, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 2 and "not prepared" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.slow  # ~55 s: test_transfer covers the prompt-tuning mode's frozen parameters in the default suite
def test_prompt_tuning_from_a_trained_run_changes_only_the_prompt_table(full_run, data_dir, tmp_path):
  """train.init_from a workdir + train.mode=prompt_tuning: every parameter but the table comes out bit for bit as
  the source run left it, the table moves, the tokenizer is the source's, and the official export names it."""
  source, _ = full_run
  config = small_config(data_dir, **{"train.mode": "prompt_tuning", "train.init_from": str(source),
                                     "train.num_steps": 3, "optim.learning_rate": 0.05, "optim.weight_decay": 0.25})
  workdir = tmp_path / "prompt_tuned"
  trainer.train_and_evaluate(config, workdir, progress=False)
  assert np.isfinite(list(losses(workdir).values())).all()
  from glipjax.interop import workdirs
  _, before = workdirs.official_state_from_workdir(source)
  _, after = workdirs.official_state_from_workdir(workdir)
  assert set(after) - set(before) == {"rpn.tunable_linear.weight"}
  assert np.abs(after["rpn.tunable_linear.weight"]).max() > 0
  for key, value in before.items():
    np.testing.assert_array_equal(after[key], value, err_msg=key)
  assert (workdir / "tokenizer.model").read_bytes() == (source / "tokenizer.model").read_bytes()
