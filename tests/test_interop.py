"""Interop with the official PyTorch GLIP: `glipjax.convert` (official checkpoint -> workdir) and `glipjax.export
--format official` (workdir -> strict-loadable state dict), exact round trips both ways, strictness, and the
refusal of pickles that would run code."""
import json
import os
import pathlib
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

import glipjax  # noqa: F401
from configs import tiny
from glipjax import checkpoints, config_utils, runtime
from glipjax.interop import official, workdirs
from glipjax.models.glip import GLIP

REPO = pathlib.Path(__file__).resolve().parents[1]
ENV = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))


def _cli(*args, check=True):
  proc = subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=ENV, capture_output=True, text=True,
                        timeout=600)
  if check and proc.returncode != 0:
    raise AssertionError(f"{args[0]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
  return proc


@pytest.fixture(scope="module")
def fixture_config(reference_dir, tmp_path_factory):
  """A config file for the official fixture's model, with the fixture's WordPiece vocabulary."""
  root = tmp_path_factory.mktemp("fixture_config")
  ref = json.loads((reference_dir / "config.json").read_text())
  (root / "vocab.txt").write_text("\n".join(ref["tokenizer"]["vocab"]) + "\n")
  (root / "fixture_cfg.py").write_text(f'''
import json
from configs import base
from configs.model import fixture_model

def get_config():
  c = base.get_config()
  c.model = fixture_model(json.load(open({str(reference_dir / "config.json")!r}))["tiny_hparams"])
  c.data.update(tokenizer="wordpiece", tokenizer_path={str(root / "vocab.txt")!r}, eval_short_side=128,
                max_size=160, canvas=(128, 160), aspect_buckets=())
  c.optim.ema_decay = 0.999
  return c
''')
  return root / "fixture_cfg.py"


@pytest.fixture(scope="module")
def fixture_weights(reference_dir):
  return official.load_official_checkpoint(reference_dir / "weights.npz")


def _is_buffer(key):
  return any(re.search(p, key) for p in official.IGNORE)


def test_convert_and_export_commands_round_trip(tmp_path, fixture_config, fixture_weights):
  """official (.pth, DDP keys, model + model_ema, prompt-tuned) -> convert --ema -> workdir -> export -> the same
  tensors, bit for bit, buffers and dtypes included; exported again through a second convert, still the same."""
  torch = pytest.importorskip("torch")
  # A prompt-tuned checkpoint (official ADD_LINEAR_LAYER): its table comes in and goes out under its name.
  fixture_weights = dict(fixture_weights, **{"rpn.tunable_linear.weight": np.random.default_rng(0).normal(
      size=(1000, 64)).astype(np.float32)})
  ema = {k: v if _is_buffer(k) else v + np.asarray(1, v.dtype) for k, v in fixture_weights.items()}
  torch.save({"model": {"module." + k: torch.from_numpy(v) for k, v in fixture_weights.items()},
              "model_ema": {"module." + k: torch.from_numpy(v) for k, v in ema.items()}, "iteration": 90000},
             tmp_path / "official.pth")
  proc = _cli("glipjax.convert", "--from-official", str(tmp_path / "official.pth"), "--config", str(fixture_config),
              "--workdir", str(tmp_path / "run"), "--ema")
  summary = json.loads(proc.stdout)
  assert summary["parameters"] == len(fixture_weights) - 10  # 5 relative_position_index + 5 cell_anchors
  assert summary["ignored"] == sorted(k for k in fixture_weights if _is_buffer(k))
  assert (tmp_path / "run" / "vocab.txt").is_file() and (tmp_path / "run" / "checkpoints" / "0").is_dir()
  assert config_utils.load_workdir_config(tmp_path / "run").model.tunable_linear_rows == 1000

  _cli("glipjax.export", "--workdir", str(tmp_path / "run"), "--format", "official",
       "--out", str(tmp_path / "export.safetensors"))
  from safetensors.numpy import load_file
  back = load_file(tmp_path / "export.safetensors")
  assert sorted(back) == sorted(ema)
  for k, v in ema.items():
    assert back[k].dtype == v.dtype, k
    np.testing.assert_array_equal(back[k], v, err_msg=k)

  # The same through the library the commands call (in process: each command start costs ~15 s of imports).
  step, state = workdirs.official_state_from_workdir(tmp_path / "run")
  official.save_state_dict({"module." + k: v for k, v in state.items()}, tmp_path / "export.pth")
  pth = torch.load(tmp_path / "export.pth", weights_only=True)
  assert step == 0 and sorted(pth) == sorted("module." + k for k in ema)
  for k, v in ema.items():
    np.testing.assert_array_equal(pth["module." + k].numpy(), v, err_msg=k)

  config = config_utils.load_workdir_config(tmp_path / "run")
  workdirs.convert_official(official.load_official_checkpoint(tmp_path / "export.pth"), config, tmp_path / "run2")
  _, again = workdirs.official_state_from_workdir(tmp_path / "run2")
  for k, v in ema.items():
    np.testing.assert_array_equal(again[k], v, err_msg=k)


def _load_config(path):
  import importlib.util
  spec = importlib.util.spec_from_file_location("fixture_cfg", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def test_converted_workdir_is_a_run(tmp_path, fixture_config, fixture_weights):
  """The trainer resumes a converted workdir at step 0 with the imported parameters (fine-tuning), and the
  inference restore reads them (EMA = parameters at conversion)."""
  config = _load_config(fixture_config)
  workdirs.convert_official(fixture_weights, config, tmp_path / "run")
  saved = config_utils.load_workdir_config(tmp_path / "run")
  assert saved.data.tokenizer_path == str((tmp_path / "run" / "vocab.txt").absolute())
  s = runtime.build(saved)

  class DataIterator:  # what the trainer's grain iterator offers restore_latest
    state = dict(next_index=-1)
    def get_state(self):
      return self.state
    def set_state(self, state):
      self.state = state

  data_iter = DataIterator()
  with jax.set_mesh(s.mesh):
    step, state = checkpoints.restore_latest(checkpoints.checkpoint_manager(tmp_path / "run", saved), s, data_iter)
    _, ema_params = checkpoints.restore_params(s, tmp_path / "run")
  assert step == 0 and int(state["step"]) == 0 and data_iter.state["next_index"] == 0
  model = nnx.merge(s.graphdef, state["params"], s.init_rest())
  np.testing.assert_array_equal(np.asarray(model.head.bias0[...]).reshape(-1), fixture_weights["rpn.head.bias0"])
  for a, b in zip(jax.tree.leaves(state["params"]), jax.tree.leaves(ema_params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert all(float(np.abs(np.asarray(m)).max()) == 0 for m in jax.tree.leaves(state["opt_state"])
             if hasattr(m, "shape") and m.ndim > 0)  # a fresh optimizer: zero moments


@pytest.mark.parametrize("scan", [False, True])
def test_glipjax_official_glipjax_round_trip(scan):
  """Random glipjax parameters -> official state dict -> a fresh model: every parameter bit for bit (also with
  scanned layers, whose stacked parameters split into the official per-layer keys)."""
  cfg = tiny.get_config().model
  cfg.scan_layers = scan
  model = GLIP(cfg, rngs=nnx.Rngs(3))
  exported = official.export_official(model, cfg)
  assert "rpn.anchor_generator.cell_anchors.0" in exported
  fresh = nnx.eval_shape(lambda: GLIP(cfg, rngs=nnx.Rngs(4)))
  official.import_official(fresh, exported, cfg)
  ours, theirs = nnx.to_flat_state(nnx.state(model, nnx.Param)), nnx.to_flat_state(nnx.state(fresh, nnx.Param))
  assert [p for p, _ in ours] == [p for p, _ in theirs]
  for (path, a), (_, b) in zip(ours, theirs):
    np.testing.assert_array_equal(np.asarray(a.get_value()), np.asarray(b.get_value()), err_msg=str(path))


class _RunsCode:
  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused(tmp_path):
  torch = pytest.importorskip("torch")
  evil = _RunsCode()
  evil.marker = tmp_path / "pwned"
  _RunsCode.marker = evil.marker
  torch.save({"model": {"rpn.head.bias0": torch.zeros(1)}, "payload": evil}, tmp_path / "evil.pth")
  with pytest.raises(ValueError, match="refused"):
    official.load_official_checkpoint(tmp_path / "evil.pth")
  assert not evil.marker.exists()
  proc = _cli("glipjax.convert", "--from-official", str(tmp_path / "evil.pth"), "--config", "configs/tiny.py",
              "--workdir", str(tmp_path / "run"), check=False)
  assert proc.returncode == 2 and not evil.marker.exists()
  assert proc.stderr.strip().startswith("error: checkpoint") and "refused" in proc.stderr
  assert len(proc.stderr.strip().splitlines()) == 1  # one line, no traceback
  assert not (tmp_path / "run").exists()


def test_strict_errors_name_the_key(tmp_path, fixture_weights, reference_dir):
  from configs.model import fixture_model
  cfg = tiny.get_config()
  cfg.model = fixture_model(json.loads((reference_dir / "config.json").read_text())["tiny_hparams"])
  bad = dict(fixture_weights, **{"rpn.head.bbox_pred.weight": np.zeros((4, 64, 3, 3), np.float32)})
  with pytest.raises(ValueError, match=r"rpn\.head\.bbox_pred\.weight.*\(4, 64, 3, 3\).*shape"):
    workdirs.convert_official(bad, cfg, tmp_path / "a")
  with pytest.raises(KeyError, match=r"rpn\.head\.extra"):
    workdirs.convert_official(dict(fixture_weights, **{"rpn.head.extra.weight": np.zeros(3)}), cfg, tmp_path / "b")
  missing = {k: v for k, v in fixture_weights.items() if k != "rpn.head.bias0"}
  with pytest.raises(KeyError, match="not found"):
    workdirs.convert_official(missing, cfg, tmp_path / "c")
  assert not any((tmp_path / d).exists() for d in "abc")  # nothing written before the checks pass


def test_prompt_tuning_table_is_added_to_the_text_features(fixture_config, fixture_weights):
  """The prompt-tuning table's first T rows are added to the language features (to the masked copy after
  masking, so padded rows are no longer zero), as the official RPN does with ADD_LINEAR_LAYER."""
  table = np.random.default_rng(0).normal(size=(1000, 64)).astype(np.float32)
  state = dict(fixture_weights, **{"rpn.tunable_linear.weight": table})
  cfg = _load_config(fixture_config).model
  cfg.tunable_linear_rows = 1000
  model = nnx.eval_shape(lambda: GLIP(cfg, rngs=nnx.Rngs(0)))
  official.import_official(model, state, cfg)
  images = np.random.default_rng(1).normal(size=(1, 64, 64, 3)).astype(np.float32)
  ids = np.array([[101, 7, 8, 102, 0, 0, 0, 0]], np.int32)
  mask = (ids > 0).astype(np.int32)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)  # rest: abstract RNG state, unused when deterministic
  inter, last = jax.jit(lambda p: (lambda m: (m(images, ids, mask, capture=True)["intermediates"],
                                              m.encode_text(ids, mask)))(nnx.merge(graphdef, p, rest)))(params)
  np.testing.assert_allclose(inter["lang_hidden"], last + table[:8], rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(inter["lang_embedded"], last * mask[..., None] + table[:8], rtol=1e-6, atol=1e-6)
