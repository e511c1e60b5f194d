"""Dataset preparation from files written here in the real formats (COCO, LVIS, MDETR, ODVG, captions): what is
kept, what is repaired or skipped (and counted), and what is rejected with a message naming the file and record."""
import io
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from glipjax.data import images, records, sources
from glipjax.data.prepare import prepare


def _save(path: pathlib.Path, array=None, *, mode="RGB", size=(40, 30), fmt=None, exif_orientation=None):
  """An image file: `size` is (width, height) as PIL gives it."""
  path.parent.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(len(path.name))
  if array is None:
    array = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
  im = Image.fromarray(array)
  if mode == "L":
    im = im.convert("L")
  elif mode == "CMYK":
    im = im.convert("CMYK")
  elif mode == "I;16":
    im = Image.fromarray(np.asarray(im.convert("L"), np.uint16) * 257)
  elif mode == "PA":
    im = im.convert("RGBA").convert("P")
  kwargs = {}
  if exif_orientation is not None:
    exif = Image.Exif()
    exif[0x0112] = exif_orientation
    kwargs["exif"] = exif
  im.save(path, format=fmt or ("PNG" if path.suffix == ".png" else "JPEG"), **kwargs)
  return path


def _read_all(data_dir, name, split="train"):
  ds = sources.open_dataset(data_dir, name, split)
  return ds, {r["image_id"]: r for r in (records.decode(ds.source[i]) for i in range(len(ds.source)))}


@pytest.fixture
def coco_files(tmp_path):
  img = tmp_path / "images"
  _save(img / "a.jpg", size=(40, 30))
  _save(img / "gray.jpg", mode="L", size=(20, 10))
  _save(img / "cmyk.jpg", mode="CMYK", size=(20, 10))
  _save(img / "deep.png", mode="I;16", size=(16, 8))
  _save(img / "rotated.jpg", size=(20, 10), exif_orientation=6)   # stored 20x10, shown 10x20
  _save(img / "palette.png", mode="PA", size=(12, 12))
  _save(img / "tiny.png", size=(1, 1))
  _save(img / "wide.jpg", size=(4000, 300))
  (img / "truncated.jpg").write_bytes(_save(tmp_path / "full.jpg", size=(64, 64)).read_bytes()[:300])
  cats = [dict(id=90, name="bat_(animal)", supercategory="x"), dict(id=1, name="traffic_light", supercategory="x"),
          dict(id=5, name="Person", supercategory="x")]
  ims = [dict(id=1, file_name="a.jpg", height=30, width=40), dict(id=2, file_name="gray.jpg"),
         dict(id=3, file_name="cmyk.jpg"), dict(id=4, file_name="deep.png"),
         dict(id=5, file_name="rotated.jpg", height=20, width=10), dict(id=6, file_name="palette.png"),
         dict(id=7, file_name="tiny.png"), dict(id=8, file_name="wide.jpg"), dict(id=9, file_name="truncated.jpg"),
         dict(id=10, file_name="missing.jpg"), dict(id=1, file_name="gray.jpg")]  # a duplicate id
  anns = [dict(id=1, image_id=1, category_id=90, bbox=[2, 3, 10, 8], iscrowd=0),
          dict(id=2, image_id=1, category_id=5, bbox=[30, 20, 20, 20], iscrowd=1),   # partly outside: clipped
          dict(id=3, image_id=1, category_id=1, bbox=[5, 5, 0, 4]),                  # zero width: dropped
          dict(id=4, image_id=1, category_id=1, bbox=[5, 5, -3, 4]),                 # negative: dropped
          dict(id=5, image_id=99, category_id=1, bbox=[1, 1, 4, 4]),                 # unknown image
          dict(id=6, image_id=8, category_id=1, bbox=[100, 10, 3000, 200]),
          dict(id=7, image_id=7, category_id=1, bbox=[0, 0, 1, 1]),                  # a 1x1 image's box
          dict(id=8, image_id=2, category_id=2, bbox=[1, 1, 4, 4]),                  # unknown category
          dict(id=9, image_id=1, category_id=1, bbox=[100, 100, 5, 5])]              # outside the image
  path = tmp_path / "instances.json"
  path.write_text(json.dumps(dict(images=ims, annotations=anns, categories=cats)))
  return path, img


