"""glipjax workdirs <-> official GLIP state dicts: what `glipjax.convert` and `glipjax.export` do.

A converted workdir is a training workdir at step 0: config.json, the tokenizer file, and an Orbax train-state
checkpoint (the imported parameters, as EMA too when the config keeps one, and a fresh optimizer state), so that
`train` fine-tunes from it (resuming at step 0), and `evaluate` and `predict` read it like any run.
"""
from __future__ import annotations

import logging
import pathlib
import re
import shutil
from typing import Mapping

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from glipjax import checkpoints, config_utils, runtime
from glipjax.interop import official
from glipjax.models.glip import GLIP


def _copy_tokenizer(config, workdir: pathlib.Path, tokenizer: str | None) -> None:
  """Puts the tokenizer file the weights were trained with into `workdir` and points the config at it, so that the
  workdir is self-contained; never trains a new tokenizer (its ids would not match the embeddings)."""
  d = config.data
  source = pathlib.Path(tokenizer or d.tokenizer_path).expanduser() if (tokenizer or d.tokenizer_path) else None
  if source is None:
    raise ValueError(f"the config's {d.tokenizer} tokenizer has no file (data.tokenizer_path is empty): pass "
                     "--tokenizer, the vocab.txt (wordpiece) or .model (sentencepiece) the weights were trained with")
  if not source.is_file():
    raise FileNotFoundError(f"tokenizer file {source} does not exist")
  if d.tokenizer == "sentencepiece" and d.sentencepiece_vocab_size > 0:
    shutil.copyfile(source, workdir / "tokenizer.model")  # where runtime.prepare_tokenizer looks for it
    return
  target = workdir / ("vocab.txt" if d.tokenizer == "wordpiece" else "tokenizer.model")
  shutil.copyfile(source, target)
  d.tokenizer_path = str(target.absolute())


def convert_official(state_dict: Mapping[str, np.ndarray], config, workdir: str | pathlib.Path, *,
                     tokenizer: str | None = None) -> dict:
  """Writes the workdir of an official state dict (already read: `official.load_official_checkpoint`).

  Strict (every official key consumed or on `official.IGNORE`, every shape and buffer checked) before anything
  is written. Returns a summary: parameters imported, keys ignored.
  """
  workdir = pathlib.Path(workdir)
  if (workdir / "checkpoints").exists() and any((workdir / "checkpoints").iterdir()):
    raise FileExistsError(f"{workdir} already holds checkpoints: convert into a new workdir")
  config = config.copy_and_resolve_references()
  tunable = official.strip_module_prefix(state_dict).get("rpn.tunable_linear.weight")
  if tunable is not None and not config.model.get("tunable_linear_rows", 0):
    # A prompt-tuned checkpoint (official ADD_LINEAR_LAYER): the table's rows come with it.
    config.model.tunable_linear_rows = int(np.shape(tunable)[0])
    logging.info("prompt-tuned checkpoint: model.tunable_linear_rows = %d", config.model.tunable_linear_rows)
  model = nnx.eval_shape(lambda: GLIP(config.model, rngs=nnx.Rngs(0)))
  assigned = official.import_official(model, state_dict, config.model)  # raises before anything is written
  ignored = sorted(k for k in official.strip_module_prefix(state_dict)
                   if any(re.search(p, k) for p in official.IGNORE))
  workdir.mkdir(parents=True, exist_ok=True)
  _copy_tokenizer(config, workdir, tokenizer)
  tok = runtime.prepare_tokenizer(config, workdir)
  if tok.vocab_size > config.model.language.vocab_size:
    raise ValueError(f"the tokenizer has {tok.vocab_size} tokens but the model's vocabulary has "
                     f"{config.model.language.vocab_size}")
  s = runtime.build(config)
  imported = nnx.state(model, nnx.Param)
  with jax.set_mesh(s.mesh):
    params = jax.tree.map(lambda v, sh: jax.device_put(np.asarray(v), sh), imported, s.state_shardings["params"])
    state = jax.jit(lambda p: runtime.state_from_params(s.config, s.tx, s.trainable, p), out_shardings=s.state_shardings)(params)
    mngr = checkpoints.checkpoint_manager(workdir, config)
    mngr.save(0, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
    mngr.wait_until_finished()
    mngr.close()
  config_utils.save_config(config, workdir)
  logging.info("wrote %s: %d parameters imported, %d keys ignored", workdir, len(assigned), len(ignored))
  return dict(workdir=str(workdir), parameters=len(assigned), ignored=ignored)


def model_from_workdir(workdir: str | pathlib.Path, *, checkpoint: str | None = None, ema: bool | None = None,
                       config=None) -> tuple[int, GLIP, ml_collections.ConfigDict]:
  """(step, GLIP model with the checkpoint's parameters as host numpy arrays, the workdir's config) of a workdir's
  checkpoint (see `checkpoints.restore_params`: the EMA parameters when the run keeps them, or as `ema` asks)."""
  workdir = pathlib.Path(workdir)
  if config is None:
    config = config_utils.load_workdir_config(workdir)
  s = runtime.build(config)
  with jax.set_mesh(s.mesh):
    step, params = checkpoints.restore_params(s, workdir, checkpoint=checkpoint, ema=ema)
    params = jax.tree.map(lambda x: np.asarray(jax.device_get(x)), params)
    model = nnx.merge(s.graphdef, params, s.init_rest())
  return step, model, config


def official_state_from_workdir(workdir: str | pathlib.Path, *, checkpoint: str | None = None,
                                ema: bool | None = None, config=None) -> tuple[int, dict[str, np.ndarray]]:
  """(step, official state dict with buffers) of a workdir's checkpoint (see `model_from_workdir`)."""
  step, model, config = model_from_workdir(workdir, checkpoint=checkpoint, ema=ema, config=config)
  return step, official.export_official(model, config.model)


def tokenizer_file(config, workdir: str | pathlib.Path) -> pathlib.Path | None:
  """The tokenizer file a workdir's run encodes prompts with (what `runtime.prepare_tokenizer` reads): its own
  `tokenizer.model` when the run trained a sentencepiece model, else `data.tokenizer_path`; None when unset."""
  d = config.data
  if d.tokenizer == "sentencepiece" and d.sentencepiece_vocab_size > 0:
    return pathlib.Path(workdir) / "tokenizer.model"
  if not d.tokenizer_path:
    return None
  path = pathlib.Path(d.tokenizer_path).expanduser()
  return path / "vocab.txt" if path.is_dir() else path
