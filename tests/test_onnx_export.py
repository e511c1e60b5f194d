"""`glipjax.export --format onnx`: the whole detector, text encoder included, as an ONNX model that onnxruntime
runs with glipjax's outputs; shape errors are one-line command errors; GLIP-T(C) converts (slow)."""
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

pytest.importorskip("jax2onnx")
pytest.importorskip("onnxruntime")

from configs import tiny  # noqa: E402
from configs.model import glip_model  # noqa: E402
from glipjax.interop import onnx_model  # noqa: E402
from glipjax.models.glip import GLIP, count_params  # noqa: E402
from glipjax.ops import anchors as anchor_ops  # noqa: E402
from glipjax.ops.postprocess import postprocess  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
# Measured on the tiny model (outputs up to ~5): 1e-6 for the logits, 1e-7 for boxes and centerness.
ATOL = 2e-5
BOX_ATOL = 1e-3  # pixels on the canvas


def _inputs(rng, b, h, w, t, vocab):
  images = rng.standard_normal((b, h, w, 3)).astype(np.float32)
  ids = rng.integers(1, vocab, (b, t)).astype(np.int32)
  mask = np.ones((b, t), np.int32)
  mask[1, t // 2:], ids[1, t // 2:] = 0, 0  # a padded prompt
  return images, ids, mask


def _phrases(t):
  """Two prompts' phrase -> token maps (L=4): image 0 has three phrases, image 1 (its prompt half padding) two."""
  phrase_map = np.zeros((2, 4, t), np.float32)
  phrase_map[0, 0, 1:3] = phrase_map[0, 1, 3] = phrase_map[0, 2, 4:7] = 1
  phrase_map[1, 0, 1] = phrase_map[1, 1, 2:4] = 1
  phrase_mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], bool)
  return phrase_map, phrase_mask, np.array([[64, 96], [50, 80]], np.int32)  # image 1 padded on the canvas


def test_onnxruntime_runs_the_detector_with_glipjax_outputs(tmp_path):
  """The tiny model with one DyHead layer (VLFuse, tower BERT layer, DyConv: every module type), exported with
  post-processing: raw outputs and detections are glipjax's, and another prompt gives other ones."""
  cfg = tiny.get_config().model
  cfg.dyhead.num_layers = 1
  model = GLIP(cfg, rngs=nnx.Rngs(0))
  # At random init every phrase score is near the prior 0.01 (0.006-0.015): a threshold of 0.0115 leaves 7 to 14
  # detections per image after NMS, below the cap of 20 (measured).
  pp = dict(max_phrases=4, pre_nms_thresh=0.0115, pre_nms_top_n=40, nms_thresh=0.6, detections_per_img=20)
  summary = onnx_model.export_onnx(model, cfg, tmp_path / "tiny.onnx", batch=2, image_size=(64, 96), text_len=8,
                                   postprocess=pp)
  assert summary["outputs"] == {"dot_product_logits": [2, 129, 8], "box_regression": [2, 129, 4],
                                "centerness": [2, 129], "boxes": [2, 20, 4], "scores": [2, 20], "labels": [2, 20],
                                "valid": [2, 20]}
  assert summary["inputs"] == {"images": [2, 64, 96, 3], "input_ids": [2, 8], "attention_mask": [2, 8],
                               "phrase_map": [2, 4, 8], "phrase_mask": [2, 4], "image_hw": [2, 2]}
  anchors, counts = anchor_ops.for_canvas((64, 96), tuple(cfg.anchors.strides), tuple(cfg.anchors.sizes))
  options = {k: v for k, v in pp.items() if k != "max_phrases"}

  @jax.jit
  def reference(images, ids, mask, phrase_map, phrase_mask, image_hw):
    out = model(images, ids, mask)
    return dict(out, **postprocess(out, anchors, counts, phrase_map, phrase_mask, image_hw, **options))

  rng = np.random.default_rng(0)
  images, ids, mask = _inputs(rng, 2, 64, 96, 8, cfg.language.vocab_size)
  phrases = dict(zip(onnx_model.POSTPROCESS_INPUTS, _phrases(8)))
  other = rng.integers(1, cfg.language.vocab_size, ids.shape).astype(np.int32) * mask
  results = []
  for prompt in (ids, other):  # the text encoder is live: another prompt gives other outputs, still glipjax's
    ours = onnx_model.run_onnx(tmp_path / "tiny.onnx", images, prompt, mask, **phrases)
    want = jax.tree.map(np.asarray, reference(images, prompt, mask, *phrases.values()))
    for name in onnx_model.OUTPUTS:
      np.testing.assert_allclose(ours[name], want[name], atol=ATOL, err_msg=name)
    assert 0 < want["valid"].sum() < want["valid"].size  # some detections, not a full list: the cap is not hit
    for name in ("valid", "labels"):
      np.testing.assert_array_equal(ours[name], want[name], err_msg=name)
    np.testing.assert_allclose(ours["scores"], want["scores"], atol=ATOL, err_msg="scores")
    np.testing.assert_allclose(ours["boxes"], want["boxes"], atol=BOX_ATOL, err_msg="boxes")
    results.append(ours)
  # The text encoder is live: another prompt on the same images gives other logits.
  assert np.abs(results[1]["dot_product_logits"] - results[0]["dot_product_logits"]).max() > 1e-2
  with pytest.raises(FileExistsError):
    onnx_model.export_onnx(model, cfg, tmp_path / "tiny.onnx", batch=2, image_size=(64, 96), text_len=8)