def test_coco_records_keep_boxes_labels_crowds_and_original_ids(coco_files, tmp_path):
  path, img = coco_files
  stats = prepare("coco", str(path), str(img), "mini", str(tmp_path / "tfds"), "validation")
  ds, recs = _read_all(tmp_path / "tfds", "mini", "validation")
  # Non-contiguous ids sorted (1, 5, 90) -> labels 1..3; names cleaned as GLIP's prompts write them.
  assert [(c.id, c.name) for c in ds.categories] == [(1, "traffic light"), (5, "person"), (90, "bat")]
  a = recs[1]
  assert a["image"].shape == (30, 40, 3)
  np.testing.assert_allclose(a["boxes"], [[2, 3, 11, 10], [30, 20, 39, 29]])  # xywh -> inclusive xyxy, clipped
  assert a["labels"].tolist() == [3, 2] and a["iscrowd"].tolist() == [False, True]
  assert a["original_image_id"] == 1 and a["file_name"] == "a.jpg" and a["caption"] == ""
  assert sorted(recs) == [1, 2, 3, 4, 5, 6, 7, 8]  # truncated and missing files skipped
  assert stats["images"] == 8 and stats["boxes"] == 3
  counts = stats["counts"]
  assert counts["boxes clipped to the image"] == 1  # the crowd box
  assert counts["boxes dropped: zero-area or negative"] == 3  # w = 0, w < 0, and w = 1 (x2 == x1, as GLIP drops)
  assert counts["boxes dropped: annotation for an unknown image id"] == 1
  assert counts["boxes dropped: unknown category id"] == 1
  assert counts["boxes dropped: zero-area or outside the image"] == 1
  assert counts["images skipped: duplicate image id (later entry)"] == 1
  assert counts["images skipped: missing file"] == 1
  assert counts["images skipped: unreadable or truncated image"] == 1
  assert any("missing.jpg" in e for e in stats["examples"]["images skipped: missing file"])
  assert ds.statistics["counts"] == counts  # stored in the dataset's metadata
  assert ds.annotations == stats["annotations"] == str(path.absolute())  # evaluators score against this file


def test_images_are_converted_to_8bit_rgb_with_exif_orientation(coco_files, tmp_path):
  path, img = coco_files
  stats = prepare("coco", str(path), str(img), "mini", str(tmp_path / "tfds"))
  _, recs = _read_all(tmp_path / "tfds", "mini")
  for iid, hw in {2: (10, 20), 3: (10, 20), 4: (8, 16), 5: (20, 10), 6: (12, 12), 7: (1, 1), 8: (300, 4000)}.items():
    assert recs[iid]["image"].shape == hw + (3,) and recs[iid]["image"].dtype == np.uint8, iid
  deep = recs[4]["image"]
  assert deep.max() > 100  # 16-bit data scaled into 8 bits, not clipped to black
  counts = stats["counts"]
  for repair in ("EXIF orientation applied", "16/32-bit -> 8-bit", "CMYK -> RGB", "L -> RGB",
                 "alpha composited on white"):
    assert counts[f"images repaired: {repair}"] >= 1, repair
  np.testing.assert_allclose(recs[8]["boxes"], [[100, 10, 3099, 209]])


def test_exif_orientation_is_left_alone_when_the_json_size_is_the_stored_pixels(tmp_path):
  _save(tmp_path / "im" / "r.jpg", size=(20, 10), exif_orientation=6)
  got = images.read_image(tmp_path / "im" / "r.jpg", expected_hw=(10, 20))
  with Image.open(io.BytesIO(got.data)) as im:
    assert im.size == (20, 10)
  assert got.repairs == ("EXIF orientation ignored (the annotation's size is the stored pixels')",)


