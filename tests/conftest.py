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