def test_bad_shapes_are_clear_errors():
  cfg = tiny.get_config().model
  for kw, message in [(dict(image_size=(100, 96), text_len=8), "multiples of 32"),
                      (dict(image_size=(64, 96), text_len=cfg.max_query_len + 1), "max_query_len"),
                      (dict(image_size=(64, 96), text_len=8, batch=0), "batch")]:
    with pytest.raises(ValueError, match=message):
      onnx_model.check_shapes(cfg, **{"batch": 1, **kw})
  options = onnx_model.postprocess_options(tiny.get_config(), max_phrases=0)
  assert options["detections_per_img"] == tiny.get_config().eval.detections_per_img
  with pytest.raises(ValueError, match="--max_phrases must be >= 1"):
    onnx_model.check_postprocess(options)


def test_export_command_rejects_a_bad_image_size_in_one_line(tmp_path):
  from glipjax import config_utils
  (tmp_path / "run").mkdir()
  config_utils.save_config(tiny.get_config(), tmp_path / "run")
  proc = subprocess.run([sys.executable, "-m", "glipjax.export", "--workdir", str(tmp_path / "run"), "--format",
                         "onnx", "--out", str(tmp_path / "x.onnx"), "--image_size", "100x96"], cwd=REPO,
                        env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO)), capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 2 and proc.stderr.strip().startswith("error: --image_size")
  assert len(proc.stderr.strip().splitlines()) == 1


def _export_cli(*args):
  return subprocess.run([sys.executable, "-m", "glipjax.export", "--format", "onnx", *map(str, args)], cwd=REPO,
                        env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO)), capture_output=True,
                        text=True, timeout=600)