@pytest.mark.parametrize("content, message", [
    ('{"images": [}', "malformed JSON at line 1 column 13"),
    (json.dumps(dict(images=[], annotations=[], categories=[dict(id=3, name=" _ ")])), "category id 3 has an empty name"),
    (json.dumps(dict(images=[dict(id=1, file_name="x.jpg")], annotations=[dict(id=1, bbox=[0, 0, 1, 1])],
                     categories=[dict(id=1, name="a")])), "annotations[0] has no 'image_id'"),
    (json.dumps(dict(annotations=[])), "not a COCO-format file"),
])
def test_broken_coco_files_are_rejected_naming_the_file_and_record(tmp_path, content, message):
  (tmp_path / "im").mkdir()
  path = tmp_path / "bad.json"
  path.write_text(content)
  with pytest.raises(sources.PrepareError, match=message.replace("[", r"\[").replace("]", r"\]")) as e:
    prepare("coco", str(path), str(tmp_path / "im"), "bad", str(tmp_path / "tfds"))
  assert str(path) in str(e.value)


def test_roboflow_dummy_category_is_dropped_and_a_label_map_renames(tmp_path):
  _save(tmp_path / "im" / "a.jpg")
  cats = [dict(id=0, name="cells", supercategory="none"), dict(id=1, name="rbc", supercategory="cells"),
          dict(id=2, name="wbc", supercategory="cells")]
  path = tmp_path / "_annotations.coco.json"
  path.write_text(json.dumps(dict(images=[dict(id=0, file_name="a.jpg")], categories=cats,
                                  annotations=[dict(id=0, image_id=0, category_id=2, bbox=[1, 1, 5, 5])])))
  (tmp_path / "names.json").write_text(json.dumps({"1": "red blood cell", "2": "white blood cell"}))
  stats = prepare("coco", str(path), str(tmp_path / "im"), "cells", str(tmp_path / "tfds"),
                  label_map=str(tmp_path / "names.json"))
  ds, recs = _read_all(tmp_path / "tfds", "cells")
  assert ds.category_names == ["red blood cell", "white blood cell"] and recs[0]["labels"].tolist() == [2]
  assert stats["counts"]["categories dropped: Roboflow dummy category 0"] == 1


def test_lvis_keeps_negative_and_not_exhaustive_categories_and_frequency(tmp_path):
  _save(tmp_path / "coco" / "val2017" / "000000000007.jpg")
  cats = [dict(id=1, name="aerosol_can", frequency="c", synonyms=[]), dict(id=3, name="apple", frequency="f"),
          dict(id=7, name="zebra", frequency="r")]
  ims = [dict(id=7, coco_url="http://images.cocodataset.org/val2017/000000000007.jpg", height=30, width=40,
              neg_category_ids=[7], not_exhaustive_category_ids=[3])]
  path = tmp_path / "lvis_v1_val.json"
  path.write_text(json.dumps(dict(images=ims, categories=cats,
                                  annotations=[dict(id=1, image_id=7, category_id=3, bbox=[1, 2, 3, 4], area=12)])))
  prepare("lvis", str(path), str(tmp_path / "coco"), "lvis", str(tmp_path / "tfds"), "validation")
  ds, recs = _read_all(tmp_path / "tfds", "lvis", "validation")
  assert [c.frequency for c in ds.categories] == ["c", "f", "r"] and ds.category_names[0] == "aerosol can"
  r = recs[7]
  assert r["labels"].tolist() == [2] and r["neg_category_ids"].tolist() == [3]
  assert r["not_exhaustive_category_ids"].tolist() == [2] and r["file_name"] == "val2017/000000000007.jpg"


