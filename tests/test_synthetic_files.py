"""glipjax.tools.synthetic_files: synthetic scenes written in the real formats prepare into the records the
embedded generator makes (detection, grounding, captions, and the held-out vocabulary)."""
import numpy as np

from glipjax.data import records, sources, synthetic
from glipjax.data.prepare import prepare
from glipjax.tools import synthetic_files


def test_files_prepare_back_into_the_generated_scenes(tmp_path):
  synthetic_files.write(tmp_path / "files", seed=5, count=6, image_size=(64, 64))
  data_dir = tmp_path / "tfds"
  for fmt, annotations, name in (("coco", "instances.json", "det"), ("mdetr", "grounding.json", "gnd"),
                                 ("captions", "captions.jsonl", "cap"), ("coco", "held_out.json", "held")):
    prepare(fmt, str(tmp_path / "files" / annotations), str(tmp_path / "files" / "images"), name, str(data_dir))
  det, gnd, cap, held = (sources.open_dataset(data_dir, n, "train") for n in ("det", "gnd", "cap", "held"))
  assert det.category_names == synthetic.category_names() and (det.kind, gnd.kind, cap.kind) == (
      "detection", "grounding", "captions")
  assert held.category_names == ["crimson circle", "emerald circle", "azure circle", "amber circle",
                                 "violet circle"]
  circles = {synthetic.kind_id((c, "circle")): i + 1 for i, c in enumerate(synthetic.COLOURS)}
  for i in range(6):
    scene = synthetic.generate_scene(np.random.default_rng([5, i]), (64, 64))
    d, g, c, h = (records.decode(x.source[i]) for x in (det, gnd, cap, held))
    np.testing.assert_array_equal(d["image"], scene["image"])  # PNG: lossless
    np.testing.assert_allclose(d["boxes"], scene["boxes"])      # COCO xywh <-> pixel-inclusive xyxy
    np.testing.assert_array_equal(d["labels"], scene["labels"])
    assert g["caption"] == c["caption"] == scene["caption"] and len(c["boxes"]) == 0
    named = scene["box_phrase"] >= 0
    np.testing.assert_allclose(g["boxes"], scene["boxes"][named])
    phrases = [scene["caption"][s:e] for s, e in scene["phrase_spans"][scene["box_phrase"][named]]]
    assert [g["caption"][s:e] for s, e in g["phrase_spans"][g["box_phrase"]]] == phrases
    keep = np.isin(scene["labels"], list(circles))
    np.testing.assert_array_equal(h["labels"], [circles[int(l)] for l in scene["labels"][keep]])
