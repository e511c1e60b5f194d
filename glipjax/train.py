"""GLIP trainer: mesh -> data -> model -> shardings -> step -> checkpoint -> loop.

  python -m glipjax.train --config configs/tiny.py --workdir runs/tiny [--config.train.num_steps=200]

Restarting with the same workdir resumes from the newest intact checkpoint (train state and data iterator).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import time
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import app, flags
from clu import metric_writers
from flax import nnx
from ml_collections import config_flags
from tqdm import tqdm

import glipjax  # noqa: F401
from glipjax import config_utils, distributed, evaluate, sharding
from glipjax.data import pipeline, synthetic_grounding
from glipjax.models.glip import GLIP
from glipjax.ops import anchors as anchor_ops
from glipjax.ops.losses import glip_loss
from glipjax.optim import make_optimizer
from glipjax.text import tokenizers


@dataclasses.dataclass
class Setup:
  """Everything static about a run: mesh, model graph, abstract state and its shardings, anchors."""
  config: Any
  mesh: Any
  graphdef: Any
  tx: optax.GradientTransformation
  abstract_state: Any
  state_shardings: Any
  rest_shardings: Any
  init: Any            # jitted () -> (state, rest)
  anchors: np.ndarray
  level_counts: tuple


def prepare_tokenizer(config, workdir: pathlib.Path) -> tokenizers.Tokenizer:
  d = config.data
  if d.tokenizer == "sentencepiece" and d.sentencepiece_vocab_size > 0:
    path = workdir / "tokenizer.model"
    if not path.exists() and jax.process_index() == 0:
      tokenizers.train_sentencepiece(pipeline.iter_captions(d, "train"), workdir / "tokenizer",
                                     d.sentencepiece_vocab_size)
    return tokenizers.SentencePieceTokenizer(path)
  return tokenizers.build_tokenizer(d.tokenizer, d.tokenizer_path)


def build(config) -> Setup:
  mesh = sharding.make_mesh(config.mesh)
  rules = [tuple(r) for r in config.mesh.rules]
  shapes = anchor_ops.level_shapes(tuple(config.data.canvas), config.model.anchors.strides)
  anchors = anchor_ops.generate_anchors(shapes, config.model.anchors.strides, config.model.anchors.sizes)
  new_model = lambda: GLIP(config.model, rngs=nnx.Rngs(params=config.seed, dropout=config.seed + 1))
  abstract_model = nnx.eval_shape(new_model)
  graphdef, abstract_params, _ = nnx.split(abstract_model, nnx.Param, ...)
  tx = make_optimizer(config.optim, config.train.num_steps, abstract_params)

  def init():
    _, params, rest = nnx.split(new_model(), nnx.Param, ...)
    state = dict(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
    if config.optim.ema_decay > 0:
      state["ema"] = params
    return state, rest

  abstract_state, abstract_rest = jax.eval_shape(init)
  state_shardings = sharding.param_shardings(abstract_state, mesh, rules)
  rest_shardings = jax.tree.map(lambda _: sharding.replicated(mesh), abstract_rest)
  init_fn = jax.jit(init, out_shardings=(state_shardings, rest_shardings))
  return Setup(config, mesh, graphdef, tx, abstract_state, state_shardings, rest_shardings, init_fn, anchors,
               anchor_ops.level_counts(shapes))


def make_train_step(s: Setup):
  cfg = s.config

  def train_step(state, rest, batch, rng):
    # A fresh dropout key per step: fold the step into the run's key (RNG state is not carried between steps).
    model = nnx.merge(s.graphdef, state["params"], rest)
    nnx.reseed(model, dropout=jax.random.fold_in(rng, state["step"]))
    rest = nnx.state(model, nnx.Not(nnx.Param))

    def loss_fn(params, rest):
      model = nnx.merge(s.graphdef, params, rest, copy=True)  # fresh variables: dropout advances its RNG count
      out = model(batch["image"], batch["input_ids"], batch["attention_mask"], deterministic=False)
      return glip_loss(out, batch, s.anchors, s.level_counts, focal_alpha=cfg.train.focal_alpha,
                       focal_gamma=cfg.train.focal_gamma, reg_loss_weight=cfg.train.reg_loss_weight)

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"], rest)
    updates, opt_state = s.tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    new = dict(state, step=state["step"] + 1, params=params, opt_state=opt_state)
    if "ema" in state:
      d = cfg.optim.ema_decay
      new["ema"] = jax.tree.map(lambda e, p: d * e + (1 - d) * p, state["ema"], params)
    metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads))
    return new, metrics

  return jax.jit(train_step, donate_argnums=(0,))


def checkpoint_manager(workdir: pathlib.Path, cfg) -> ocp.CheckpointManager:
  directory = (workdir / "checkpoints").absolute()
  for partial in sorted(directory.glob(f"*{ocp.utils.TMP_DIR_SUFFIX}*")):
    logging.warning("ignoring the half-written checkpoint %s (a save that was interrupted, or is still running); "
                    "resuming from the newest finalized one", partial)
  options = ocp.CheckpointManagerOptions(max_to_keep=cfg.checkpoint.max_to_keep,
                                         enable_async_checkpointing=cfg.checkpoint.async_save)
  return ocp.CheckpointManager(directory, options=options, item_names=("state", "data"))


def _data_restore_args(mngr: ocp.CheckpointManager, step: int, data_iter) -> dict:
  """The Composite item that restores `data_iter`: grain's per-process state when this checkpoint was written by
  as many processes as are running now; otherwise none (the caller positions the iterator from the step)."""
  saved = sorted((pathlib.Path(mngr.directory) / str(step) / "data").glob("process_*-of-*.json"))
  if not saved:
    raise FileNotFoundError(f"checkpoint {step} holds no data-iterator state")
  if any(p.name == f"process_{jax.process_index()}-of-{jax.process_count()}.json" for p in saved):
    return dict(data=grain.checkpoint.CheckpointRestore(data_iter))
  logging.warning("checkpoint %d was written by %s, this run has %d: positioning the data iterator at global "
                  "batch %d from the step (global batches do not depend on the process count)", step,
                  saved[0].stem.split("-of-")[1] + " process(es)", jax.process_count(), step)
  return {}


def restore_latest(mngr: ocp.CheckpointManager, s: Setup, data_iter=None):
  """Restores the newest checkpoint that reads back intact; a corrupt one is reported and the previous one used."""
  target = jax.tree.map(lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh), s.abstract_state,
                        s.state_shardings)
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      items = dict(state=ocp.args.StandardRestore(target))
      if data_iter is not None:
        items.update(_data_restore_args(mngr, step, data_iter))
      state = mngr.restore(step, args=ocp.args.Composite(**items))["state"]
      if data_iter is not None and "data" not in items:
        data_iter.set_state(dict(data_iter.get_state(), next_index=step))
      return step, state
    except Exception as e:  # noqa: BLE001 - any failure to read a checkpoint means: fall back to an older one
      logging.error("checkpoint at step %d is unreadable (%s: %s); trying the previous one", step,
                    type(e).__name__, e)
  return None, None


def restore_for_inference(s: Setup, workdir: pathlib.Path):
  """(step, params, rest) of the newest readable checkpoint: EMA params when the run keeps them. Call under
  `jax.set_mesh(s.mesh)`."""
  step, state = restore_latest(checkpoint_manager(workdir, s.config), s)
  if state is None:
    raise FileNotFoundError(f"no readable checkpoint under {workdir / 'checkpoints'}")
  _, rest = s.init()
  return step, state.get("ema", state["params"]), rest


class JsonlWriter:
  def __init__(self, path: pathlib.Path, enabled: bool):
    self.path, self.enabled = path, enabled

  def write(self, step: int, metrics: dict) -> None:
    if self.enabled:
      with self.path.open("a") as f:
        f.write(json.dumps({"step": int(step), **{k: float(v) for k, v in metrics.items()}}) + "\n")


def train_and_evaluate(config, workdir: str | pathlib.Path, *, progress: bool = True) -> dict:
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  lead = jax.process_index() == 0
  if lead:
    config_utils.save_config(config, workdir)
  t_start = time.time()
  if lead:  # the other processes wait, then read what process 0 wrote (a shared file system)
    if config.data.name == "synthetic_grounding":
      synthetic_grounding.prepare(config.data.data_dir, config.data.builder_config)
    prepare_tokenizer(config, workdir)
  distributed.barrier("glipjax: dataset and tokenizer prepared")
  tokenizer = prepare_tokenizer(config, workdir)
  if tokenizer.vocab_size > config.model.language.vocab_size:
    raise ValueError(f"tokenizer has {tokenizer.vocab_size} tokens but model.language.vocab_size is "
                     f"{config.model.language.vocab_size}")

  s = build(config)
  with jax.set_mesh(s.mesh):
    batch_sharding = sharding.batch_sharding(s.mesh, config.mesh.batch_axes)
    train_iter = pipeline.make_pipeline(config.data, "train", tokenizer, global_batch_size=config.train.global_batch_size,
                                        train=True, seed=config.seed, max_query_len=config.model.max_query_len,
                                        rows=distributed.process_rows(batch_sharding, config.train.global_batch_size))
    mngr = checkpoint_manager(workdir, config)
    start_step, state = restore_latest(mngr, s, train_iter)
    _, rest = s.init()  # rng bookkeeping only; parameters come from the checkpoint when resuming
    if state is None:
      state, rest = s.init()
      start_step = 0
    else:
      logging.info("resumed from step %d", start_step)
    train_step = make_train_step(s)
    rng = jax.random.key(config.seed)
    writer = metric_writers.create_default_writer(str(workdir), just_logging=not lead, asynchronous=False)
    jsonl = JsonlWriter(workdir / "metrics.jsonl", lead)

    num_steps = config.train.num_steps
    bar = tqdm(total=num_steps, initial=start_step, disable=not (progress and lead), desc="train", unit="step")
    eval_metrics: dict = {}
    t_train, seen, last_log = 0.0, 0, time.time()
    compile_seconds = None
    for step in range(start_step, num_steps):
      batch = sharding.global_batch(next(train_iter), batch_sharding)
      t0 = time.time()
      state, metrics = train_step(state, rest, batch, rng)
      loss = float(metrics["loss"])
      if compile_seconds is None:
        compile_seconds = time.time() - t0
      else:
        t_train += time.time() - t0
        seen += config.train.global_batch_size
      if not np.isfinite(loss):
        raise FloatingPointError(f"non-finite loss at step {step}: " +
                                 ", ".join(f"{k}={float(v):.4g}" for k, v in metrics.items()))
      bar.update(1)
      bar.set_postfix(loss=f"{loss:.3f}")
      done = step + 1
      if done % config.train.log_every == 0 or done == num_steps:
        scalars = {k: float(v) for k, v in metrics.items()}
        scalars["images_per_second"] = seen / max(t_train, 1e-9)
        scalars["steps_per_second"] = config.train.log_every / max(time.time() - last_log, 1e-9)
        last_log = time.time()
        writer.write_scalars(done, scalars)
        jsonl.write(done, scalars)
      if done % config.train.checkpoint_every == 0 or done == num_steps:
        mngr.save(done, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                data=grain.checkpoint.CheckpointSave(train_iter)))
      if config.train.eval_every > 0 and (done % config.train.eval_every == 0 or done == num_steps):
        params = state.get("ema", state["params"])
        eval_metrics = evaluate.evaluate(config, s.graphdef, params, rest, tokenizer, s.anchors, s.level_counts,
                                         mesh=s.mesh, workdir=workdir if done == num_steps else None)
        writer.write_scalars(done, {f"eval/{k}": v for k, v in eval_metrics.items()})
        jsonl.write(done, {f"eval/{k}": v for k, v in eval_metrics.items()})
        bar.write(f"step {done}: " + ", ".join(f"{k}={v:.4f}" for k, v in eval_metrics.items()))
    bar.close()
    mngr.wait_until_finished()
    mngr.close()
    writer.flush()

  final = dict(eval_metrics, steps=int(num_steps), wall_seconds=time.time() - t_start,
               train_images_per_second=seen / max(t_train, 1e-9), compile_seconds=compile_seconds or 0.0,
               skipped_examples=dict(pipeline.SKIPPED))
  if lead:
    (workdir / "final_metrics.json").write_text(json.dumps(final, indent=2))
  return final


def main(argv):
  del argv
  distributed.initialize_from_flags()  # before any device use
  final = train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)
  print(json.dumps({k: v for k, v in final.items() if not isinstance(v, dict)}, indent=2))


if __name__ == "__main__":
  # Flags are defined only when run as a program, so other entry points can import this module.
  config_flags.DEFINE_config_file("config", None, "config file, e.g. configs/tiny.py", lock_config=True)
  flags.DEFINE_string("workdir", None, "where checkpoints, metrics and pictures go")
  flags.mark_flags_as_required(["config", "workdir"])
  distributed.define_flags()
  app.run(main)