def test_mdetr_captions_become_phrases_with_spans_repaired_or_dropped(tmp_path):
  _save(tmp_path / "im" / "f.jpg", size=(50, 40))
  caption = "A man in a red shirt holds two dogs."
  ims = [dict(id=0, file_name="f.jpg", caption=caption, original_img_id=1234, sentence_id=2, height=40, width=50),
         dict(id=1, file_name="f.jpg", caption="  ", original_img_id=1234, sentence_id=3)]
  anns = [dict(id=0, image_id=0, bbox=[1, 1, 10, 20], tokens_positive=[[0, 5]], category_id=1),     # "A man"
          dict(id=1, image_id=0, bbox=[20, 5, 10, 10], tokens_positive=[[31, 35]], category_id=1),  # "dogs"
          dict(id=2, image_id=0, bbox=[32, 5, 10, 10], tokens_positive=[[31, 35]], category_id=1),  # same phrase
          dict(id=3, image_id=0, bbox=[2, 2, 5, 5], tokens_positive=[[12, 17], [28, 30]], category_id=1),  # cut words
          dict(id=4, image_id=0, bbox=[2, 2, 5, 5], tokens_positive=[[40, 45]], category_id=1)]   # beyond: dropped
  path = tmp_path / "final_flickr_separateGT_train.json"
  path.write_text(json.dumps(dict(images=ims, annotations=anns, categories=[dict(id=1, name="object")])))
  stats = prepare("mdetr", str(path), str(tmp_path / "im"), "flickr", str(tmp_path / "tfds"))
  ds, recs = _read_all(tmp_path / "tfds", "flickr")
  assert ds.kind == "grounding" and ds.categories == [] and sorted(recs) == [0]
  r = recs[0]
  assert r["caption"] == caption and r["original_image_id"] == 1234 and r["sentence_id"] == 2
  phrases = records.phrase_span_lists(r["phrase_spans"], r["span_phrase"])
  texts = [[caption[b:e] for b, e in p] for p in phrases]
  assert texts == [["A man"], ["dogs"], ["red shirt", "two"]]
  assert r["box_phrase"].tolist() == [0, 1, 1, 2] and len(r["boxes"]) == 4
  c = stats["counts"]
  assert c["spans widened to whole words"] == 2 and c["spans dropped: empty or beyond the caption"] == 1
  assert c["boxes dropped: no valid tokens_positive span"] == 1 and c["captions skipped: empty caption"] == 1
  assert stats["phrases"] == 3


def test_odvg_detection_and_grounding_lines_and_captions_jsonl(tmp_path):
  _save(tmp_path / "im" / "a.jpg", size=(40, 30))
  lines = [dict(filename="a.jpg", height=30, width=40, detection=dict(instances=[
               dict(bbox=[1, 2, 11, 12], label=3, category="motorcycle"), dict(bbox=[5, 5, 9, 9], label=8)])),
           dict(filename="a.jpg", height=30, width=40, grounding=dict(caption="a red bike near a tree", regions=[
               dict(bbox=[0, 0, 20, 20], phrase="a red bike", tokens_positive=[[0, 10]]),
               dict(bbox=[20, 0, 40, 30], phrase="a tree")]))]
  (tmp_path / "o.jsonl").write_text("\n".join(json.dumps(l) for l in lines) + "\n")
  (tmp_path / "label_map.json").write_text(json.dumps({"3": "motorcycle", "8": "traffic_light"}))
  stats = prepare("odvg", str(tmp_path / "o.jsonl"), str(tmp_path / "im"), "odvg", str(tmp_path / "tfds"),
                  label_map=str(tmp_path / "label_map.json"))
  ds, recs = _read_all(tmp_path / "tfds", "odvg")
  assert ds.category_names == ["motorcycle", "traffic light"]
  np.testing.assert_allclose(recs[1]["boxes"], [[1, 2, 10, 11], [5, 5, 8, 8]])  # exclusive far edge -> inclusive
  assert recs[1]["labels"].tolist() == [1, 2]
  g = recs[2]
  assert [g["caption"][b:e] for b, e in g["phrase_spans"]] == ["a red bike", "a tree"]
  assert g["box_phrase"].tolist() == [0, 1] and stats["counts"]["spans located from the region's phrase"] == 1

  (tmp_path / "c.jsonl").write_text(json.dumps(dict(image="a.jpg", caption="a photo")) + "\n\n" +
                                    json.dumps(dict(image="a.jpg", caption="")) + "\n")
  stats = prepare("captions", str(tmp_path / "c.jsonl"), str(tmp_path / "im"), "web", str(tmp_path / "tfds"))
  _, recs = _read_all(tmp_path / "tfds", "web")
  assert [r["caption"] for r in recs.values()] == ["a photo"] and len(recs[1]["boxes"]) == 0
  assert stats["counts"]["captions skipped: empty caption"] == 1


