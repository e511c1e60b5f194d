"""Where a run's parameters start. The one init order:

  1. resume: the workdir's newest intact checkpoint (train state, data iterator, step; glipjax/checkpoints.py);
  2. else `train.init_from`: a glipjax workdir or checkpoint folder (<run>, <run>/best, <run>/checkpoints/5000),
     or an official GLIP checkpoint file (.pth/.pt/.safetensors/.npz);
  3. then `train.init_language_from` (an HF BERT directory) and `train.init_backbone_from` (an HF Swin directory
     or a Swin classification checkpoint, the Swin repository's .pth), over what 2. loaded: GLIP's pretraining
     recipe starts from a pretrained BERT and Swin;
  4. every parameter none of them holds keeps its initialiser's value.

Only parameters are read: the optimizer, the step count and the data order start fresh. Everything goes through
the official GLIP key layout (glipjax/interop), so a run with scanned layers starts from one without and back,
and a prompt-tuning run (which adds the prompt table) starts from a model without one.
"""
from __future__ import annotations

import dataclasses
import logging
import pathlib
import re
import shutil

import jax
import numpy as np
from flax import nnx

from glipjax import config_utils, runtime
from glipjax.config_utils import ConfigError
from glipjax.interop import hf, official, workdirs
from glipjax.interop.torch_layout import load_torch_state
from glipjax.optim import param_path

# Keys of a Swin classification checkpoint (microsoft/Swin-Transformer) GLIP does not use: the classifier, the
# final norm (GLIP normalises each output stage with norm1..3 instead, which start from their initialisers), and
# buffers glipjax recomputes.
SWIN_CLASSIFIER_IGNORE = (r"^head\.", r"^norm\.", r"attn_mask$", r"relative_position_index$", r"relative_coords")


@dataclasses.dataclass
class Loaded:
  """What one source put into the model: `parameters` assigned, `unused` keys of the source the model has no
  place for."""
  source: str
  parameters: int
  unused: list[str]


def _glipjax_source(path: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path | None]:
  """(run workdir, checkpoint folder or None for its newest) of an `init_from` folder: the run is the nearest
  folder up with a config.json."""
  for run in (path, path.parent, path.parent.parent):
    if (run / "config.json").is_file():
      return run, (None if path == run else path)
  raise FileNotFoundError(f"train.init_from {path} is neither a glipjax workdir nor inside one (no config.json "
                          "in it or the two folders above it)")


def prepare_workdir(config, workdir: pathlib.Path) -> None:
  """Before the tokenizer is prepared: a run that trains its own sentencepiece model and starts from a glipjax run
  takes that run's tokenizer, so that token ids mean what the imported embeddings learnt."""
  d = config.data
  if not config.train.init_from or d.tokenizer != "sentencepiece" or d.sentencepiece_vocab_size <= 0:
    return
  path = pathlib.Path(config.train.init_from).expanduser()
  if not path.is_dir() or (workdir / "tokenizer.model").exists():
    return
  run, _ = _glipjax_source(path)
  source = workdirs.tokenizer_file(config_utils.load_workdir_config(run), run)
  if source is None or not source.is_file():
    raise FileNotFoundError(f"train.init_from {run} has no tokenizer file to start from")
  shutil.copyfile(source, workdir / "tokenizer.model")
  logging.info("tokenizer: %s (the init_from run's)", source)


def _official_state(path: pathlib.Path) -> dict[str, np.ndarray]:
  """The official-layout state dict of `train.init_from`."""
  if path.is_dir():
    run, checkpoint = _glipjax_source(path)
    source_config = config_utils.load_workdir_config(run)
    # Read it on a mesh every device count has: parameters replicated, readable by every process.
    source_config.mesh.update(shape=(-1, 1, 1), dcn_shape=(1, 1, 1))
    _, state = workdirs.official_state_from_workdir(run, checkpoint=checkpoint, config=source_config)
    return state
  if not path.is_file():
    raise FileNotFoundError(f"train.init_from {path} does not exist")
  return official.load_official_checkpoint(path)


