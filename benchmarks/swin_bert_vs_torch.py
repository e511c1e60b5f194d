"""Swin-T and BERT-base forward+backward on this CPU: glipjax (jitted, float32) against HF `transformers` PyTorch
(train mode), same shapes, same thread count, one process. Prints the time ratio glipjax / torch per model (goal
<= 0.95 each) and writes benchmarks/results/swin_bert_vs_torch.json.

  .venv/bin/python -m benchmarks.swin_bert_vs_torch [--repeats 5] [--models swin,bert] [--scan] [--remat full]

Both sides: random weights, train mode (dropout 0.1 in BERT, drop path 0.2 in Swin-T), loss = mean of the
squared outputs (Swin: the four stage outputs; BERT: the last hidden layer), one backward pass; torch frees its
gradients between steps, glipjax returns them from the jitted step. Times are medians after two warm-up steps
(compile excluded and reported separately). XLA's CPU runtime sizes its thread pool to the machine's cores;
torch is given the same number (`--threads` to change torch's; XLA's follows the cores).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import glipjax  # noqa: F401  (flax config before any module is built)
from configs.model import bert_base, swin_t
from glipjax.models.bert import BertModel
from glipjax.models.swin import SwinTransformer

GOAL_RATIO = 0.95  # glipjax / torch, for each of Swin-T and BERT-base


def _median_seconds(fn, repeats: int, warmup: int = 2) -> tuple[float, list[float]]:
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times), times


def jax_step(model: nnx.Module, forward, inputs):
  """A jitted forward+backward of `mean(forward(model, *inputs)**2)` with fresh dropout keys per call, as the
  trainer does it (split params / RNG state, reseed, merge a copy inside the gradient)."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  @jax.jit
  def step(params, rest, key, *inputs):
    model = nnx.merge(graphdef, params, rest)
    nnx.reseed(model, dropout=key, policy="match_shape")
    rest = nnx.state(model, nnx.Not(nnx.Param))

    def loss(p):
      outs = forward(nnx.merge(graphdef, p, rest, copy=True), *inputs)
      return sum(jnp.mean(o ** 2) for o in jax.tree.leaves(outs))
    return jax.value_and_grad(loss)(params)

  counter = iter(range(1 << 30))
  start = time.perf_counter()
  compiled = step.lower(params, rest, jax.random.key(0), *inputs).compile()
  compile_seconds = time.perf_counter() - start
  run = lambda: jax.block_until_ready(compiled(params, rest, jax.random.key(next(counter)), *inputs))
  return run, compile_seconds


def torch_step(torch, model, forward):
  def run():
    loss = sum((o ** 2).mean() for o in forward(model))
    loss.backward()
    model.zero_grad(set_to_none=True)
  return run


def bench_swin(args, torch, transformers) -> dict:
  b, s = args.swin_batch, args.image_size
  cfg = swin_t()
  images = np.random.default_rng(0).standard_normal((b, s, s, 3)).astype(np.float32)
  model = SwinTransformer(cfg, scan=args.scan, remat=args.remat, rngs=nnx.Rngs(params=0, dropout=1))
  run_jax, compile_s = jax_step(model, lambda m, x: m(x, deterministic=False), (jnp.asarray(images),))
  hf_cfg = transformers.SwinConfig(image_size=s, patch_size=cfg.patch_size, embed_dim=cfg.embed_dim,
                                   depths=list(cfg.depths), num_heads=list(cfg.num_heads),
                                   window_size=cfg.window_size, mlp_ratio=cfg.mlp_ratio, qkv_bias=cfg.qkv_bias,
                                   drop_path_rate=cfg.drop_path_rate,
                                   out_features=["stage1", "stage2", "stage3", "stage4"])
  ref = transformers.SwinBackbone(hf_cfg).train()
  x = torch.tensor(images.transpose(0, 3, 1, 2))
  run_torch = torch_step(torch, ref, lambda m: m(x).feature_maps)
  return _compare("swin_t", f"{b}x{s}x{s}", run_jax, run_torch, compile_s, args.repeats)


def bench_bert(args, torch, transformers) -> dict:
  b, t = args.bert_batch, args.tokens
  cfg = bert_base()
  rng = np.random.default_rng(0)
  ids = rng.integers(1000, cfg.vocab_size, (b, t)).astype(np.int32)
  mask = np.ones((b, t), np.int32)
  mask[1::2, t * 3 // 4:] = 0  # some padding, as prompts have
  model = BertModel(cfg, scan=args.scan, remat=args.remat, rngs=nnx.Rngs(params=0, dropout=1))
  run_jax, compile_s = jax_step(model, lambda m, i, a: m(i, a, deterministic=False),
                                (jnp.asarray(ids), jnp.asarray(mask)))
  ref = transformers.BertModel(transformers.BertConfig(), add_pooling_layer=False).train()
  ti, tm = torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.long)
  run_torch = torch_step(torch, ref, lambda m: [m(ti, attention_mask=tm).last_hidden_state])
  return _compare("bert_base", f"{b}x{t}", run_jax, run_torch, compile_s, args.repeats)


def _compare(name, shape, run_jax, run_torch, compile_s, repeats) -> dict:
  jax_s, jax_all = _median_seconds(run_jax, repeats)
  torch_s, torch_all = _median_seconds(run_torch, repeats)
  print(f"{name} {shape}: glipjax {jax_s:.3f} s, torch {torch_s:.3f} s, ratio {jax_s / torch_s:.2f} "
        f"(compile {compile_s:.1f} s, load {os.getloadavg()[0]:.1f})", flush=True)
  return dict(shape=shape, glipjax_seconds=jax_s, torch_seconds=torch_s, ratio=jax_s / torch_s,
              glipjax_all=jax_all, torch_all=torch_all, glipjax_compile_seconds=compile_s)


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--models", default="swin,bert")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (XLA uses every core)")
  parser.add_argument("--swin-batch", type=int, default=2)
  parser.add_argument("--image-size", type=int, default=224)
  parser.add_argument("--bert-batch", type=int, default=4)
  parser.add_argument("--tokens", type=int, default=256)
  parser.add_argument("--scan", action="store_true", help="glipjax with model.scan_layers")
  parser.add_argument("--remat", default="none", help="glipjax model.remat policy")
  args = parser.parse_args(argv)
  import torch
  import transformers
  torch.set_num_threads(args.threads)
  torch.manual_seed(0)
  results = {}
  for name in args.models.split(","):
    results[name] = {"swin": bench_swin, "bert": bench_bert}[name](args, torch, transformers)
  total_jax = sum(r["glipjax_seconds"] for r in results.values())
  total_torch = sum(r["torch_seconds"] for r in results.values())
  print(f"total: glipjax {total_jax:.3f} s, torch {total_torch:.3f} s, ratio {total_jax / total_torch:.2f} "
        f"(goal <= {GOAL_RATIO} per model)")
  from benchmarks import common  # after the timings: it imports the whole trainer
  common.write_results("swin_bert_vs_torch", dict(
      results, ratio=total_jax / total_torch, goal_ratio=GOAL_RATIO, torch_threads=args.threads,
      scan_layers=args.scan, remat=args.remat, torch=torch.__version__, transformers=transformers.__version__))
  return results


if __name__ == "__main__":
  main()