def test_prepare_command_prints_statistics_and_one_line_errors(coco_files, tmp_path):
  path, img = coco_files
  cmd = [sys.executable, "-m", "glipjax.data.prepare", "--format", "coco", "--annotations", str(path), "--images",
         str(img), "--name", "mini", "--data_dir", str(tmp_path / "tfds"), "--split", "validation"]
  ok = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
  assert ok.returncode == 0, ok.stderr[-2000:]
  assert "8 images, 3 boxes" in ok.stdout and "images skipped: missing file: 1" in ok.stdout
  again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
  assert again.returncode == 2 and "already exists; pass --overwrite" in again.stderr
  assert "Traceback" not in again.stderr and len(again.stderr.strip().splitlines()) == 1
  missing = subprocess.run(cmd[:6] + [str(tmp_path / "nope.json")] + cmd[7:], capture_output=True, text=True,
                           timeout=300)
  assert missing.returncode == 2 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr


@pytest.fixture(scope="module")
def mixture(prepared_mixture, tmp_path_factory):
  """The conftest's prepared `det` (COCO format) and `gnd` (MDETR format) datasets, mixed 3:1."""
  import ml_collections
  from glipjax.data import pipeline
  from glipjax.text.tokenizers import SentencePieceTokenizer, train_sentencepiece
  cfg = ml_collections.ConfigDict(dict(
      sources=(("det", 3.0), ("gnd", 1.0)), eval_source="", data_dir=str(prepared_mixture), train_short_sides=(48,),
      max_size=64, eval_short_side=48, canvas=(64, 64), aspect_buckets=(), flip_prob=0.5, max_boxes=4, max_phrases=6, num_workers=0,
      detection_prompt_prob=0.5, max_negatives=2))
  sp = train_sentencepiece(pipeline.iter_captions(cfg), tmp_path_factory.mktemp("sp") / "sp", 48)
  return cfg, SentencePieceTokenizer(sp)


def test_a_weighted_mixture_of_prepared_datasets_is_deterministic_and_resumable(mixture):
  from glipjax.data import pipeline
  cfg, tok = mixture
  make = lambda: pipeline.make_pipeline(cfg, "train", tok, global_batch_size=8, train=True, seed=1, max_query_len=32)
  it = make()
  first = next(it)
  assert first["image"].shape == (8, 64, 64, 3) and first["box_mask"].any(1).all()
  # Weights 3:1: grain interleaves three detection examples, then one grounding example (rows 3 and 7), whose
  # single box spans y 2..21 (the detection boxes span y 6..19).
  for row in range(8):
    ys = first["boxes"][row][first["box_mask"][row]][:, 1::2]
    assert (ys.tolist() == [[2, 21]]) == (row in (3, 7)), (row, ys)
  for i in range(8):  # every box's positive tokens are its phrase's
    for g in np.nonzero(first["box_mask"][i])[0]:
      np.testing.assert_array_equal(first["positive_map"][i, g], first["phrase_map"][i, first["box_labels"][i, g] - 1])
  np.testing.assert_array_equal(next(make())["input_ids"], first["input_ids"])
  state = it.get_state()
  expected = next(it)
  resumed = make()
  resumed.set_state(state)
  got = next(resumed)
  for key in expected:
    np.testing.assert_array_equal(got[key], expected[key])
  # Two processes' rows of each global batch assemble the single-process batch.
  halves = [next(pipeline.make_pipeline(cfg, "train", tok, global_batch_size=8, train=True, seed=1,
                                        max_query_len=32, rows=rows)) for rows in ((0, 4), (4, 8))]
  for key in first:
    np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), first[key])


def test_mixture_config_errors_name_the_problem(mixture, tmp_path):
  from glipjax.data import pipeline
  cfg, tok = mixture
  bad = cfg.copy_and_resolve_references()
  bad.sources = (("det", 0.0),)
  with pytest.raises(ValueError, match="positive weights"):
    pipeline.make_pipeline(bad, "train", tok, global_batch_size=2, train=True, seed=0, max_query_len=32)
  bad.sources = (("nope", 1.0),)
  with pytest.raises(FileNotFoundError, match="dataset 'nope' split 'train' is not prepared"):
    pipeline.make_pipeline(bad, "train", tok, global_batch_size=2, train=True, seed=0, max_query_len=32)
