"""Shared pytest fixtures. The official-code reference fixtures live outside the repo (../shared/glip_reference);
set GLIP_REFERENCE_DIR to point elsewhere. Tests that need them are skipped *with a visible reason* otherwise."""
import os
import pathlib

import pytest

# Most test time is XLA compiling the tiny train step. LLVM at -O0 compiles it ~1.5x faster and runs the few
# steps a test takes ~2x slower: a net win here (numerics are the same up to float rounding). Subprocesses that
# tests start (multi-process runs, the CLI) inherit it. Set before JAX creates its backend.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
# YNNPACK's reduce fusions are library calls, XLA's own reductions are compiled code: keeping YNNPACK's compiles
# the tiny step ~15% faster (22-25 s vs 26-31 s). glipjax turns them off by default for run time (glipjax/__init__.py),
# which matters for long steps, not for the few tiny steps a test takes.
if "xla_cpu_experimental_ynn_fusion_type" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] += " --xla_cpu_experimental_ynn_fusion_type=+reduce"

import glipjax  # noqa: E402,F401  (sets flax config before any module is built)

REPO = pathlib.Path(__file__).resolve().parents[1]


def reference_root() -> pathlib.Path:
  return pathlib.Path(os.environ.get("GLIP_REFERENCE_DIR", REPO.parent / "shared" / "glip_reference"))


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: long-running; excluded from `make test`, run with `make test-slow`")


def pytest_report_header(config):
  root = reference_root()
  state = "found" if root.is_dir() else "MISSING - official parity tests will be skipped"
  return f"GLIP reference fixtures: {root} ({state})"


@pytest.fixture(scope="session")
def reference_dir() -> pathlib.Path:
  """The tiny GLIP-T(C) fixture folder produced by the official PyTorch code."""
  path = reference_root() / "tiny_glip_t_c"
  if not path.is_dir():
    pytest.skip(f"official GLIP reference fixtures not found at {path} (set GLIP_REFERENCE_DIR)")
  return path


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory):
  """Several tests build the same tiny train step; XLA's persistent cache makes the repeats cheap."""
  import jax
  jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("xla_cache")))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  yield


@pytest.fixture(scope="session")
def prepared_mixture(tmp_path_factory) -> pathlib.Path:
  """A data_dir holding a prepared detection dataset `det` (COCO json: 3 non-contiguous categories, 6 images)
  and a prepared grounding dataset `gnd` (MDETR json: 4 captions), written here in the real formats, each as
  its train and validation split."""
  import json

  import numpy as np
  from PIL import Image

  from glipjax.data.prepare import prepare
  root = tmp_path_factory.mktemp("mixture")
  rng = np.random.default_rng(0)
  (root / "im").mkdir()
  for i in range(6):
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(root / "im" / f"{i}.jpg")
  cats = [dict(id=3, name="dog"), dict(id=7, name="traffic_light"), dict(id=9, name="cat")]
  anns = [dict(id=10 * i + k, image_id=i, category_id=[3, 7, 9][(i + k) % 3], bbox=[4 + 8 * k, 6, 12, 14], iscrowd=0)
          for i in range(6) for k in range(1 + i % 2)]
  (root / "det.json").write_text(json.dumps(dict(images=[dict(id=i, file_name=f"{i}.jpg") for i in range(6)],
                                                 annotations=anns, categories=cats)))
  caps = ["a dog left of a cat", "two cats on a mat", "the traffic light", "a black dog"]
  spans = [[[0, 5]], [[0, 8]], [[0, 17]], [[0, 11]]]
  (root / "gnd.json").write_text(json.dumps(dict(
      images=[dict(id=i, file_name=f"{i}.jpg", caption=c) for i, c in enumerate(caps)],
      annotations=[dict(id=i, image_id=i, bbox=[2, 2, 20, 20], tokens_positive=s) for i, s in enumerate(spans)],
      categories=[dict(id=1, name="object")])))
  for split in ("train", "validation"):  # the same files as both splits: evaluation is tested, not generalisation
    prepare("coco", str(root / "det.json"), str(root / "im"), "det", str(root / "tfds"), split=split)
    prepare("mdetr", str(root / "gnd.json"), str(root / "im"), "gnd", str(root / "tfds"), split=split)
  return root / "tfds"
