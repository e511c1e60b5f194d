"""`glipjax.export --format onnx`: the whole detector, text encoder included, as an ONNX model that onnxruntime
runs with glipjax's outputs; shape errors are one-line command errors; GLIP-T(C) converts (slow)."""
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

REPO = pathlib.Path(__file__).resolve().parents[1]
# Measured on the tiny model (outputs up to ~5): 1e-6 for the logits, 1e-7 for boxes and centerness.
ATOL = 2e-5


def _inputs(rng, b, h, w, t, vocab):
  images = rng.standard_normal((b, h, w, 3)).astype(np.float32)
  ids = rng.integers(1, vocab, (b, t)).astype(np.int32)
  mask = np.ones((b, t), np.int32)
  mask[1, t // 2:], ids[1, t // 2:] = 0, 0  # a padded prompt
  return images, ids, mask


def test_onnxruntime_runs_the_detector_with_glipjax_outputs(tmp_path):
  """The tiny model with one DyHead layer (VLFuse, tower BERT layer, DyConv: every module type; conversion time
  grows with the op count, ~80 s for the quickstart's two layers on 2 cores)."""
  cfg = tiny.get_config().model
  cfg.dyhead.num_layers = 1
  model = GLIP(cfg, rngs=nnx.Rngs(0))
  summary = onnx_model.export_onnx(model, cfg, tmp_path / "tiny.onnx", batch=2, image_size=(64, 96), text_len=8)
  assert summary["outputs"] == {"dot_product_logits": [2, 129, 8], "box_regression": [2, 129, 4],
                                "centerness": [2, 129]}
  reference = jax.jit(lambda *a: model(*a))
  rng = np.random.default_rng(0)
  images, ids, mask = _inputs(rng, 2, 64, 96, 8, cfg.language.vocab_size)
  ours = onnx_model.run_onnx(tmp_path / "tiny.onnx", images, ids, mask)
  want = reference(images, ids, mask)
  for name in onnx_model.OUTPUTS:
    np.testing.assert_allclose(ours[name], np.asarray(want[name]), atol=ATOL, err_msg=name)
  # The text encoder is live: another prompt on the same images gives other logits, still glipjax's.
  other = rng.integers(1, cfg.language.vocab_size, ids.shape).astype(np.int32) * mask
  ours2 = onnx_model.run_onnx(tmp_path / "tiny.onnx", images, other, mask)
  assert np.abs(ours2["dot_product_logits"] - ours["dot_product_logits"]).max() > 1e-2
  np.testing.assert_allclose(ours2["dot_product_logits"], np.asarray(reference(images, other, mask)
                                                                     ["dot_product_logits"]), atol=ATOL)
  with pytest.raises(FileExistsError):
    onnx_model.export_onnx(model, cfg, tmp_path / "tiny.onnx", batch=2, image_size=(64, 96), text_len=8)


def test_bad_shapes_are_clear_errors():
  cfg = tiny.get_config().model
  for kw, message in [(dict(image_size=(100, 96), text_len=8), "multiples of 32"),
                      (dict(image_size=(64, 96), text_len=cfg.max_query_len + 1), "max_query_len"),
                      (dict(image_size=(64, 96), text_len=8, batch=0), "batch")]:
    with pytest.raises(ValueError, match=message):
      onnx_model.check_shapes(cfg, **{"batch": 1, **kw})


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


@pytest.mark.slow
def test_glip_t_converts_with_the_right_output_shapes():
  """GLIP-T(C) (231 M parameters, abstract: none materialised, they become graph inputs) at a small canvas: the
  whole graph converts and declares the anchors of P3..P7 and the prompt length. ~45 s on 2 cores (23.8 k nodes;
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