@pytest.mark.slow
def test_export_command_on_a_workdir(tmp_path):
  """`glipjax.export --format onnx --postprocess` on a tiny workdir's best parameters: onnxruntime gives what the
  restored model and the run's post-processing give. ~50 s on 2 cores (a subprocess that restores and converts)."""
  import orbax.checkpoint as ocp
  from glipjax import checkpoints, config_utils
  from glipjax.interop import workdirs
  config = tiny.get_config()
  config.model.dyhead.num_layers = 1
  config.eval.update(pre_nms_thresh=0.0115, pre_nms_top_n=40, detections_per_img=20)  # see the test above
  run = tmp_path / "run"
  run.mkdir()
  config_utils.save_config(config, run)
  params = nnx.state(GLIP(config.model, rngs=nnx.Rngs(3)), nnx.Param)
  best = checkpoints.best_checkpoint_manager(run, config)
  best.save(5, args=ocp.args.Composite(params=ocp.args.StandardSave(params)), metrics={"detection/AP": 0.5})
  best.wait_until_finished()
  proc = _export_cli("--workdir", run, "--checkpoint", run / "best", "--out", tmp_path / "run.onnx",
                     "--image_size", "64,96", "--text_len", 8, "--batch", 2, "--postprocess", "--max_phrases", 4)
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.loads(proc.stdout)
  assert summary["step"] == 5 and summary["format"] == "onnx" and summary["inputs"]["phrase_map"] == [2, 4, 8]

  step, model, config = workdirs.model_from_workdir(run, checkpoint=str(run / "best"))
  anchors, counts = anchor_ops.for_canvas((64, 96), tuple(config.model.anchors.strides),
                                          tuple(config.model.anchors.sizes))
  options = {k: v for k, v in onnx_model.postprocess_options(config).items() if k != "max_phrases"}
  images, ids, mask = _inputs(np.random.default_rng(1), 2, 64, 96, 8, config.model.language.vocab_size)
  phrases = dict(zip(onnx_model.POSTPROCESS_INPUTS, _phrases(8)))
  out = model(images, ids, mask)
  want = jax.tree.map(np.asarray, dict(out, **postprocess(out, anchors, counts, *phrases.values(), **options)))
  ours = onnx_model.run_onnx(tmp_path / "run.onnx", images, ids, mask, **phrases)
  assert want["valid"].any()
  for name in ("valid", "labels"):
    np.testing.assert_array_equal(ours[name], want[name], err_msg=name)
  for name in (*onnx_model.OUTPUTS, "scores"):
    np.testing.assert_allclose(ours[name], want[name], atol=ATOL, err_msg=name)
  np.testing.assert_allclose(ours["boxes"], want["boxes"], atol=BOX_ATOL, err_msg="boxes")
  proc = _export_cli("--workdir", run, "--checkpoint", run / "best", "--out", tmp_path / "run.onnx")
  assert proc.returncode == 2
  assert proc.stderr.strip() == f"error: --out {tmp_path / 'run.onnx'} exists: choose a new file"


@pytest.mark.slow
def test_glip_t_converts_with_the_right_output_shapes():
  """GLIP-T(C) (231 M parameters, abstract: none materialised, they become graph inputs) at a small canvas: the
  whole graph converts and declares the anchors of P3..P7 and the prompt length. 45-60 s on 2 cores (23.8 k nodes;
  without `onnx_model._linear_time_checks` the converter's per-op scans would make it ~20 min, estimated)."""
  cfg = glip_model("glip_t_c")
  model = nnx.eval_shape(lambda: GLIP(cfg, rngs=nnx.Rngs(0)))
  proto, _ = onnx_model.convert(model, cfg, batch=1, image_size=(128, 96), text_len=16)
  anchors = 16 * 12 + 8 * 6 + 4 * 3 + 2 * 2 + 1 * 1
  assert onnx_model.declared_shapes(proto.graph.output) == {
      "dot_product_logits": [1, anchors, 16], "box_regression": [1, anchors, 4], "centerness": [1, anchors]}
  inputs = onnx_model.declared_shapes(proto.graph.input)
  assert list(inputs)[:3] == list(onnx_model.INPUTS) and inputs["images"] == [1, 128, 96, 3]
  weights = {k: v for k, v in inputs.items() if k.startswith("param:")}
  assert sum(int(np.prod(v)) for v in weights.values()) == count_params(model) > 230_000_000
  assert inputs["param:language_backbone/embeddings/word_embeddings/embedding"] == [30522, 768]
  assert not proto.graph.initializer or sum(int(np.prod(t.dims)) for t in proto.graph.initializer) < 10_000_000