def _swin_state(path: pathlib.Path) -> dict[str, np.ndarray]:
  """An HF Swin directory or a Swin classification checkpoint file, in the official GLIP Swin names."""
  if path.is_dir():
    from safetensors.numpy import load_file
    file = path / "model.safetensors"
    if not file.is_file():
      raise FileNotFoundError(f"train.init_backbone_from {path} has no model.safetensors (an HF Swin directory)")
    return hf.swin_state_from_hf(load_file(file))
  if not path.is_file():
    raise FileNotFoundError(f"train.init_backbone_from {path} does not exist")
  return official.load_official_checkpoint(path)


def _load(model, state, source: str, *, prefix: str = "", ignore=(), strict_source: bool) -> Loaded:
  """Assigns `state` (official names, under `prefix` in our model) into `model`; a source key the model has no
  parameter for is an error when `strict_source` (an encoder checkpoint must fit the encoder) or reported."""
  unknown: list[str] = []
  state = {prefix + k: v for k, v in official.strip_module_prefix(state).items()
           if not any(re.search(p, k) for p in ignore)}
  try:
    assigned = load_torch_state(model, state, renames=official.RENAMES, ignore=official.IGNORE, strict=False,
                                unknown=unknown)
  except ValueError as e:  # a shape that does not fit: the config is not the checkpoint's model
    raise ConfigError(f"{source}: {e}") from None
  if strict_source and unknown:
    raise ConfigError(f"{source}: {len(unknown)} keys have no place in the model (does the config match the "
                     f"checkpoint?): {unknown[:5]}{' ...' if len(unknown) > 5 else ''}")
  if not assigned:
    raise ConfigError(f"{source}: no parameter of the model is in it (keys like {sorted(state)[:3]})")
  return Loaded(source, len(assigned), unknown)


def load_sources(config, abstract_model) -> list[Loaded]:
  """Assigns every configured source into `abstract_model` (an `nnx.eval_shape` model) in the init order; the
  parameters no source holds stay abstract."""
  t = config.train
  loaded = []
  if t.init_from:
    path = pathlib.Path(t.init_from).expanduser()
    loaded.append(_load(abstract_model, _official_state(path), f"train.init_from {path}",
                        strict_source=False))
  if t.init_language_from:
    path = pathlib.Path(t.init_language_from).expanduser()
    if not (path / "config.json").is_file():
      raise FileNotFoundError(f"train.init_language_from {path} is not an HF BERT directory (no config.json)")
    _, state = hf.load_bert_checkpoint(path)
    state = {k[len("bert."):] if k.startswith("bert.") else k: v for k, v in state.items()}
    loaded.append(_load(abstract_model, state, f"train.init_language_from {path}", prefix=hf.BERT_PREFIX,
                        ignore=hf.BERT_IGNORE, strict_source=True))
  if t.init_backbone_from:
    path = pathlib.Path(t.init_backbone_from).expanduser()
    loaded.append(_load(abstract_model, _swin_state(path), f"train.init_backbone_from {path}",
                        prefix=hf.SWIN_PREFIX, ignore=SWIN_CLASSIFIER_IGNORE, strict_source=True))
  return loaded


def warm_start(s: runtime.Setup, params):
  """(params, [Loaded]): `params` (the initialisers' values, laid out as `s.state_shardings` says) with every
  parameter the configured sources hold replaced by theirs; unchanged when none is configured."""
  config, t = s.config, s.config.train
  if not (t.init_from or t.init_language_from or t.init_backbone_from):
    return params, []
  model = nnx.merge(s.graphdef, s.abstract_state["params"], jax.eval_shape(s.init_rest))  # abstract values
  loaded = load_sources(config, model)
  shardings = s.state_shardings["params"]

  def place(new, initial, sharding):
    if isinstance(new, jax.ShapeDtypeStruct):  # no source holds it
      return initial
    host = np.asarray(new)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

  params = jax.tree.map(place, nnx.state(model, nnx.Param), params, shardings)
  kept = [param_path(kp) for kp, leaf in jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param))
          if isinstance(leaf, jax.ShapeDtypeStruct)]
  for item in loaded:
    logging.warning("%s: %d parameters loaded%s", item.source, item.parameters,
                    f"; {len(item.unused)} of its keys unused: {item.unused[:5]}" if item.unused else "")
  if kept:
    logging.warning("%d parameters start from their initialisers: %s%s", len(kept), kept[:8],
                    " ..." if len(kept) > 8 else "")
  return params, loaded

